"""Schema migrations carry the data of a database made by an earlier version along."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine
from engine.ids import new_token_id
from engine.models import TaskInfo
from engine.storage import NewToken, NewWorker
from engine.storage.sql import Op, count


async def test_step_errors_of_earlier_attempts_are_still_run_again_after_migration_2(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before migration 2 a retry ran every failed step again: a run caught mid-retry by the
    upgrade keeps doing so, while the errors of its current attempt stay replayed.

    The rows are written as the code of that schema wrote them (its columns only): today's
    operations write columns later migrations added."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    module = f"engine.storage.{backend}"
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:1])
        async with Engine(db_url) as old:
            assert await old.storage.migrate() == 1
            # attempt 1 of each failed step a; "retried" was queued for attempt 2, "resumed"
            # goes on with attempt 1 after a restart
            await old.storage._write(lambda now: _old_runs(old.storage, now))
    async with Engine(db_url) as new:
        assert await new.storage.migrate() == len(migrations)
        claimed = {c.id: c for c in await new.storage.claim_runs("w", 2, 60_000, ["t"])}
    assert [e.rerun for e in claimed["run_retried"].journal] == [True]
    assert [e.rerun for e in claimed["run_resumed"].journal] == [False]


def _old_runs(storage: Any, now: int) -> Op[None]:
    """Two QUEUED runs of task ``t`` with a step error of attempt 1, as migration 1 kept them."""
    yield count("INSERT INTO tasks (id, updated_at) VALUES ('t', :now)", now=now)
    for run_id, attempts in (("run_retried", 2), ("run_resumed", 1)):
        yield count(
            "INSERT INTO runs (id, task_id, status, payload, attempt_count, available_at,"
            " created_at, updated_at) VALUES (:id, 't', 'QUEUED', 'null', :attempts, :now,"
            " :now, :now)",
            id=run_id,
            attempts=attempts,
            now=now,
        )
        yield count(
            "INSERT INTO journal (run_id, key, attempt, position, is_error, value, created_at)"
            " VALUES (:id, 'step:a#0', 1, 0, TRUE, :boom, :now)",
            id=run_id,
            boom='{"name": "ValueError", "message": "boom"}',
            now=now,
        )


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
            await old.storage._write(lambda now: _old_task("boom", now))
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


def _old_task(task_id: str, now: int) -> Op[None]:
    """A task as the code before the migration registered it (its columns only)."""
    yield count("INSERT INTO tasks (id, updated_at) VALUES (:id, :now)", id=task_id, now=now)


def _old_token(storage: Any, token_id: str, now: int) -> Op[None]:
    """A token as the code before the migration inserted it (its columns only)."""
    yield count(
        "INSERT INTO waitpoints (id, status, tags, created_at)"
        f" VALUES (:id, 'WAITING', {storage.q.jsonb('tags')}, :now)",
        id=token_id,
        tags='["old"]',
        now=now,
    )
