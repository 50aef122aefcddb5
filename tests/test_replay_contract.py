"""Replay you can trust: each case where replay once broke the durability contract.

Every test runs on a SQLite file and on a PostgreSQL schema, with a real worker and a clock
the test moves (``ManualClock``): deadlines pass when the test says so, never by accident of
a loaded machine, and leases never run out underneath a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from engine import (
    ConcurrentWaitError,
    Engine,
    Retry,
    RunStatus,
    TaskDefinition,
    Worker,
    create_token,
    sleep,
    step,
    task,
    wait_for_token,
    wait_for_tokens,
)
from engine.clock import from_ms
from engine.models import Run
from engine.settings import Settings
from engine.testing import ManualClock

from .conftest import wait_for_status
from .postgres import SERVER_URL

RAN: Counter[str] = Counter()
SEEN: list[Any] = []
TEN_YEARS = 10 * 365 * 86400


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    """Each test (and each backend's run of it) counts for itself."""
    RAN.clear()
    SEEN.clear()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def engine(db_url: str, clock: ManualClock) -> AsyncIterator[Engine]:
    """An Engine on the test's database whose clock only the test moves (a long lease)."""
    settings = Settings(database_url=db_url, api_url=None, lease_seconds=TEN_YEARS)
    async with Engine(settings=settings, clock=clock) as opened:
        yield opened


@contextlib.asynccontextmanager
async def working(engine: Engine, *tasks: TaskDefinition) -> AsyncIterator[Worker]:
    """A worker for ``tasks`` while the block runs; hard-stopped at its end."""
    worker = Worker(engine, {t.id: t for t in tasks}, poll_seconds=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 5)
    try:
        yield worker
    finally:
        worker.stop(graceful=False)
        await asyncio.wait_for(runner, 10)


async def advance(engine: Engine, clock: ManualClock, duration: timedelta) -> None:
    """Move the clock and fire every timer that fell due (as a worker's timer loop would)."""
    clock.advance(duration)
    while await engine.storage.fire_due_timers(1000):
        pass


async def finished(engine: Engine, run_id: str, timeout: float = 15) -> Run:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await engine.runs.retrieve(run_id)
        if run.is_finished:
            return run
        assert loop.time() < deadline, f"run {run_id} is still {run.status}"
        await asyncio.sleep(0.01)


async def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"not true after {timeout} s"
        await asyncio.sleep(0.01)


async def reached_attempt(engine: Engine, run_id: str, attempt: int) -> None:
    """Poll until the run's attempt count reached ``attempt`` (a retry is queued or running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (await engine.runs.retrieve(run_id)).attempt_count < attempt:
        assert loop.time() < deadline, f"run {run_id} never reached attempt {attempt}"
        await asyncio.sleep(0.01)


async def waiting_token(engine: Engine, run_id: str) -> str:
    await wait_for_status(engine, run_id, "WAITING")
    tokens = await engine.tokens.list(status="WAITING", limit=10)
    run = await engine.runs.retrieve(run_id)
    [token] = [t.id for t in tokens.data if t.id in run.waiting_on]
    return token


def ran(name: str) -> str:
    RAN[name] += 1
    return name


# 1. a group wait with an absolute deadline


@task("rc-deadline")
async def absolute_deadline(payload: dict[str, Any]) -> dict[str, Any]:
    token = await create_token(tags=["rc-deadline"])
    group = await wait_for_tokens([token], timeout=from_ms(payload["deadline_ms"]))
    return {"ok": group.ok, "timed_out": group.timed_out, "data": group.results[token.id]}


async def test_a_group_with_an_absolute_deadline_times_out_when_nobody_answers(
    engine: Engine, clock: ManualClock
) -> None:
    async with working(engine, absolute_deadline):
        run = await engine.trigger("rc-deadline", {"deadline_ms": clock.now_ms() + 60_000})
        await wait_for_status(engine, run.id, "WAITING")
        await advance(engine, clock, timedelta(seconds=61))
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"ok": False, "timed_out": True, "data": None}


async def test_a_group_with_an_absolute_deadline_sees_a_completion_made_before_it(
    engine: Engine, clock: ManualClock
) -> None:
    """Completed before the deadline, seen by a worker that came back after it."""
    async with working(engine, absolute_deadline):
        run = await engine.trigger("rc-deadline", {"deadline_ms": clock.now_ms() + 60_000})
        token = await waiting_token(engine, run.id)
    clock.advance(timedelta(seconds=10))
    assert (await engine.tokens.complete(token, {"yes": 1})).applied
    clock.advance(timedelta(minutes=5))  # the worker comes back long after the deadline
    async with working(engine, absolute_deadline):
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output["ok"] is True and done.output["timed_out"] is False


# 2. a child found through another run's idempotency key runs once


@task("rc-shared-child")
async def shared_child(payload: dict[str, Any]) -> str:
    await step("work", ran, "child-work")
    token = await create_token(tags=["rc-shared-child"])
    await wait_for_token(token)
    return "child-done"


@task("rc-finding-parent")
async def finding_parent(payload: dict[str, Any]) -> Any:
    result = await shared_child.trigger_and_wait({}, idempotency_key="shared")
    return result.output


async def test_a_child_found_by_idempotency_key_is_followed_after_the_key_expired(
    engine: Engine, clock: ManualClock
) -> None:
    async with working(engine, shared_child, finding_parent):
        child = await engine.trigger(
            "rc-shared-child", {}, idempotency_key="shared", idempotency_key_ttl="1m"
        )
        token = await waiting_token(engine, child.id)
        parent = await engine.trigger("rc-finding-parent")
        await wait_for_status(engine, parent.id, "WAITING")
        await advance(engine, clock, timedelta(minutes=5))  # the key expires while it waits
        await engine.tokens.complete(token, "go")
        done = await finished(engine, parent.id)
        children = await engine.runs.list(task="rc-shared-child")
    assert done.status is RunStatus.COMPLETED and done.output == "child-done"
    assert [c.id for c in children.data] == [child.id]  # no second child
    assert RAN["child-work"] == 1


# 3. task code cannot swallow a suspension


@task("rc-swallow-base")
async def swallowing_base_exception(payload: None) -> Any:
    token = await create_token(tags=["rc-swallow"])
    try:
        result = await wait_for_token(token)
    except BaseException:
        return "swallowed"
    return result.output


@task("rc-swallow-gather")
async def swallowing_in_gather(payload: None) -> Any:
    token = await create_token(tags=["rc-swallow"])
    [result] = await asyncio.gather(wait_for_token(token), return_exceptions=True)
    return result.output if not isinstance(result, BaseException) else "swallowed"


@pytest.mark.parametrize("task_id", ["rc-swallow-base", "rc-swallow-gather"])
async def test_a_task_that_swallows_its_suspension_still_waits_for_the_token(
    engine: Engine, task_id: str
) -> None:
    async with working(engine, swallowing_base_exception, swallowing_in_gather):
        run = await engine.trigger(task_id)
        token = await waiting_token(engine, run.id)
        await asyncio.sleep(0.2)  # a finish from the swallowed suspension would land now
        assert (await engine.runs.retrieve(run.id)).status is RunStatus.WAITING
        completion = await engine.tokens.complete(token, "the answer")
        done = await finished(engine, run.id)
    assert completion.applied
    assert done.status is RunStatus.COMPLETED and done.output == "the answer"


@task("rc-swallow-concurrent", retry=Retry(max_attempts=3, min_delay="1s"))
async def swallowing_concurrent_wait(payload: None) -> str:
    first, second = await create_token(), await create_token()
    try:
        await asyncio.gather(wait_for_token(first), wait_for_token(second))
    except ConcurrentWaitError:
        return "swallowed"
    return "waited"


async def test_a_caught_concurrent_wait_error_still_fails_the_run(engine: Engine) -> None:
    async with working(engine, swallowing_concurrent_wait):
        run = await engine.trigger("rc-swallow-concurrent")
        done = await finished(engine, run.id)
    assert done.status is RunStatus.FAILED
    assert done.error is not None and done.error.name == "engine.errors.ConcurrentWaitError"
    assert done.attempt_count == 1


async def slow_body() -> str:
    RAN["started"] += 1
    await asyncio.sleep(1)
    RAN["finished"] += 1
    return "slow"


@task("rc-stalled")
async def stalled(payload: None) -> str:
    result: str = await step("slow", slow_body)
    return result


async def test_a_worker_that_takes_back_its_own_rescued_run_stops_the_stale_attempt(
    engine: Engine, clock: ManualClock
) -> None:
    """The lease ran out under a stalled attempt; the same worker claimed the run again."""
    async with working(engine, stalled) as worker:
        run = await engine.trigger("rc-stalled")
        await eventually(lambda: RAN["started"] == 1)
        clock.advance(timedelta(seconds=TEN_YEARS + 1))  # the worker's timer loop rescues it
        await eventually(lambda: RAN["started"] == 2)
        await asyncio.sleep(0.1)
        assert run.id in worker.running  # the new attempt's bookkeeping, whatever the old did
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED and done.output == "slow"
    assert RAN["finished"] == 1  # the stale attempt was stopped, not left to run on


# 4. a database failure inside a durable call hands the run back


async def run_sql(db_url: str, *, sqlite: list[str], postgres: list[str]) -> None:
    """Change the test's database behind the engine's back (another process would)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10)
        try:
            for statement in sqlite:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    import asyncpg

    schema = db_url.rpartition("schema=")[2]
    pg = await asyncpg.connect(SERVER_URL)
    try:
        await pg.execute(f'SET search_path TO "{schema}"')
        for statement in postgres:
            await pg.execute(statement)
    finally:
        await pg.close()


FAIL_JOURNAL_WRITES = {
    "sqlite": [
        "CREATE TABLE failing (key TEXT)",
        "CREATE TRIGGER fail_journal BEFORE INSERT ON journal"
        " WHEN EXISTS (SELECT 1 FROM failing WHERE key = NEW.key)"
        " BEGIN SELECT RAISE(ABORT, 'the disk is failing'); END",
        "INSERT INTO failing VALUES ('step:write#0')",
    ],
    "postgres": [
        "CREATE TABLE failing (key text)",
        # the engine's sessions have no search_path to the schema: the function keeps its own
        "CREATE FUNCTION fail_journal() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path FROM CURRENT AS $$ BEGIN"
        " IF EXISTS (SELECT 1 FROM failing WHERE key = NEW.key) THEN"
        " RAISE EXCEPTION 'the disk is failing'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER fail_journal BEFORE INSERT ON journal"
        " FOR EACH ROW EXECUTE FUNCTION fail_journal()",
        "INSERT INTO failing VALUES ('step:write#0')",
    ],
}


@task("rc-storage-failure")
async def storage_failure(payload: None) -> str:
    try:
        return await step("write", ran, "write")
    except Exception as exc:  # a task may catch everything; a database failure is not its own
        return f"swallowed {type(exc).__name__}"


async def test_a_database_failure_in_a_durable_call_hands_the_run_back(
    engine: Engine, clock: ManualClock, db_url: str
) -> None:
    await run_sql(db_url, **FAIL_JOURNAL_WRITES)
    async with working(engine, storage_failure):
        run = await engine.trigger("rc-storage-failure")
        await eventually(lambda: RAN["write"] == 1)
        await wait_for_status(engine, run.id, "QUEUED")  # handed back, due again in a moment
        await asyncio.sleep(0.2)
        assert RAN["write"] == 1  # not tried again in a loop
        await run_sql(db_url, sqlite=["DELETE FROM failing"], postgres=["DELETE FROM failing"])
        clock.advance(timedelta(seconds=1))
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED and done.output == "write"
    assert done.attempt_count == 1  # the database failed, not the task
    assert RAN["write"] == 2


# 5. a caught step error and a retry


def flaky_primary() -> str:
    RAN["primary"] += 1
    if RAN["primary"] == 1:
        raise ValueError("primary is down")
    return "primary"


def flaky_last() -> str:
    RAN["last"] += 1
    if RAN["last"] == 1:
        raise RuntimeError("last step failed")
    return "last"


@task("rc-caught-then-retry", retry=Retry(max_attempts=3, min_delay="1s", jitter=False))
async def caught_then_retry(payload: None) -> list[str]:
    try:
        used = await step("primary", flaky_primary)
    except ValueError:
        used = await step("fallback", ran, "fallback")
    return [used, await step("last", flaky_last)]


async def test_a_retry_replays_a_caught_step_error_and_reruns_the_one_that_failed(
    engine: Engine, clock: ManualClock
) -> None:
    async with working(engine, caught_then_retry):
        run = await engine.trigger("rc-caught-then-retry")
        await reached_attempt(engine, run.id, 2)  # attempt 1 failed: the retry waits its back-off
        clock.advance(timedelta(seconds=1))  # the retry's back-off
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == ["fallback", "last"]  # attempt 2 took the path attempt 1 took
    assert done.attempt_count == 2
    assert RAN == {"primary": 1, "fallback": 1, "last": 2}


# 6. a group's outcome never depends on which processes were alive


@task("rc-group-any")
async def group_any(payload: None) -> dict[str, Any]:
    a = await create_token(tags=["rc-group"])
    b = await create_token(tags=["rc-group"])
    group = await wait_for_tokens([a, b], mode="any", timeout="10s")
    results = group.results
    return {
        "ok": group.ok,
        "timed_out": group.timed_out,
        "first": None if group.first is None else [a.id, b.id].index(group.first),
        "results": [None if results[t.id] is None else results[t.id].output for t in (a, b)],
    }


async def group_tokens(engine: Engine) -> list[str]:
    page = await engine.tokens.list(tags="rc-group", limit=10)
    return sorted(t.id for t in page.data)


@pytest.mark.parametrize("alive_at_deadline", [True, False])
async def test_a_token_closed_after_the_group_deadline_counts_as_not_answered(
    engine: Engine, clock: ManualClock, alive_at_deadline: bool
) -> None:
    """The same outcome whether a worker fired the group's timer at the deadline or not."""
    async with working(engine, group_any):
        run = await engine.trigger("rc-group-any")
        await wait_for_status(engine, run.id, "WAITING")
        if alive_at_deadline:
            await advance(engine, clock, timedelta(seconds=10))
            await finished(engine, run.id)
    if not alive_at_deadline:
        clock.advance(timedelta(seconds=10))  # nobody fires the timer
    first = min(await group_tokens(engine))
    clock.advance(timedelta(seconds=1))
    assert (await engine.tokens.complete(first, "late")).applied
    async with working(engine, group_any):
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"ok": False, "timed_out": True, "first": None, "results": [None, None]}


async def test_a_token_closed_just_before_the_group_deadline_is_seen_by_a_late_worker(
    engine: Engine, clock: ManualClock
) -> None:
    async with working(engine, group_any):
        run = await engine.trigger("rc-group-any")
        await wait_for_status(engine, run.id, "WAITING")
    clock.advance(timedelta(milliseconds=9_999))
    later = max(await group_tokens(engine))
    await engine.tokens.complete(later, "in time")
    clock.advance(timedelta(minutes=1))
    async with working(engine, group_any):
        done = await finished(engine, run.id)
    assert done.output["ok"] is True and done.output["timed_out"] is False
    assert "in time" in done.output["results"]


# 7. durable calls inside a step's body


async def charge() -> int:
    await step("inner", ran, "inner")
    return 1


@task("rc-nested", retry=Retry(max_attempts=3))
async def nested(payload: None) -> int:
    value: int = await step("charge", charge)
    return value


async def test_a_durable_call_inside_a_step_body_fails_the_run_naming_both(
    engine: Engine,
) -> None:
    async with working(engine, nested):
        run = await engine.trigger("rc-nested")
        done = await finished(engine, run.id)
    assert done.status is RunStatus.FAILED and done.attempt_count == 1
    assert done.error is not None and done.error.name == "engine.errors.DurableCallInStepError"
    assert "step:inner" in done.error.message and "step:charge#0" in done.error.message
    assert RAN["inner"] == 0


# 8. a step's exception is the same on first execution and on replay


class UpstreamError(Exception):
    def __init__(self, status: int, response: object) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.response = response


def call_upstream() -> None:
    raise UpstreamError(503, object())


@task("rc-step-error")
async def step_error(payload: None) -> str:
    try:
        await step("call", call_upstream)
    except UpstreamError as exc:
        SEEN.append((type(exc).__name__, exc.args, exc.status, hasattr(exc, "response")))
    await wait_for_token(await create_token())  # the run resumes by replay
    return "done"


async def test_a_step_error_looks_the_same_on_first_execution_and_on_replay(
    engine: Engine,
) -> None:
    async with working(engine, step_error):
        run = await engine.trigger("rc-step-error")
        await engine.tokens.complete(await waiting_token(engine, run.id))
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED
    first, replayed = SEEN
    assert first == replayed == ("UpstreamError", ("upstream answered 503",), 503, False)


# 9. a durable call in a finally block while the run parks


@task("rc-finally")
async def cleanup_in_finally(payload: None) -> Any:
    token = await create_token(tags=["rc-finally"])
    try:
        result = await wait_for_token(token)
    finally:
        await step("cleanup", ran, "cleanup")
    return result.output


async def test_a_durable_call_in_finally_does_not_hold_the_run_when_it_parks(
    engine: Engine,
) -> None:
    """With a lease that never runs out, a run whose lease was not released never resumes."""
    async with working(engine, cleanup_in_finally):
        run = await engine.trigger("rc-finally")
        await engine.tokens.complete(await waiting_token(engine, run.id), "resumed")
        done = await finished(engine, run.id)
    assert done.output == "resumed"
    assert RAN["cleanup"] == 1  # only the attempt that went on ran it


# 10. racing steps replay the recorded winner


async def fast() -> str:
    await asyncio.sleep(0.01)
    return "fast"


async def slow() -> str:
    await asyncio.sleep(0.3)
    return "slow"


@task("rc-race")
async def race(payload: None) -> str:
    racers = [asyncio.ensure_future(step("slow", slow)), asyncio.ensure_future(step("fast", fast))]
    for first in asyncio.as_completed(racers):
        winner: str = await first
        break
    await asyncio.gather(*racers)  # both journaled
    SEEN.append(winner)
    await wait_for_token(await create_token())  # the run resumes by replay
    return winner


async def test_racing_steps_replay_the_recorded_winner(engine: Engine) -> None:
    async with working(engine, race):
        run = await engine.trigger("rc-race")
        await engine.tokens.complete(await waiting_token(engine, run.id))
        done = await finished(engine, run.id)
    assert done.output == "fast"
    assert SEEN == ["fast", "fast"]


# 11. smaller


@task("rc-sleep")
async def sleeping(payload: dict[str, Any]) -> str:
    await sleep(timedelta(microseconds=payload["microseconds"]))
    return "woke"


@task("rc-sleep-zero")
async def sleeping_zero(payload: dict[str, str]) -> str:
    await sleep(payload["duration"] if payload["duration"] else timedelta(0))
    return "woke"


@pytest.mark.parametrize("duration", ["0s", ""])
async def test_a_sleep_of_zero_returns_at_once(engine: Engine, duration: str) -> None:
    async with working(engine, sleeping_zero):
        run = await engine.trigger("rc-sleep-zero", {"duration": duration})
        done = await finished(engine, run.id)
    assert done.status is RunStatus.COMPLETED and done.output == "woke"


async def test_a_sub_millisecond_sleep_rounds_up(engine: Engine, clock: ManualClock) -> None:
    async with working(engine, sleeping):
        run = await engine.trigger("rc-sleep", {"microseconds": 500})
        await wait_for_status(engine, run.id, "WAITING")  # not due at once: never early
        await advance(engine, clock, timedelta(milliseconds=1))
        done = await finished(engine, run.id)
    assert done.output == "woke"
