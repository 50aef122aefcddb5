"""Workers record themselves and a heartbeat; a run's task without a live worker is named.

The heartbeat rides on the lease loop: while attempts run it is in the renewal's transaction,
while the worker idles it is written alone, once per third of a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re

import anyio
import pytest

from engine import (
    Engine,
    RunWaitTimeoutError,
    ValidationError,
    Worker,
    create_token,
    step,
    task,
    wait_for_token,
)
from engine.context import RunContext

from .conftest import StartWorker, wait_for_status

GATE: dict[str, asyncio.Event] = {}


@task("wk-held")
async def held(payload: None) -> str:
    await GATE["open"].wait()
    return "done"


@task("wk-approve")
async def approve(payload: dict[str, float]) -> object:
    token = await create_token(
        title=f"Refund {payload['amount']}",
        description="Plain text",
        context={"amount": payload["amount"]},
    )
    return (await wait_for_token(token)).output


async def test_a_worker_is_listed_with_its_running_attempts_and_stops_cleanly(
    engine: Engine, start_worker: StartWorker
) -> None:
    GATE["open"] = asyncio.Event()
    worker = await start_worker([held], concurrency=3, lease_seconds=0.3)
    [listed] = await engine.workers.list()
    assert (listed.id, listed.tasks) == (worker.id, ["wk-held"])
    assert (listed.concurrency, listed.lease_ms) == (3, 300)
    run = await engine.trigger("wk-held")
    await wait_for_status(engine, run.id, "EXECUTING")
    first = listed.heartbeat_at
    await asyncio.sleep(0.5)  # renewals every 0.1 s: the heartbeat moved with them
    [busy] = await engine.workers.list()
    assert busy.running == 1 and busy.heartbeat_at > first
    GATE["open"].set()
    await wait_for_status(engine, run.id, "COMPLETED")
    beat = (await engine.workers.list())[0].heartbeat_at
    await asyncio.sleep(0.5)  # idle: it still beats
    [idle] = await engine.workers.list()
    assert idle.running == 0 and idle.heartbeat_at > beat
    assert (await engine.workers.for_task("wk-held")).live_workers == [worker.id]

    worker.stop()
    for _ in range(100):
        if not await engine.workers.list():
            break
        await asyncio.sleep(0.05)
    assert await engine.workers.list() == []
    [stopped] = await engine.workers.list(include_gone=True)
    assert stopped.stopped_at is not None and not stopped.live


async def test_wait_for_run_says_when_no_live_worker_serves_the_task(
    engine: Engine, start_worker: StartWorker
) -> None:
    worker = await start_worker([held])
    worker.stop()
    for _ in range(100):
        if not await engine.workers.list():
            break
        await asyncio.sleep(0.05)
    run = await engine.trigger("wk-held")
    with pytest.raises(RunWaitTimeoutError) as raised:
        await engine.wait_for_run(run.id, timeout=0.1)
    assert str(raised.value).endswith(
        "is still QUEUED after 0.1 seconds: no live worker serves task 'wk-held'"
        " (last seen 0 s ago)"
    )
    assert await engine.workers.unserved(run) is not None


async def test_a_run_creates_a_token_with_details_that_its_journal_keeps(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([approve])
    run = await engine.trigger("wk-approve", {"amount": 19.99})
    await wait_for_status(engine, run.id, "WAITING")
    [token] = (await engine.tokens.list(status="WAITING")).data
    assert (token.title, token.description) == ("Refund 19.99", "Plain text")
    assert token.context == {"amount": 19.99}
    await engine.tokens.complete(token.id, {"approved": True})
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"approved": True}
    [created] = [e for e in await engine.runs.timeline(run.id) if e.kind == "create_token"]
    assert created.token is not None and created.token.context == {"amount": 19.99}


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"title": "x" * 201}, "title must be at most 200 characters long, got 201"),
        ({"description": "x" * 4001}, "description must be at most 4000 characters long, got 4001"),
        ({"context": ["amount"]}, "context must be a JSON object (a dict), got list"),
        ({"context": {"x": "y" * 20_000}}, "context must be at most 16384 bytes as JSON, got "),
        ({"context": {"x": object()}}, "context must be JSON-serialisable"),
        ({"title": 42}, "title must be a string, got int"),
    ],
)
async def test_token_details_are_bounded(
    engine: Engine, details: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        await engine.tokens.create(**details)  # type: ignore[arg-type]
    assert (await engine.tokens.list()).data == []


ENDED: dict[str, float] = {}
STOPPED: dict[str, asyncio.Event] = {}


@task("wk-stalled")
async def stalled_run(payload: None) -> str:
    try:
        await asyncio.Event().wait()  # runs until something stops it
    finally:
        ENDED["at"] = asyncio.get_running_loop().time()
        STOPPED["event"].set()
    return "never"


async def test_an_attempt_stops_before_its_lease_runs_out_while_the_database_stalls(
    engine: Engine, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a cut link the lease loop's calls hang (for minutes, until TCP gives up): the
    attempt must be stopped on time all the same, before another worker may take its run.
    Before the expiry loop had a task of its own, it was checked only between those calls
    (scripts/partitions.py found attempts of one run overlapping by up to 1.6 s)."""
    ENDED.clear()
    STOPPED["event"] = asyncio.Event()
    await start_worker([stalled_run], lease_seconds=1.0)
    run = await engine.trigger("wk-stalled")
    await wait_for_status(engine, run.id, "EXECUTING")
    loop = asyncio.get_running_loop()
    calls: list[float] = []

    async def cut_off(*args: object, **kwargs: object) -> None:
        calls.append(loop.time())
        await asyncio.Event().wait()  # no answer, ever

    # the lease loop's calls, from the next one on (the test's own reads are not cut off)
    monkeypatch.setattr(engine.storage, "serving", cut_off)
    monkeypatch.setattr(engine.storage, "renew_leases", cut_off)
    cut = loop.time()  # the last renewal that reached the database was before this
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(STOPPED["event"].wait(), 5)
    assert calls, "the lease loop was never cut off: the test proved nothing"
    assert "at" in ENDED, "the attempt ran on past its lease"
    assert ENDED["at"] < cut + 1.0  # before the lease could run out in the database


RAN: list[tuple[str, int]] = []


def ran(name: str) -> None:
    RAN.append((name, RunContext.current().run.epoch))


@task("wk-woken")
async def woken(payload: None) -> str:
    await step("before", ran, "before")
    GATE["at"].set()
    await GATE["woken"].wait()  # the process is paused here, past its lease
    await step("after", ran, "after")
    return "done"


async def test_an_attempt_woken_past_its_lease_begins_no_new_step(
    engine: Engine, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused process (SIGSTOP, a frozen VM) wakes with attempts whose runs another worker
    may have taken: before its expiry loop's next turn, an attempt must not begin a step's
    body beside the new owner (scripts/partitions.py saw journaled steps run again so)."""
    RAN.clear()
    GATE["woken"], GATE["at"] = asyncio.Event(), asyncio.Event()

    async def not_yet(self: Worker) -> None:  # the expiry loop has not had its turn yet
        await asyncio.Event().wait()

    monkeypatch.setattr(Worker, "_expiry_loop", not_yet)
    worker = await start_worker([woken], lease_seconds=30)
    run = await engine.trigger("wk-woken")
    await asyncio.wait_for(GATE["at"].wait(), 10)
    worker._attempts_by_run[run.id].lease_until = anyio.current_time() - 1  # slept past it
    GATE["woken"].set()
    await wait_for_status(engine, run.id, "COMPLETED")  # the next attempt (its lease held)
    [(_, first), (after, later)] = RAN
    assert after == "after" and later > first  # not begun by the attempt that slept


async def test_a_running_worker_keeps_the_heap_it_started_with_out_of_full_collections(
    engine: Engine,
) -> None:
    """``gc.freeze`` while workers run (the modules, tasks and engine they started with live
    as long as they do), undone when the last one stops; a heap the application froze
    itself stays frozen."""
    assert gc.get_freeze_count() == 0  # nothing of the suite freezes it between tests

    async def running(*workers: Worker) -> list[asyncio.Task[None]]:
        runners = [asyncio.create_task(w.run()) for w in workers]
        await asyncio.wait_for(asyncio.gather(*(w.started.wait() for w in workers)), 5)
        return runners

    first, second = Worker(engine, {held.id: held}), Worker(engine, {held.id: held})
    [one] = await running(first)
    assert gc.get_freeze_count() > 1000  # the suite's modules, at least
    [two] = await running(second)
    first.stop()
    await asyncio.wait_for(one, 10)
    assert gc.get_freeze_count() > 1000  # the second still runs (some frozen objects died)
    second.stop()
    await asyncio.wait_for(two, 10)
    assert gc.get_freeze_count() == 0

    gc.freeze()  # the application's own choice
    try:
        third = Worker(engine, {held.id: held})
        [three] = await running(third)
        third.stop()
        await asyncio.wait_for(three, 10)
        assert gc.get_freeze_count() > 1000  # not unfrozen by the worker
    finally:
        gc.unfreeze()
