"""Retention (``WAITPOINT_RETENTION``, ``waitpoint purge --older-than``): finished runs with
every row of theirs, and closed tokens, are deleted once older than the retention, in
batches; what an unfinished run may still read is kept, however old.

The storage tests move a manual clock instead of sleeping (``StepClock``); the facade, the
command and the API see old rows made through an engine whose clock runs two days behind.
A worker with a one-second retention purges by itself, and under a steady load of short runs
the tables stay a small fraction of what the runs would leave without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from structlog.testing import capture_logs

from engine import (
    Engine,
    RunNotFoundError,
    RunStatus,
    Settings,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    Worker,
    sleep,
    step,
    task,
)
from engine.api import create_app
from engine.durations import Deadline
from engine.models import CompletionSource, PurgeCount, TaskInfo
from engine.storage import NewRun, NewToken, Storage, open_storage
from engine.storage.retention import MAX_PURGE_BATCH, PURGE_BATCH

from .conftest import StartWorker
from .postgres import SERVER_URL
from .test_cli import assert_one_line_error, invoke, ok_json
from .test_remote import KEY, server  # noqa: F401 - the fixture
from .test_storage_contract import StepClock, claim_one, jw, new_run, park, started

DAY = 86_400_000
PY = CompletionSource.PYTHON
FINISHED = RunStatus.COMPLETED


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
async def storage(db_url: str, clock: StepClock) -> AsyncIterator[Storage]:
    opened = open_storage(db_url, signing_secret="retention-tests-" + "s" * 32, clock=clock)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# what is left in the database, read as another process would --------------------------------


@contextlib.asynccontextmanager
async def database(db_url: str) -> AsyncIterator[Any]:
    """``count(sql)`` on a connection of its own to the test's database (SQLite or the
    PostgreSQL schema), behind the engine's back."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10)

        async def count_sqlite(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        try:
            yield count_sqlite
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(SERVER_URL)
    await pg.execute(f'SET search_path TO "{db_url.rpartition("schema=")[2]}"')

    async def count_postgres(sql: str) -> int:
        return int(await pg.fetchval(sql))

    try:
        yield count_postgres
    finally:
        await pg.close()


def listed(ids: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{i}'" for i in ids) + ")"


async def rows_of(
    db_url: str, run_ids: Sequence[str] = (), token_ids: Sequence[str] = ()
) -> dict[str, int]:
    """The rows keyed by these runs' ids (the waitpoints they made for their own waits among
    them) and by these tokens' ids, table by table."""
    runs, tokens = listed(run_ids or ["-"]), listed(token_ids or ["-"])
    queries = {
        "runs": f"SELECT count(*) FROM runs WHERE id IN {runs}",
        "journal": f"SELECT count(*) FROM journal WHERE run_id IN {runs}",
        "run_events": f"SELECT count(*) FROM run_events WHERE run_id IN {runs}",
        "their waitpoints": "SELECT count(*) FROM waitpoints"
        f" WHERE created_by_run IN {runs} AND kind <> 'MANUAL'",
        "tokens": f"SELECT count(*) FROM waitpoints WHERE id IN {tokens}",
        "late_completions": f"SELECT count(*) FROM late_completions WHERE token_id IN {tokens}",
    }
    async with database(db_url) as count:
        return {table: await count(sql) for table, sql in queries.items()}


TABLES = ("runs", "journal", "run_events", "run_waits", "waitpoints", "late_completions")


async def table_sizes(count: Any) -> dict[str, int]:
    return {table: await count(f"SELECT count(*) FROM {table}") for table in TABLES}


# the storage operation ---------------------------------------------------------------------


async def finish(storage: Storage, task_id: str, output: Any = None) -> str:
    """Claim the due run of ``task_id`` and complete it; its id."""
    claimed = await claim_one(storage, task_id)
    await storage.finish_run(claimed.id, claimed.epoch, FINISHED, output, None)
    return claimed.id


async def test_a_purge_deletes_old_finished_runs_with_every_row_of_theirs_and_closed_tokens(
    storage: Storage, clock: StepClock, db_url: str
) -> None:
    run = await started(storage, "busy")
    await storage.append_journal(jw(run, "step:a#0", 0, "a"))
    assert await storage.sleep_until(Deadline(after_ms=0), jw(run, "sleep#0", 1))
    made = await storage.create_token(NewToken(), jw(run, "create_token#0", 2))
    await park(storage, run, storage.wait_for_children([NewRun("kid", {})], jw(run, "batch#0", 3)))
    child = await finish(storage, "kid", 1)
    await finish(storage, "busy", "done")
    await storage.cancel_token(made.id, PY)
    with pytest.raises(TokenNotWaitingError):  # refused, and recorded as a late completion
        await storage.complete_token(made.id, "too late", PY)
    lone = await storage.create_token(NewToken())
    await storage.complete_token(lone.id, "yes", PY)
    before = await rows_of(db_url, [run.id, child], [made.id, lone.id])
    assert all(before.values()), before

    clock.advance(DAY + 1)
    assert await storage.purgeable(DAY) == PurgeCount(runs=2, tokens=2, dry_run=True)
    assert await rows_of(db_url, [run.id, child], [made.id, lone.id]) == before  # only counted
    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=2, tokens=2)
    after = await rows_of(db_url, [run.id, child], [made.id, lone.id])
    assert after == dict.fromkeys(before, 0)
    with pytest.raises(RunNotFoundError):
        await storage.get_run(run.id)
    with pytest.raises(TokenNotFoundError):
        await storage.get_token(lone.id)
    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=0, tokens=0)


async def test_a_purge_keeps_unfinished_runs_waiting_tokens_and_what_is_younger(
    storage: Storage, clock: StepClock
) -> None:
    queued = await new_run(storage, "never-started")
    sleeper = await started(storage, "sleeper")
    await park(
        storage,
        sleeper,
        storage.sleep_until(Deadline(after_ms=10 * DAY), jw(sleeper, "sleep#0")),
    )
    waiting = await storage.create_token(NewToken())
    clock.advance(2 * DAY)
    young = await started(storage, "young")
    await storage.finish_run(young.id, young.epoch, FINISHED, None, None)
    answered = await storage.create_token(NewToken())
    await storage.complete_token(answered.id, "ok", PY)
    clock.advance(DAY // 2)

    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=0, tokens=0)
    clock.advance(DAY)  # now the young ones are a day and a half old
    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=1, tokens=1)
    assert (await storage.get_run(queued.id)).status is RunStatus.QUEUED
    assert (await storage.get_run(sleeper.id)).status is RunStatus.WAITING
    assert (await storage.get_token(waiting.id)).is_waiting
    with pytest.raises(RunNotFoundError):
        await storage.get_run(young.id)


async def test_a_purge_keeps_what_an_unfinished_run_may_still_read(
    storage: Storage, clock: StepClock
) -> None:
    # a waiting parent's finished child
    parent = await started(storage, "parent")
    await park(
        storage, parent, storage.wait_for_children([NewRun("child", {})], jw(parent, "batch#0"))
    )
    child = await finish(storage, "child")  # the parent is queued again, not finished
    # a finished child its parent started without waiting on it: the parent still runs
    runner = await started(storage, "runner")
    await storage.start_child(NewRun("quick", {}), jw(runner, "trigger:quick#0"))
    quick = await finish(storage, "quick")
    # a finished run whose child, started without waiting, has not finished
    starter = await started(storage, "starter")
    loose = await storage.start_child(NewRun("loose", {}), jw(starter, "trigger:loose#0"))
    await storage.finish_run(starter.id, starter.epoch, FINISHED, None, None)
    # a finished child whose parent finished, but which a second parent waits on (it found
    # the child by its idempotency key)
    shared = NewRun("shared", {}, idempotency_key="one-child")
    first, second = await started(storage, "first"), await started(storage, "second")
    await park(storage, first, storage.wait_for_children([shared], jw(first, "batch#0")))
    await park(storage, second, storage.wait_for_children([shared], jw(second, "batch#0")))
    await storage.cancel_run(first.id)  # the child goes on: the second parent waits on it
    shared_child = await finish(storage, "shared")
    # a closed token a run waits on: the run was queued again, it has not resumed yet
    blocked = await started(storage, "blocked")
    answered = await storage.create_token(NewToken())
    await park(storage, blocked, storage.wait_on_token(answered.id, jw(blocked, "wait#0")))
    await storage.complete_token(answered.id, "ok", PY)
    # a closed token made by a run that has not finished (it may wait on it next)
    maker = await started(storage, "maker")
    made = await storage.create_token(NewToken(), jw(maker, "create_token#0"))
    await storage.cancel_token(made.id, PY)

    clock.advance(DAY + 1)
    assert await storage.purgeable(DAY) == PurgeCount(runs=1, tokens=0, dry_run=True)
    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=1, tokens=0)
    with pytest.raises(RunNotFoundError):  # the first parent: nothing unfinished reads it
        await storage.get_run(first.id)
    for kept in (child, quick, starter.id, shared_child):
        assert (await storage.get_run(kept)).status is FINISHED
    assert (await storage.get_run(loose.id)).status is RunStatus.QUEUED
    assert (await storage.get_token(answered.id)).status == "COMPLETED"
    assert (await storage.get_token(made.id)).status == "CANCELLED"

    # once the runs that read them finished, they go too
    for task_id in ("parent", "loose", "second", "blocked"):
        await finish(storage, task_id)
    for claimed in (maker, runner):
        await storage.finish_run(claimed.id, claimed.epoch, FINISHED, None, None)
    clock.advance(DAY + 1)
    assert await storage.purge(DAY, PURGE_BATCH) == PurgeCount(runs=10, tokens=2)
    assert await storage.purgeable(DAY) == PurgeCount(runs=0, tokens=0, dry_run=True)


async def test_a_purge_takes_the_oldest_first_a_batch_at_a_time(
    storage: Storage, clock: StepClock
) -> None:
    runs, tokens = [], []
    for _ in range(5):
        await new_run(storage, "t")
        runs.append(await finish(storage, "t"))
        token = await storage.create_token(NewToken())
        await storage.cancel_token(token.id, PY)
        tokens.append(token.id)
        clock.advance(1_000)
    clock.advance(DAY)
    assert await storage.purge(DAY, 2) == PurgeCount(runs=2, tokens=2)
    for run_id in runs[:2]:
        with pytest.raises(RunNotFoundError):
            await storage.get_run(run_id)
    assert (await storage.get_run(runs[2])).status is FINISHED
    assert (await storage.get_token(tokens[2])).status == "CANCELLED"
    assert await storage.purgeable(DAY) == PurgeCount(runs=3, tokens=3, dry_run=True)
    assert await storage.purge(DAY, 2) == PurgeCount(runs=2, tokens=2)
    assert await storage.purge(DAY, 2) == PurgeCount(runs=1, tokens=1)
    assert await storage.purge(DAY, 2) == PurgeCount(runs=0, tokens=0)


async def test_purges_at_once_delete_each_row_once(db_url: str, clock: StepClock) -> None:
    """Workers purging together (PostgreSQL: each skips the rows another holds) delete
    every row exactly once between them, and neither fails."""
    async with contextlib.AsyncExitStack() as stack:
        storages = []
        for _ in range(3):
            opened = open_storage(db_url, signing_secret="retention-tests-" + "s" * 32, clock=clock)
            await opened.open()
            stack.push_async_callback(opened.close)
            storages.append(opened)
        for _ in range(60):
            await new_run(storages[0], "t")
            await finish(storages[0], "t")
        clock.advance(DAY + 1)

        async def purge_all(storage: Storage) -> int:
            deleted = 0
            while (batch := await storage.purge(DAY, 7)).runs:
                deleted += batch.runs
            return deleted

        done = await asyncio.gather(*(purge_all(s) for s in storages))
        assert sum(done) == 60
        assert await storages[1].purgeable(DAY) == PurgeCount(runs=0, tokens=0, dry_run=True)


async def test_a_late_completion_of_a_token_purged_meanwhile_records_nothing(
    storage: Storage,
) -> None:
    """A completion reads a closed token, a purge deletes it, then the completion records
    its refusal on the token: there is none left to record on, and that is not an error."""
    record = storage._record_late_completion
    await storage._write(lambda now: record("waitpoint_gone", PY, now))


# bad input -------------------------------------------------------------------------------


async def test_bad_ages_and_batches_are_refused_and_delete_nothing(
    engine: Engine, db_url: str
) -> None:
    await engine.storage.register_tasks([TaskInfo("t")])
    run = await engine.runs.cancel((await engine.trigger("t")).id)
    for age in ("0s", "soon", "-1d", "30", timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(ValidationError, match="invalid duration"):
            await engine.purge(age)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="invalid duration"):
            await engine.purge(age, dry_run=True)  # type: ignore[arg-type]
    for limit in (0, MAX_PURGE_BATCH + 1):
        with pytest.raises(ValidationError, match=f"1 to {MAX_PURGE_BATCH} rows"):
            await engine.purge_batch("1s", limit=limit)
    with pytest.raises(ValidationError, match="must be positive"):
        await engine.storage.purge(0, 10)
    assert (await engine.runs.retrieve(run.id)).status is RunStatus.CANCELED


def test_the_retention_setting_must_be_a_positive_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WAITPOINT_RETENTION", "12h")
    assert Settings().retention == "12h"
    monkeypatch.setenv("WAITPOINT_RETENTION", " ")
    assert Settings().retention is None  # blank: off, as unset
    for bad in ("0s", "30", "a month"):
        monkeypatch.setenv("WAITPOINT_RETENTION", bad)
        with pytest.raises(pydantic.ValidationError, match="retention") as refused:
            Settings()
        assert "invalid duration" in str(refused.value)


async def test_a_worker_takes_its_retention_from_the_setting_or_its_argument(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WAITPOINT_RETENTION", raising=False)
    assert Worker(engine, {}).retention_ms is None  # off by default
    configured = Engine.over(engine.storage, engine.signer)
    configured.settings = Settings(retention="12h")
    assert Worker(configured, {}).retention_ms == 12 * 3_600_000
    assert Worker(configured, {}, retention=timedelta(seconds=2)).retention_ms == 2_000
    with pytest.raises(ValidationError, match="longer than zero"):
        Worker(engine, {}, retention="0s")


# the facade --------------------------------------------------------------------------------


class Behind:
    """The clock two days behind: what an engine on it finishes is two days old at once."""

    def now_ms(self) -> int:
        return StepClock().now_ms() - 2 * DAY


async def old_rows(db_url: str, task_id: str, runs: int, tokens: int) -> list[str]:
    """``runs`` canceled runs of ``task_id`` and ``tokens`` canceled tokens, two days old, and
    one run of the task left QUEUED (its id first)."""
    async with Engine(db_url, clock=Behind()) as past:
        await past.storage.register_tasks([TaskInfo(task_id)])
        ids = [(await past.trigger(task_id)).id for _ in range(runs + 1)]
        for run_id in ids[1:]:
            await past.runs.cancel(run_id)
        for _ in range(tokens):
            await past.tokens.cancel((await past.tokens.create()).id)
    return ids


async def test_purge_counts_then_deletes_in_batches_and_reports_progress(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.client.PURGE_BATCH", 2)
    [queued, *canceled] = await old_rows(db_url, "old", runs=5, tokens=3)
    dry = await engine.purge("1d", dry_run=True)
    assert dry == PurgeCount(runs=5, tokens=3, dry_run=True)
    assert (await engine.runs.retrieve(canceled[0])).status is RunStatus.CANCELED
    seen: list[tuple[int, int]] = []
    done = await engine.purge("1d", progress=lambda n, of: seen.append((n, of)))
    assert done == PurgeCount(runs=5, tokens=3)
    assert seen == [(4, 8), (7, 8), (8, 8)]  # batches of 2 runs and 2 tokens
    assert (await engine.runs.retrieve(queued)).status is RunStatus.QUEUED
    assert await engine.purge("1d") == PurgeCount(runs=0, tokens=0)
    assert await engine.purge("3d", dry_run=True) == PurgeCount(runs=0, tokens=0, dry_run=True)


def test_the_command_counts_purges_and_refuses_bad_ages(db_url: str) -> None:
    [queued, *_] = asyncio.run(old_rows(db_url, "cli-old", runs=3, tokens=1))
    dry = ok_json(db_url, "purge", "--older-than", "1d", "--dry-run")
    assert dry == {"runs": 3, "tokens": 1, "dryRun": True}
    assert ok_json(db_url, "purge", "--older-than", "1d") == {
        "runs": 3,
        "tokens": 1,
        "dryRun": False,
    }
    again = invoke(db_url, "purge", "--older-than", "1d")
    assert again.exit_code == 0, again.output
    assert again.stdout == "deleted 0 finished runs and 0 closed tokens older than 1d\n"
    listed_runs = ok_json(db_url, "runs", "list", "--task", "cli-old")
    assert [run["id"] for run in listed_runs["data"]] == [queued]
    assert_one_line_error(invoke(db_url, "purge", "--older-than", "soon"), "--older-than")
    assert_one_line_error(invoke(db_url, "purge", "--older-than", "0s"), "longer than zero")
    assert invoke(db_url, "purge").exit_code == 2  # --older-than is required


def test_the_command_says_what_a_dry_run_found(db_url: str) -> None:
    asyncio.run(old_rows(db_url, "cli-dry", runs=2, tokens=0))
    result = invoke(db_url, "purge", "--older-than", "1d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "2 finished runs and 0 closed tokens are older than 1d; --dry-run: none deleted\n"
    )
    assert ok_json(db_url, "purge", "--older-than", "1d", "--dry-run")["runs"] == 2


def test_a_bad_retention_stops_the_worker_command_with_one_line(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_one_line_error(invoke(db_url, "worker", "--retention", "soon"), "--retention")
    monkeypatch.setenv("WAITPOINT_RETENTION", "forever")
    assert_one_line_error(invoke(db_url, "worker"), "WAITPOINT_", "retention")


# over HTTP ---------------------------------------------------------------------------------


async def test_the_api_purges_one_batch_a_call_and_refuses_bad_bodies(db_url: str) -> None:
    await old_rows(db_url, "api-old", runs=3, tokens=2)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with Engine(db_url) as engine:
        app = create_app(engine, secret_key=KEY)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            dry = await api.post(
                "/api/v1/purge", json={"olderThan": "1d", "dryRun": True}, headers=headers
            )
            assert dry.json() == {"runs": 3, "tokens": 2, "dryRun": True}
            batch = {"olderThan": "1d", "limit": 2}
            first = await api.post("/api/v1/purge", json=batch, headers=headers)
            assert first.json() == {"runs": 2, "tokens": 2, "dryRun": False}
            second = await api.post("/api/v1/purge", json=batch, headers=headers)
            assert second.json() == {"runs": 1, "tokens": 0, "dryRun": False}

            assert (await api.post("/api/v1/purge", json=batch)).status_code == 401
            for body, problem in (
                ({"olderThan": "soon"}, "invalid duration 'soon'"),
                ({"olderThan": "0s"}, "longer than zero"),
                ({"olderThan": "1d", "limit": 0}, "limit"),
                ({"olderThan": "1d", "limit": MAX_PURGE_BATCH + 1}, "limit"),
                ({"olderThan": "1d", "dry_run": True}, "unknown field 'dry_run'"),
                ({}, "olderThan"),
            ):
                refused = await api.post("/api/v1/purge", json=body, headers=headers)
                assert refused.status_code == 422, (body, refused.text)
                assert problem in refused.json()["error"], (body, refused.text)


async def test_purge_works_the_same_over_http(server: str, tmp_path: Path) -> None:  # noqa: F811
    """``Engine.purge`` is written once, above the transports: over HTTP it counts and
    deletes through ``POST /api/v1/purge``, a batch a call."""
    [queued, *_] = await old_rows(f"sqlite:///{tmp_path}/engine.db", "remote-old", 3, 1)
    async with Engine(server, api_key=KEY) as remote:
        assert await remote.purge("1d", dry_run=True) == PurgeCount(3, 1, dry_run=True)
        assert await remote.purge(timedelta(days=1)) == PurgeCount(runs=3, tokens=1)
        assert (await remote.runs.retrieve(queued)).status is RunStatus.QUEUED
        with pytest.raises(ValidationError, match="invalid duration"):
            await remote.purge("soon")


# the worker --------------------------------------------------------------------------------


@task("retention-short")
async def short(n: int) -> int:
    """A short run that leaves a journal entry, a sleep's waitpoint and its events."""
    doubled: int = await step("double", lambda: n * 2)
    await sleep("0s")
    return doubled


async def test_a_worker_with_a_retention_purges_by_itself(
    engine: Engine, start_worker: StartWorker
) -> None:
    await engine.storage.register_tasks([TaskInfo("nobody-serves")])
    stays = await engine.trigger("nobody-serves")
    with capture_logs() as events:
        await start_worker([short], retention="1s")
        runs = [await engine.trigger("retention-short", n) for n in range(3)]
        token = await engine.tokens.create()
        await engine.tokens.complete(token.id, "ok")
        done = await asyncio.gather(*(engine.wait_for_run(run.id, timeout=10) for run in runs))
        assert [run.output for run in done] == [0, 2, 4]
        await gone(engine, [run.id for run in runs], [token.id], timeout=15)
    assert (await engine.runs.retrieve(stays.id)).status is RunStatus.QUEUED
    purged = [e for e in events if e["event"] == "retention.purged"]
    assert sum(e["runs"] for e in purged) == 3 and sum(e["tokens"] for e in purged) == 1


async def gone(engine: Engine, run_ids: list[str], token_ids: list[str], timeout: float) -> None:
    """Poll until none of these runs and tokens exists any more (fails the test after
    ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = [i for i in run_ids if not await missing(engine.runs.retrieve(i))]
        left += [i for i in token_ids if not await missing(engine.tokens.retrieve(i))]
        if not left:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{left} still there after {timeout} s")
        await asyncio.sleep(0.1)


async def missing(found: Awaitable[object]) -> bool:
    try:
        await found
    except (RunNotFoundError, TokenNotFoundError):
        return True
    return False


# a steady load -----------------------------------------------------------------------------

STEADY_RUNS = {"sqlite": 10_000, "postgres": 2_000}
"""Short runs per backend (PostgreSQL here does 150 to 250 a second: 10,000 would take a
minute; ``WAITPOINT_RETENTION_RUNS=10000`` runs that many on both)."""
CHUNK = 100
CHUNK_SECONDS = {"sqlite": 0.125, "postgres": 0.25}
"""A chunk is triggered at most this often: the load is steady, at most 800 runs a second on
SQLite, 400 on PostgreSQL, however fast the machine."""
PEAK_RUNS = {"sqlite": 2_000, "postgres": 1_000}
"""What the tables may hold, counted in runs: a run is kept for the one-second retention and
up to the worker's half-second pause between purges, so about 800 x 1.6 + one chunk on
SQLite (1,400), 400 x 1.6 + one chunk on PostgreSQL (740). Without retention every run
would stay."""


@pytest.fixture
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgres"


async def test_under_a_steady_load_the_tables_stay_bounded(
    engine: Engine, start_worker: StartWorker, db_url: str, backend: str
) -> None:
    total = int(os.environ.get("WAITPOINT_RETENTION_RUNS", STEADY_RUNS[backend]))
    await start_worker([short], retention="1s", concurrency=CHUNK)
    loop = asyncio.get_running_loop()
    per_run: dict[str, float] = {}
    peak: dict[str, int] = {}
    async with database(db_url) as count:
        for start in range(0, total, CHUNK):
            began = loop.time()
            await asyncio.gather(
                *(engine.trigger("retention-short", n) for n in range(start, start + CHUNK))
            )
            for _ in range(CHUNK // 10):  # and closed tokens
                await engine.tokens.cancel((await engine.tokens.create()).id)
            await all_finished(engine)
            sizes = await table_sizes(count)
            if not per_run:  # the first chunk, before anything was old enough to go
                per_run = {table: n / CHUNK for table, n in sizes.items()}
            peak = {table: max(n, peak.get(table, 0)) for table, n in sizes.items()}
            await asyncio.sleep(max(0.0, began + CHUNK_SECONDS[backend] - loop.time()))
        bound = {table: per_run[table] * PEAK_RUNS[backend] for table in TABLES}
        assert all(peak[table] <= bound[table] for table in TABLES), (peak, bound)
        assert per_run["runs"] == 1 and per_run["journal"] == 2  # what the bound counts in
        await drained(count, timeout=20)


async def all_finished(engine: Engine) -> None:
    unfinished = [s for s in RunStatus if not s.is_terminal]
    while True:
        if not (await engine.runs.list(status=unfinished, limit=1)).data:
            return
        await asyncio.sleep(0.01)


async def drained(count: Any, timeout: float) -> None:
    """Poll until every table is empty: the last runs and tokens aged out too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any((sizes := await table_sizes(count)).values()):
        if loop.time() > deadline:
            raise AssertionError(f"rows left after {timeout} s: {sizes}")
        await asyncio.sleep(0.1)
