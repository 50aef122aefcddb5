"""Schema migrations carry the data of a database made by an earlier version along."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine
from engine.ids import new_token_id
from engine.models import RunError, TaskInfo
from engine.storage import JournalWrite, NewRun, NewToken, NewWorker
from engine.storage.sql import Op, count

_CLAIM_BEFORE_ATTEMPT_BASE = (
    "id, task_id, payload, attempt_count, lease_epoch, max_attempts, executing_ms,"
    " max_duration_ms, metadata"
)


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
        # the claim of that schema: attempt_base and runs' versions came with a later migration
        patch.setattr("engine.storage.runs._CLAIM_COLUMNS", _CLAIM_BEFORE_ATTEMPT_BASE)
        patch.setattr("engine.storage.runs.Served.claimable", lambda self, alias="": "TRUE")
        patch.setattr(
            "engine.storage.runs._CLAIM_COLUMNS_OF_RUNS",
            ", ".join(f"runs.{c.strip()}" for c in _CLAIM_BEFORE_ATTEMPT_BASE.split(",")),
        )
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


async def test_tokens_made_before_the_reviewer_details_and_worker_rows_carry_on(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 6 on SQLite (7 on PostgreSQL) gives tokens a title, a description and a
    context, and workers rows with heartbeats: a token made before has none of them (and its
    JSON leaves them out), a task registered before was seen when it was registered."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    module = f"engine.storage.{backend}"
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    before = {"sqlite": 5, "postgres": 6}[backend]
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:before])
        async with Engine(db_url) as old:
            assert await old.storage.migrate() == before
            await old.storage.register_tasks([TaskInfo("boom")])
            token_id = new_token_id()
            await old.storage._write(lambda now: _old_token(old.storage, token_id, now))
    async with Engine(db_url) as new:
        storage = new.storage
        assert await storage.migrate() == len(migrations)
        kept = await storage.get_token(token_id)
        assert kept.title is kept.description is kept.context is None
        assert not {"title", "description", "context"} & set(kept.model_dump(by_alias=True))
        made = await storage.create_token(NewToken(title="Refund", context={"amount": 1}))
        assert (await storage.get_token(made.id)).context == {"amount": 1}
        unserved = (await storage.task_workers("boom")).unserved
        assert unserved is not None and unserved.startswith("no live worker serves task 'boom'")
        await storage.register_tasks([TaskInfo("boom")], NewWorker("w", ["boom"], 1, 30_000))
        assert [w.id for w in await storage.list_workers()] == ["w"]


def _old_token(storage: Any, token_id: str, now: int) -> Op[None]:
    """A token as the code before the migration inserted it (its columns only)."""
    yield count(
        "INSERT INTO waitpoints (id, status, tags, created_at)"
        f" VALUES (:id, 'WAITING', {storage.q.jsonb('tags')}, :now)",
        id=token_id,
        tags='["old"]',
        now=now,
    )
