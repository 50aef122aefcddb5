"""Schema migrations carry the data of a database made by an earlier version along."""

from __future__ import annotations

import pytest

from engine import Engine
from engine.models import RunError, TaskInfo
from engine.storage import JournalWrite, NewRun


async def test_step_errors_of_earlier_attempts_are_still_run_again_after_migration_2(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before migration 2 a retry ran every failed step again: a run caught mid-retry by the
    upgrade keeps doing so, while the errors of its current attempt stay replayed."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    module = f"engine.storage.{backend}"
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    boom = {"name": "ValueError", "message": "boom"}
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:1])
        async with Engine(db_url) as old:
            storage = old.storage
            await storage.register_tasks([TaskInfo("t")])
            retried = await storage.create_run(NewRun("t", None))
            resumed = await storage.create_run(NewRun("t", None))
            for claimed in await storage.claim_runs("w", 2, 60_000, ["t"]):
                write = JournalWrite(claimed.id, claimed.epoch, 1, "step:a#0", 0, True, boom)
                await storage.append_journal(write)
                if claimed.id == retried.id:  # attempt 1 failed: attempt 2 is due
                    error = RunError(name="ValueError", message="boom")
                    await storage.retry_run(claimed.id, claimed.epoch, 0, error)
                else:  # attempt 1 goes on after a restart
                    await storage.release_run(claimed.id, claimed.epoch)
    async with Engine(db_url) as new:
        assert await new.storage.migrate() == len(migrations)
        claimed = {c.id: c for c in await new.storage.claim_runs("w", 2, 60_000, ["t"])}
    assert [e.rerun for e in claimed[retried.id].journal] == [True]
    assert [e.rerun for e in claimed[resumed.id].journal] == [False]
