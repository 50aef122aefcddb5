"""How runs fail on purpose: concurrent waits, aborts, and workers that keep dying."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from engine import (
    AbortTaskRunError,
    Engine,
    Queue,
    Retry,
    RunFailedError,
    StorageUnavailableError,
    Worker,
    create_token,
    sleep,
    step,
    task,
    wait_for_token,
)
from engine.models import ClaimedRun
from engine.storage import NewRun

from .conftest import StartWorker

FAST_RETRY = Retry(max_attempts=3, min_delay=timedelta(milliseconds=10))
LEFTOVER = {"finished": 0}


@task("fl-two-waits", retry=FAST_RETRY)
async def two_waits(payload: None) -> None:
    first, second = await create_token(), await create_token()
    await asyncio.gather(wait_for_token(first), wait_for_token(second))


async def test_two_waits_at_once_fail_the_run_at_once_naming_the_group_api(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([two_waits])
    run = await engine.trigger("fl-two-waits")
    with pytest.raises(RunFailedError, match="wait_for_tokens"):
        await engine.wait_for_run(run.id, timeout=10)
    failed = await engine.runs.retrieve(run.id)
    assert failed.error is not None and failed.error.name == "engine.errors.ConcurrentWaitError"
    assert failed.attempt_count == 1  # not retried, whatever the policy
    assert failed.waiting_on == []


async def noop() -> str:
    return "ok"


@task("fl-leftover")
async def leftover(payload: None) -> None:
    marked = asyncio.Event()

    async def slow_sibling() -> None:
        await step("mark", noop)  # a durable call: the runtime knows this coroutine
        marked.set()
        await asyncio.sleep(0.5)
        LEFTOVER["finished"] += 1

    async def wait_once_marked() -> None:  # the step journaled first, whichever write is faster
        await marked.wait()
        await wait_for_token(token)

    token = await create_token()
    await asyncio.gather(slow_sibling(), wait_once_marked())


async def test_coroutines_still_running_when_the_run_parks_are_cancelled(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([leftover])
    run = await engine.trigger("fl-leftover")
    for _ in range(200):
        if (await engine.runs.retrieve(run.id)).status == "WAITING":
            break
        await asyncio.sleep(0.01)
    timeline = await engine.runs.timeline(run.id)
    assert "step" in [e.kind for e in timeline]  # the sibling ran and journaled before parking
    await asyncio.sleep(0.8)
    assert LEFTOVER["finished"] == 0


@task("fl-abort", retry=FAST_RETRY)
async def aborting(payload: None) -> None:
    raise AbortTaskRunError("the order was deleted; retrying cannot help")


async def test_abort_fails_the_run_without_retries(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([aborting])
    run = await engine.trigger("fl-abort")
    with pytest.raises(RunFailedError, match="retrying cannot help"):
        await engine.wait_for_run(run.id, timeout=10)
    assert (await engine.runs.retrieve(run.id)).attempt_count == 1


async def test_a_run_whose_worker_keeps_dying_ends_crashed(engine: Engine) -> None:
    storage = engine.storage
    run = await storage.create_run(NewRun(task_id="fl-poison", payload=None))
    for recovery in range(1, 3):
        [claimed] = await storage.claim_runs(f"worker-{recovery}", 1, 1, ["fl-poison"])
        assert claimed.id == run.id
        await asyncio.sleep(0.01)  # the worker "dies": its 1 ms lease runs out
        assert await storage.rescue_expired_leases(max_recoveries=2) == 1
        status = (await engine.runs.retrieve(run.id)).status
        assert status == ("QUEUED" if recovery == 1 else "CRASHED")
    crashed = await engine.runs.retrieve(run.id)
    assert crashed.error is not None and "2 times" in crashed.error.message
    assert crashed.finished_at is not None
    assert await storage.claim_runs("worker-3", 1, 30_000, ["fl-poison"]) == []


STOPPED = {"after_sleep": 0}


@task("fl-long")
async def long_running(payload: None) -> None:
    await asyncio.sleep(30)
    STOPPED["after_sleep"] += 1


async def test_cancelling_an_executing_run_stops_its_attempt(
    engine: Engine, start_worker: StartWorker
) -> None:
    worker = await start_worker([long_running])
    run = await engine.trigger("fl-long")
    for _ in range(200):
        if (await engine.runs.retrieve(run.id)).status == "EXECUTING":
            break
        await asyncio.sleep(0.01)
    canceled = await engine.runs.cancel(run.id)
    assert canceled.status == "CANCELED"
    for _ in range(300):  # the worker notices within its poll interval
        if not worker.running:
            break
        await asyncio.sleep(0.01)
    assert not worker.running
    assert STOPPED["after_sleep"] == 0
    assert (await engine.runs.retrieve(run.id)).status == "CANCELED"


async def test_a_hard_stop_in_the_middle_of_a_claim_hands_the_claimed_run_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed but the stop arrived before the worker saw its result: the run
    must go back to the queue now, not wait out the lease of a worker that is gone."""
    storage = engine.storage
    claim = storage.claim_runs
    claimed = asyncio.Event()

    async def slow_claim(*args: Any, **kwargs: Any) -> list[ClaimedRun]:
        runs = await claim(*args, **kwargs)
        if runs:
            claimed.set()
            await asyncio.sleep(0.5)  # the hard stop lands here
        return runs

    monkeypatch.setattr(storage, "claim_runs", slow_claim)
    worker = Worker(engine, {long_running.id: long_running}, poll_seconds=0.05)
    running = asyncio.create_task(worker.run())
    run = await engine.trigger("fl-long")
    await asyncio.wait_for(claimed.wait(), 10)
    worker.stop(graceful=False)
    await asyncio.wait_for(running, 10)
    back = await engine.runs.retrieve(run.id)
    assert back.status == "QUEUED"
    assert STOPPED["after_sleep"] == 0


@task("fl-journaled")
async def journaled(payload: None) -> str:
    return await step("only", lambda: "done")


async def test_a_database_outage_hands_the_run_back_instead_of_failing_it(
    engine: Engine, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = engine.storage
    append = storage.append_journal
    outages = []

    async def flaky_append(write: Any) -> None:
        if not outages:
            outages.append(write.key)
            raise StorageUnavailableError("PostgreSQL unavailable: too many clients already")
        await append(write)

    monkeypatch.setattr(storage, "append_journal", flaky_append)
    await start_worker([journaled])
    run = await engine.trigger("fl-journaled")
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.status == "COMPLETED" and done.output == "done"
    assert len(outages) == 1  # the step ran again: its result was never journaled
    assert done.attempt_count == 1  # not a failed attempt: the database failed, not the task


INJECTED: dict[str, asyncio.Event] = {}
"""Storage methods made to raise once, each set when it has raised (filled by the test)."""


@task("fl-held")
async def held(payload: None) -> str:
    """Executes until the lease loop met its failure: the loop only looks while runs execute."""
    await asyncio.wait_for(INJECTED["lost_runs"].wait(), 10)
    return "held"


@task("fl-nap")
async def nap(payload: None) -> str:
    """Parks on a timer: only the timer loop wakes it."""
    await sleep(timedelta(milliseconds=50))
    return "rested"


async def test_a_worker_survives_an_unexpected_error_in_each_of_its_loops(
    engine: Engine, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a StorageError (a bug, a driver error that slipped through): the claim, timer and
    lease loops each log it with its traceback and go on, and so does the worker."""
    storage = engine.storage

    def fail_once(name: str) -> None:
        original = getattr(storage, name)
        raised = INJECTED[name] = asyncio.Event()

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if not raised.is_set():
                raised.set()
                raise RuntimeError(f"injected: {name} broke")
            return await original(*args, **kwargs)

        monkeypatch.setattr(storage, name, failing)

    INJECTED.clear()
    for name in ("claim_runs", "fire_due_timers", "lost_runs"):  # claim, timer, lease loop
        fail_once(name)
    with capture_logs() as events:
        await start_worker([held, nap])
        first = await engine.trigger("fl-held")
        assert (await engine.wait_for_run(first.id, timeout=15)).output == "held"
        later = await engine.trigger("fl-nap")  # after all three failures: claimed and woken
        assert (await engine.wait_for_run(later.id, timeout=15)).output == "rested"
    assert all(raised.is_set() for raised in INJECTED.values())
    failures = {e["event"]: e for e in events if e["event"].endswith("_loop_failed")}
    assert sorted(failures) == [
        "worker.claim_loop_failed",
        "worker.lease_loop_failed",
        "worker.timer_loop_failed",
    ]
    for event in failures.values():
        assert event["log_level"] == "error" and event["exc_info"] is True


ACTIVE: Counter[str] = Counter()
PEAK: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    """Each test (and each backend's run of it) counts for itself."""
    LEFTOVER["finished"] = 0
    STOPPED["after_sleep"] = 0
    ACTIVE.clear()
    PEAK.clear()


@task("fl-limited", queue=Queue("limited", concurrency_limit=2))
async def limited(payload: dict[str, str]) -> None:
    key = payload["tenant"]
    ACTIVE["all"] += 1
    ACTIVE[key] += 1
    PEAK["all"] = max(PEAK["all"], ACTIVE["all"])
    PEAK[key] = max(PEAK[key], ACTIVE[key])
    await asyncio.sleep(0.1)
    ACTIVE["all"] -= 1
    ACTIVE[key] -= 1


async def test_a_queue_limit_holds_across_workers(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([limited])
    await start_worker([limited])  # two claimers on one database
    runs = [await engine.trigger("fl-limited", {"tenant": "x"}) for _ in range(8)]
    for run in runs:
        await engine.wait_for_run(run.id, timeout=15)
    assert PEAK["all"] == 2


async def test_each_concurrency_key_gets_its_own_copy_of_the_limit(
    engine: Engine, start_worker: StartWorker
) -> None:
    PEAK.clear()
    await start_worker([limited])
    runs = [
        await engine.trigger("fl-limited", {"tenant": tenant}, concurrency_key=tenant)
        for tenant in ("a", "b") * 4
    ]
    for run in runs:
        await engine.wait_for_run(run.id, timeout=15)
    assert PEAK["a"] <= 2 and PEAK["b"] <= 2
    assert PEAK["all"] > 2  # the keys ran side by side
