"""Schedules (``engine.schedules``, ``@task(cron=...)``): each tick makes exactly one run.

On both databases: two workers (each on an engine of its own, as two processes would be)
and a schedule ticking every minute over ten minutes of a test clock make one run per tick,
with both engines firing every tick at once besides their workers' own timer loops; the
same with a real clock and a schedule every second; ticks missed while no worker was up
make one run (or one each, ``catch_up="all"``); declared schedules follow their code; the
payload of a tick's run; changing, deactivating and deleting schedules, and bad input
refused with nothing changed. Then the REST routes, the HTTP transport, the commands and
the schedules page. Daylight saving time is SQLite's (it is the cron library's, not the
database's): through ``TaskTestEnvironment``, whose clock stops at each tick.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import Engine, Worker, task
from engine.clock import to_ms
from engine.models import RunStatus, ScheduledPayload
from engine.settings import Settings
from engine.storage.schedules import FIRE_BATCH
from engine.testing import ManualClock

YEARS = 10 * 365 * 86400
"""The lease of the workers on a test clock: moving the clock must not make an attempt look
lost."""
MINUTE = timedelta(minutes=1)


@task("sched-tick")
async def tick(payload: dict[str, Any]) -> str:
    return str(payload["timestamp"])


@task("sched-typed")
async def typed(payload: ScheduledPayload) -> dict[str, Any]:
    return {
        "timestamp": payload.timestamp.isoformat(),
        "upcoming": len(payload.upcoming),
        "mine": payload.payload,
    }


@dataclass
class Clocked:
    """Two engines on one database and one test clock, each with its worker once started."""

    clock: ManualClock
    engines: list[Engine]
    workers: list[tuple[Worker, asyncio.Task[None]]]

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    async def start_workers(self, *tasks: Any, poll_seconds: float = 0.05) -> None:
        for engine in self.engines:
            worker = Worker(engine, {t.id: t for t in tasks}, poll_seconds=poll_seconds)
            self.workers.append((worker, asyncio.create_task(worker.run())))
            await asyncio.wait_for(worker.started.wait(), 10)

    async def stop_workers(self) -> None:
        for worker, running in self.workers:
            worker.stop(graceful=True)
            await asyncio.wait_for(running, 10)
        self.workers.clear()

    def move_to(self, moment_ms: int) -> None:
        self.clock.advance(timedelta(milliseconds=moment_ms - self.clock.now_ms()))

    async def fire_at_once(self, task_id: str) -> int:
        """Both engines fire the task's due schedules at the same moment; the runs made."""
        fired = await asyncio.gather(
            *(e.storage.fire_due_schedules([task_id], FIRE_BATCH) for e in self.engines)
        )
        return sum(f.runs for f in fired)


@pytest.fixture
async def clocked(db_url: str) -> AsyncIterator[Clocked]:
    clock = ManualClock()
    settings = Settings(
        database_url=db_url,
        api_url=None,
        lease_seconds=YEARS,
        signing_secret=secrets.token_hex(32),
    )
    engines = [Engine(settings=settings, clock=clock) for _ in range(2)]
    for engine in engines:
        await engine.open()
    opened = Clocked(clock, engines, [])
    try:
        yield opened
    finally:
        for worker, running in opened.workers:
            worker.stop(graceful=False)
            await asyncio.wait_for(running, 10)
        for engine in engines:
            await engine.close()


async def runs_of(engine: Engine, task_id: str) -> list[Any]:
    """Every run of the task, oldest first."""
    found: list[Any] = []
    after = None
    while True:
        page = await engine.runs.list(task=task_id, limit=100, after=after)
        found += page.data
        if page.next_cursor is None:
            return found[::-1]
        after = page.next_cursor


async def until(condition: Any, timeout: float = 20.0) -> None:
    """Poll ``condition`` (async) until it is true (fails the test after ``timeout`` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {condition.__name__}")
        await asyncio.sleep(0.02)


def timestamps(runs: list[Any]) -> list[str]:
    return [run.payload["timestamp"] for run in runs]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# exactly one run per tick --------------------------------------------------------------------


async def test_two_workers_make_one_run_per_tick_over_ten_minutes_of_the_test_clock(
    clocked: Clocked,
) -> None:
    schedule = await clocked.engine.schedules.create("sched-tick", cron="* * * * *")
    await clocked.start_workers(tick)
    assert schedule.next_run is not None
    first = to_ms(schedule.next_run)
    ticks = [first + n * 60_000 for n in range(10)]
    for n, moment in enumerate(ticks, start=1):
        clocked.move_to(moment)
        await clocked.fire_at_once("sched-tick")  # besides the workers' own timer loops

        async def made_and_done(made: int = n) -> bool:
            runs = await runs_of(clocked.engine, "sched-tick")
            return len(runs) >= made and all(r.status is RunStatus.COMPLETED for r in runs)

        await until(made_and_done)
    await clocked.stop_workers()
    for engine in clocked.engines:  # a last firing finds nothing due
        assert (await engine.storage.fire_due_schedules(["sched-tick"], FIRE_BATCH)).runs == 0

    runs = await runs_of(clocked.engine, "sched-tick")
    assert timestamps(runs) == [iso(t) for t in ticks]
    assert [r.output for r in runs] == [iso(t) for t in ticks]
    assert [r.idempotency_key for r in runs] == [f"{schedule.id}:{t}" for t in ticks]
    assert {r.payload["lastTimestamp"] for r in runs[1:]} == {iso(t) for t in ticks[:-1]}
    assert "lastTimestamp" not in runs[0].payload  # the schedule's first run
    after = await clocked.engine.schedules.retrieve(schedule.id)
    assert after.last_run is not None and to_ms(after.last_run) == ticks[-1]
    assert after.next_run is not None and to_ms(after.next_run) == ticks[-1] + 60_000


async def test_two_workers_on_the_real_clock_make_one_run_per_second(db_url: str) -> None:
    """Six fields, seconds first (cronsim's). ``catch_up="all"``: a tick that a busy machine
    fires late still gets its run, so every second from the first run to the last has one."""
    async with Engine(db_url) as first, Engine(db_url) as second:
        schedule = await first.schedules.create("sched-tick", cron="* * * * * *", catch_up="all")
        workers = [Worker(e, {"sched-tick": tick}, poll_seconds=0.2) for e in (first, second)]
        running = [asyncio.create_task(w.run()) for w in workers]

        async def three_done() -> bool:
            runs = await runs_of(first, "sched-tick")
            return sum(r.status is RunStatus.COMPLETED for r in runs) >= 3

        await until(three_done)
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*running), 10)
        runs = await runs_of(first, "sched-tick")
        ticks = sorted(int(r.idempotency_key.split(":")[1]) for r in runs)
        assert ticks == list(range(ticks[0], ticks[0] + 1000 * len(ticks), 1000))
        assert len({r.idempotency_key for r in runs}) == len(runs) >= 3
        assert all(r.idempotency_key.startswith(f"{schedule.id}:") for r in runs)


# downtime ----------------------------------------------------------------------------------


@pytest.mark.parametrize("catch_up", ["last", "all"])
async def test_ticks_missed_while_no_worker_was_up_make_one_run_or_one_each(
    clocked: Clocked, catch_up: str
) -> None:
    schedule = await clocked.engine.schedules.create(
        "sched-tick", cron="* * * * *", catch_up=catch_up
    )
    assert schedule.next_run is not None
    first = to_ms(schedule.next_run)
    missed = [first + n * 60_000 for n in range(5)]
    clocked.move_to(missed[-1] + 30_000)  # five ticks passed with no worker up
    await clocked.start_workers(tick)

    caught_up = missed[-1:] if catch_up == "last" else missed

    async def caught_up_and_done() -> bool:
        runs = await runs_of(clocked.engine, "sched-tick")
        done = all(r.status is RunStatus.COMPLETED for r in runs)
        return len(runs) >= len(caught_up) and done

    await until(caught_up_and_done)
    assert await clocked.fire_at_once("sched-tick") == 0
    runs = await runs_of(clocked.engine, "sched-tick")
    assert timestamps(runs) == [iso(t) for t in caught_up]
    if catch_up == "all":  # each run names the tick before it
        assert [r.payload.get("lastTimestamp") for r in runs] == [None, *map(iso, missed[:-1])]

    clocked.move_to(missed[-1] + 60_000)  # up again: the next tick runs as usual
    assert await clocked.fire_at_once("sched-tick") in (0, 1)  # or a worker's loop was first

    async def next_one() -> bool:
        return len(await runs_of(clocked.engine, "sched-tick")) == len(caught_up) + 1

    await until(next_one)
    latest = (await runs_of(clocked.engine, "sched-tick"))[-1]
    assert latest.payload["timestamp"] == iso(missed[-1] + 60_000)
    assert latest.payload["lastTimestamp"] == iso(missed[-1])


async def test_catching_up_on_all_goes_on_past_one_firing_s_limit(clocked: Clocked) -> None:
    """150 missed ticks: the firing makes the first 100, says more are due, and the next
    one makes the other 50 (a worker fires again at once while more are due)."""
    schedule = await clocked.engine.schedules.create(
        "sched-tick", cron="* * * * * *", catch_up="all"
    )
    assert schedule.next_run is not None
    first = to_ms(schedule.next_run)
    clocked.move_to(first + 149_000)
    storage = clocked.engine.storage
    fired = await storage.fire_due_schedules(["sched-tick"], FIRE_BATCH)
    assert (fired.runs, fired.more_due) == (100, True)
    fired = await storage.fire_due_schedules(["sched-tick"], FIRE_BATCH)
    assert (fired.runs, fired.more_due, fired.next_tick_ms) == (50, False, first + 150_000)
    runs = await runs_of(clocked.engine, "sched-tick")
    assert timestamps(runs) == [iso(first + n * 1000) for n in range(150)]
