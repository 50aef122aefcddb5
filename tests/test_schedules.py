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
from zoneinfo import ZoneInfo

import pytest

from engine import (
    ConfigurationError,
    Engine,
    TaskNotFoundError,
    ValidationError,
    Worker,
    task,
)
from engine.clock import to_ms
from engine.cron import Cron
from engine.errors import ScheduleNotFoundError
from engine.models import CatchUp, RunStatus, ScheduledPayload, TaskInfo
from engine.registry import TaskDefinition
from engine.settings import Settings
from engine.storage.schedules import FIRE_BATCH
from engine.testing import ManualClock, TaskTestEnvironment

from .api.conftest import AUTH, api_client
from .test_cli import assert_one_line_error, invoke, ok_json, register
from .test_remote import KEY as SERVER_KEY
from .test_remote import server  # noqa: F401 - the fixture
from .ui.conftest import KEY as UI_KEY
from .ui.conftest import client_for

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


async def test_a_worker_sleeping_past_the_poll_wakes_for_a_schedule_made_elsewhere(
    db_url: str,
) -> None:
    """The worker polls once a minute; a schedule made by another engine (another process)
    ticks within seconds: its first tick is a deadline the worker is told of (PostgreSQL: a
    NOTIFY; SQLite: the file changed), which it sleeps until instead of the poll."""
    async with Engine(db_url) as worker_engine, Engine(db_url) as elsewhere:
        worker = Worker(worker_engine, {"sched-tick": tick}, poll_seconds=60.0)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 10)
        await asyncio.sleep(0.2)  # its timer loop is asleep, until the poll
        schedule = await elsewhere.schedules.create("sched-tick", cron="* * * * * *")

        async def ticked() -> bool:
            runs = await runs_of(elsewhere, "sched-tick")
            return any(r.status is RunStatus.COMPLETED for r in runs)

        await until(ticked, timeout=10.0)
        await elsewhere.schedules.deactivate(schedule.id)
        worker.stop()
        await asyncio.wait_for(running, 10)


# declared schedules ---------------------------------------------------------------------------


def declared(cron: str | None, timezone: str | None = None, catch_up: str = "last") -> Any:
    """The task ``sched-declared`` as one version of its code declares it."""

    async def body(payload: Any) -> Any:
        return payload

    return TaskDefinition(
        "sched-declared",
        body,
        cron=None if cron is None else Cron.of(cron, timezone),
        catch_up=CatchUp(catch_up),
    )


async def test_a_declared_schedule_follows_its_code_as_workers_start(clocked: Clocked) -> None:
    engine = clocked.engine

    async def start_and_stop(definition: Any) -> None:
        worker = Worker(engine, {definition.id: definition}, poll_seconds=0.05)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 10)
        worker.stop()
        await asyncio.wait_for(running, 10)

    await start_and_stop(declared("0 9 * * MON-FRI", "Europe/Berlin"))
    [made] = (await engine.schedules.list(task="sched-declared")).data
    assert (made.type, made.cron, made.timezone) == (
        "DECLARATIVE",
        "0 9 * * MON-FRI",
        "Europe/Berlin",
    )
    assert made.deduplication_key == "declared:sched-declared" and made.active
    assert made.generator.description == "At 09:00 on Monday through Friday"
    await start_and_stop(declared("0 9 * * MON-FRI", "Europe/Berlin"))  # a restart: as it was
    assert (await engine.schedules.list()).data == [made]

    for change in ({"cron": "0 10 * * *"}, {"timezone": "UTC"}, {"payload": {"n": 1}}):
        with pytest.raises(ValidationError, match="declared by task 'sched-declared'"):
            await engine.schedules.update(made.id, **change)
    assert await engine.schedules.retrieve(made.id) == made
    stopped = await engine.schedules.deactivate(made.id)  # an incident switch still works
    assert not stopped.active and stopped.next_run is None and stopped.upcoming == []
    await start_and_stop(declared("0 9 * * MON-FRI", "Europe/Berlin"))
    assert not (await engine.schedules.retrieve(made.id)).active  # a restart leaves it off
    await engine.schedules.activate(made.id)

    await start_and_stop(declared("30 7 * * *", catch_up="all"))  # the code changed
    changed = await engine.schedules.retrieve(made.id)  # the same schedule, its id kept
    assert (changed.cron, changed.timezone, changed.catch_up) == ("30 7 * * *", "UTC", "all")
    assert changed.next_run is not None and changed.next_run.strftime("%H:%M") == "07:30"

    await start_and_stop(declared(None))  # cron= removed from the task
    with pytest.raises(ScheduleNotFoundError):
        await engine.schedules.retrieve(made.id)
    assert (await engine.schedules.list()).data == []

    # a task gone from the code: no worker serves it to delete its schedule, so one may
    await start_and_stop(declared("0 9 * * *"))
    [stale] = (await engine.schedules.list()).data
    await engine.schedules.delete(stale.id)
    assert (await engine.schedules.list()).data == []
    await start_and_stop(declared("0 9 * * *"))  # declared still: back, a new one
    [back] = (await engine.schedules.list()).data
    assert back.id != stale.id and back.cron == "0 9 * * *"


def test_a_declared_schedule_is_checked_where_the_task_is_defined() -> None:
    async def body(payload: Any) -> Any:
        return payload

    with pytest.raises(ValidationError, match="bad minute"):
        task("sched-bad-cron", cron="61 * * * *")(body)
    with pytest.raises(ValidationError, match="unknown timezone 'Mars/Olympus'"):
        task("sched-bad-zone", cron="* * * * *", timezone="Mars/Olympus")(body)
    with pytest.raises(ConfigurationError, match="give both"):
        task("sched-zone-alone", timezone="Europe/Berlin")(body)
    with pytest.raises(ValidationError, match="catch_up must be 'last' or 'all', not 'some'"):
        task("sched-bad-catch-up", cron="* * * * *", catch_up="some")(body)


# what a tick's run receives -----------------------------------------------------------------


async def test_a_tick_s_run_receives_the_scheduled_payload_and_the_schedule_s_own(
    clocked: Clocked,
) -> None:
    made = await clocked.engine.schedules.create(
        "sched-typed",
        cron="0 * * * *",
        timezone="Asia/Kolkata",  # +05:30: on the half hour in UTC
        payload={"report": "hourly"},
        external_id="user_42",
    )
    await clocked.start_workers(typed)
    assert made.next_run is not None and made.next_run.minute == 30
    clocked.move_to(to_ms(made.next_run))
    await clocked.fire_at_once("sched-typed")

    async def done() -> bool:
        runs = await runs_of(clocked.engine, "sched-typed")
        return bool(runs) and runs[0].status is RunStatus.COMPLETED

    await until(done)
    [run] = await runs_of(clocked.engine, "sched-typed")
    ticked = to_ms(made.next_run)
    assert run.payload == {
        "type": "IMPERATIVE",
        "timestamp": iso(ticked),
        "timezone": "Asia/Kolkata",
        "scheduleId": made.id,
        "externalId": "user_42",
        "upcoming": [iso(ticked + n * 3_600_000) for n in range(1, 6)],
        "payload": {"report": "hourly"},
    }
    assert run.output == {
        "timestamp": made.next_run.isoformat(),
        "upcoming": 5,
        "mine": {"report": "hourly"},
    }


# changing schedules, and what is refused -------------------------------------------------------


async def test_schedules_are_created_listed_changed_switched_and_deleted(
    clocked: Clocked,
) -> None:
    engine = clocked.engine
    await engine.storage.register_tasks([TaskInfo("sched-other", None), TaskInfo("sched-third")])
    made = await engine.schedules.create(
        "sched-tick", cron="*/15  9-17 * * MON-FRI", timezone="Europe/Berlin"
    )
    assert (made.task, made.type, made.cron, made.active) == (
        "sched-tick",
        "IMPERATIVE",
        "*/15 9-17 * * MON-FRI",
        True,
    )
    assert made.catch_up == "last" and made.last_run is None and made.payload is None
    assert len(made.upcoming) == 5 and made.upcoming[0] == made.next_run
    assert all(t.astimezone(ZoneInfo("Europe/Berlin")).weekday() < 5 for t in made.upcoming)
    assert await engine.schedules.retrieve(made.id) == made

    others = [await engine.schedules.create("sched-third", cron=f"{n} * * * *") for n in range(3)]
    page = await engine.schedules.list(per_page=2)
    assert [s.id for s in page.data] == [others[2].id, others[1].id]  # newest first
    assert (page.pagination.current_page, page.pagination.total_pages) == (1, 2)
    assert page.pagination.count == 4
    last = await engine.schedules.list(per_page=2, page=2)
    assert [s.id for s in last.data] == [others[0].id, made.id]
    assert [s.id for s in (await engine.schedules.list(task="sched-tick")).data] == [made.id]

    moved = await engine.schedules.update(made.id, cron="0 12 * * *", payload={"n": 1})
    assert (moved.cron, moved.timezone, moved.payload) == ("0 12 * * *", "Europe/Berlin", {"n": 1})
    assert moved.next_run is not None
    assert moved.next_run.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "12:00"
    assert moved.updated_at >= made.updated_at and moved.created_at == made.created_at
    rezoned = await engine.schedules.update(
        made.id, timezone="America/New_York", external_id="acme", catch_up="all", task="sched-other"
    )
    assert rezoned.next_run is not None
    assert rezoned.next_run.astimezone(ZoneInfo("America/New_York")).hour == 12
    assert (rezoned.external_id, rezoned.catch_up, rezoned.task) == ("acme", "all", "sched-other")
    assert rezoned.payload == {"n": 1}  # left as it was

    off = await engine.schedules.deactivate(made.id)
    assert (off.active, off.next_run, off.upcoming) == (False, None, [])
    assert await engine.schedules.deactivate(made.id) == off  # twice: nothing more
    clocked.clock.advance(timedelta(days=3))  # inactive: these days' ticks make no run
    assert (await engine.storage.fire_due_schedules(["sched-other"], FIRE_BATCH)).runs == 0
    on = await engine.schedules.activate(made.id)
    assert on.active and on.next_run is not None
    assert to_ms(on.next_run) > clocked.clock.now_ms()  # from now on, no catching up
    assert (await engine.storage.fire_due_schedules(["sched-other"], FIRE_BATCH)).runs == 0

    await engine.schedules.delete(made.id)
    with pytest.raises(ScheduleNotFoundError, match=made.id):
        await engine.schedules.retrieve(made.id)
    assert (await engine.schedules.list()).pagination.count == 3


async def test_a_deduplication_key_makes_creating_again_an_update(clocked: Clocked) -> None:
    engine = clocked.engine
    first = await engine.schedules.create(
        "sched-tick", cron="0 8 * * *", external_id="user_1", deduplication_key="user_1-daily"
    )
    again = await engine.schedules.create(
        "sched-tick", cron="0 20 * * *", external_id="user_1", deduplication_key="user_1-daily"
    )
    assert again.id == first.id and again.cron == "0 20 * * *"
    assert again.deduplication_key == "user_1-daily"
    assert again.next_run is not None
    clocked.move_to(to_ms(again.next_run) + 60_000)  # its tick passed while no worker was up
    same = await engine.schedules.create(  # made again at a start, as it was
        "sched-tick", cron="0 20 * * *", external_id="user_1", deduplication_key="user_1-daily"
    )
    assert same.next_run == again.next_run  # still due: the missed tick is not lost
    assert (await engine.storage.fire_due_schedules(["sched-tick"], FIRE_BATCH)).runs == 1
    assert (await engine.schedules.list()).pagination.count == 1
    other = await engine.schedules.create("sched-tick", cron="0 20 * * *")
    assert other.id != first.id and other.deduplication_key is None


async def test_bad_input_is_refused_by_name_and_changes_nothing(clocked: Clocked) -> None:
    engine = clocked.engine
    await engine.storage.register_tasks([TaskInfo("sched-tick", None)])
    made = await engine.schedules.create("sched-tick", cron="0 9 * * *")
    create = engine.schedules.create
    refusals: list[tuple[Any, type[Exception], str]] = [
        (
            create("sched-tick", cron="61 * * * *"),
            ValidationError,
            "invalid cron '61 * * * *': bad minute",
        ),
        (create("sched-tick", cron="* * * *"), ValidationError, "has 4 fields"),
        (create("sched-tick", cron=""), ValidationError, "cron must be a cron expression"),
        (
            create("sched-tick", cron="0 0 * * 1L", timezone="Moon/Base"),
            ValidationError,
            "unknown timezone 'Moon/Base'",
        ),
        (create("sched-tick", cron="* * */20 * 1L"), ValidationError, "never fires"),
        (
            create("sched-tick", cron="* * * * *", catch_up="most"),
            ValidationError,
            "catch_up must be",
        ),
        (
            create("sched-tick", cron="* * * * *", deduplication_key="declared:x"),
            ValidationError,
            "kept for the schedules tasks declare",
        ),
        (
            create("sched-tick", cron="* * * * *", payload={"at": object()}),
            ValidationError,
            "payload",
        ),
        (create("sched-nope", cron="* * * * *"), TaskNotFoundError, "unknown task 'sched-nope'"),
        (engine.schedules.update(made.id, cron="0 25 * * *"), ValidationError, "bad hour"),
        (
            engine.schedules.update(made.id, timezone="Europe/Atlantis"),
            ValidationError,
            "unknown timezone",
        ),
        (engine.schedules.update(made.id, task="sched-nope"), TaskNotFoundError, "sched-nope"),
        (engine.schedules.list(page=0), ValidationError, "page must be"),
        (
            engine.schedules.list(per_page=101),
            ValidationError,
            "per_page must be between 1 and 100",
        ),
    ]
    for call in ("retrieve", "delete", "activate", "deactivate"):
        refusals.append(
            (getattr(engine.schedules, call)("sched_nope"), ScheduleNotFoundError, "sched_nope")
        )
    refusals.append(
        (
            engine.schedules.update("sched_nope", cron="* * * * *"),
            ScheduleNotFoundError,
            "sched_nope",
        )
    )
    for refused, error, words in refusals:
        with pytest.raises(error) as caught:
            await refused
        assert words in str(caught.value)
    assert (await engine.schedules.list()).data == [made]


# the test clock, and daylight saving time -----------------------------------------------------


def utc_ms(text: str) -> int:
    return to_ms(datetime.fromisoformat(text))


async def test_the_test_clock_stops_at_each_tick_on_its_way() -> None:
    async with TaskTestEnvironment([tick]) as env:
        made = await env.engine.schedules.create("sched-tick", cron="* * * * *")
        assert made.next_run is not None
        await env.advance("10m")  # one jump of the clock, ten ticks on the way
        runs = await runs_of(env.engine, "sched-tick")
        assert [r.status for r in runs] == [RunStatus.COMPLETED] * 10
        assert timestamps(runs) == [iso(to_ms(made.next_run) + n * 60_000) for n in range(10)]
        assert all(
            r.started_at is not None and r.payload["timestamp"] <= iso(to_ms(r.started_at))
            for r in runs
        )


async def test_half_past_two_in_berlin_runs_once_on_both_days_the_clocks_change() -> None:
    """cronsim's rules (Debian cron's): the 02:30 skipped when the clocks spring forward runs
    at 03:00; the 02:30 that happens twice when they fall back runs once, the first time."""
    async with TaskTestEnvironment([tick]) as env:
        move = env.clock.advance
        move(timedelta(milliseconds=utc_ms("2027-03-27T00:00:00+00:00") - env.clock.now_ms()))
        made = await env.engine.schedules.create(
            "sched-tick", cron="30 2 * * *", timezone="Europe/Berlin"
        )
        await env.advance("3d")  # Sunday, March 28th 2027: 02:00 becomes 03:00
        spring = [
            "2027-03-27T01:30:00.000Z",  # 02:30 CET
            "2027-03-28T01:00:00.000Z",  # 03:00 CEST: the first minute after the gap
            "2027-03-29T00:30:00.000Z",  # 02:30 CEST
        ]
        assert timestamps(await runs_of(env.engine, "sched-tick")) == spring

        await env.engine.schedules.deactivate(made.id)  # months pass, no tick
        move(timedelta(milliseconds=utc_ms("2027-10-30T00:00:00+00:00") - env.clock.now_ms()))
        await env.engine.schedules.activate(made.id)
        await env.advance("3d")  # Sunday, October 31st: 03:00 becomes 02:00 again
        autumn = [
            "2027-10-30T00:30:00.000Z",  # 02:30 CEST
            "2027-10-31T00:30:00.000Z",  # the first 02:30 (CEST); not the second (CET)
            "2027-11-01T01:30:00.000Z",  # 02:30 CET
        ]
        assert timestamps(await runs_of(env.engine, "sched-tick")) == spring + autumn


def test_every_minute_follows_the_real_time_across_the_clock_changes() -> None:
    """A ``*`` in the minute field: no tick in the skipped hour, two in the repeated one."""
    every_half_hour = Cron.of("*/30 * * * *", "Europe/Berlin")
    spring = every_half_hour.upcoming(utc_ms("2027-03-28T00:30:00+00:00"), 3)
    assert [iso(t) for t in spring] == [  # 01:30 CET, then 03:00 and 03:30 CEST
        "2027-03-28T00:30:00.000Z",
        "2027-03-28T01:00:00.000Z",
        "2027-03-28T01:30:00.000Z",
    ]
    autumn = every_half_hour.upcoming(utc_ms("2027-10-31T00:00:00+00:00"), 4)
    assert [iso(t) for t in autumn] == [  # 02:00 and 02:30 CEST, then CET again
        "2027-10-31T00:00:00.000Z",
        "2027-10-31T00:30:00.000Z",
        "2027-10-31T01:00:00.000Z",
        "2027-10-31T01:30:00.000Z",
    ]


# the REST API, the HTTP transport, the commands, the page -------------------------------------

S = "/api/v1/schedules"


async def test_the_rest_routes_speak_trigger_dev_s_schedules(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo("sched-tick", None), TaskInfo("sched-other")])
    async with api_client(engine) as api:
        made = await api.post(
            S,
            headers=AUTH,
            json={
                "task": "sched-tick",
                "cron": "0 9 * * MON-FRI",
                "timezone": "Europe/Berlin",
                "externalId": "user_7",
                "deduplicationKey": "user_7-mornings",
                "payload": {"plan": "pro"},
            },
        )
        assert made.status_code == 200, made.text
        body = made.json()
        assert body["id"].startswith("sched_") and body["task"] == "sched-tick"
        assert (body["type"], body["active"], body["timezone"]) == (
            "IMPERATIVE",
            True,
            "Europe/Berlin",
        )
        assert body["generator"] == {
            "type": "CRON",
            "expression": "0 9 * * MON-FRI",
            "description": "At 09:00 on Monday through Friday",
        }
        assert (body["externalId"], body["deduplicationKey"]) == ("user_7", "user_7-mornings")
        assert body["nextRun"] == body["upcoming"][0] and len(body["upcoming"]) == 5
        assert body["environments"] == [{"id": "waitpoint", "type": "PRODUCTION"}]
        assert (body["payload"], body["catchUp"]) == ({"plan": "pro"}, "last")
        path = f"{S}/{body['id']}"
        assert (await api.get(path, headers=AUTH)).json() == body

        listed = (await api.get(S, headers=AUTH, params={"perPage": 10})).json()
        assert listed == {
            "data": [body],
            "pagination": {"currentPage": 1, "totalPages": 1, "count": 1},
        }
        assert (await api.get(S, headers=AUTH, params={"task": "sched-other"})).json()["data"] == []

        changed = await api.put(
            path, headers=AUTH, json={"task": "sched-tick", "cron": "0 10 * * *"}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["generator"]["expression"] == "0 10 * * *"
        assert changed.json()["timezone"] == "Europe/Berlin"  # not given: kept
        off = await api.post(f"{path}/deactivate", headers=AUTH)
        assert off.json()["active"] is False and "nextRun" not in off.json()
        on = await api.post(f"{path}/activate", headers=AUTH)
        assert on.json()["active"] is True and "nextRun" in on.json()
        zones = (await api.get("/api/v1/timezones", headers=AUTH)).json()["timezones"]
        assert "Europe/Berlin" in zones and "UTC" in zones
        no_utc = await api.get("/api/v1/timezones", headers=AUTH, params={"excludeUtc": "true"})
        assert "UTC" not in no_utc.json()["timezones"]

        refused = {
            "bad cron": await api.post(
                S, headers=AUTH, json={"task": "sched-tick", "cron": "* * 32 * *"}
            ),
            "bad zone": await api.post(
                S,
                headers=AUTH,
                json={"task": "sched-tick", "cron": "* * * * *", "timezone": "Narnia"},
            ),
            "no cron": await api.post(S, headers=AUTH, json={"task": "sched-tick"}),
            "misspelt": await api.post(
                S, headers=AUTH, json={"task": "sched-tick", "cron": "* * * * *", "timeZone": "UTC"}
            ),
            "key on update": await api.put(path, headers=AUTH, json={"deduplicationKey": "x"}),
            "bad page": await api.get(S, headers=AUTH, params={"page": 0}),
        }
        for what, answer in refused.items():
            assert answer.status_code in (400, 422), (what, answer.text)
        assert "bad day-of-month" in refused["bad cron"].json()["error"]
        assert "unknown timezone 'Narnia'" in refused["bad zone"].json()["error"]
        assert refused["no cron"].json()["error"] == "cron: required to create a schedule"
        assert "unknown field 'timeZone'" in refused["misspelt"].json()["error"]
        assert "unknown field 'deduplicationKey'" in refused["key on update"].json()["error"]
        unknown_task = await api.post(S, headers=AUTH, json={"task": "nope", "cron": "* * * * *"})
        assert unknown_task.status_code == 404 and unknown_task.json()["error"] == "Task not found"
        for method, where in (
            ("GET", f"{S}/sched_nope"),
            ("PUT", f"{S}/sched_nope"),
            ("DELETE", f"{S}/sched_nope"),
            ("POST", f"{S}/sched_nope/activate"),
        ):
            answer = await api.request(
                method, where, headers=AUTH, json={} if method == "PUT" else None
            )
            assert answer.status_code == 404 and answer.json()["error"] == "Schedule not found"
        assert (await api.get(S)).status_code == 401
        assert (await api.get(S, headers=AUTH)).json()["pagination"]["count"] == 1

        gone = await api.delete(path, headers=AUTH)
        assert gone.json() == {"id": body["id"]}
        assert (await api.get(path, headers=AUTH)).status_code == 404


async def test_the_http_transport_schedules_like_the_local_one(
    server: str,  # noqa: F811
) -> None:
    """Against ``waitpoint dev``: a schedule made over HTTP ticks on the server's worker."""
    async with Engine(server, api_key=SERVER_KEY) as engine:
        made = await engine.schedules.create(
            "remote-flow", cron="* * * * * *", payload={"via": "http"}, catch_up="all"
        )
        assert made.cron == "* * * * * *" and made.payload == {"via": "http"}
        assert await engine.schedules.retrieve(made.id) == made

        async def ticked() -> bool:
            return bool((await engine.runs.list(task="remote-flow")).data)

        await until(ticked)
        off = await engine.schedules.deactivate(made.id)
        assert not off.active
        [run, *_] = (await engine.runs.list(task="remote-flow")).data
        assert run.payload["scheduleId"] == made.id and run.payload["payload"] == {"via": "http"}
        moved = await engine.schedules.update(made.id, cron="0 6 * * *", timezone="Asia/Tokyo")
        assert (moved.cron, moved.timezone) == ("0 6 * * *", "Asia/Tokyo")
        assert (await engine.schedules.list(task="remote-flow")).data == [moved]
        assert "Asia/Tokyo" in await engine.schedules.timezones()
        with pytest.raises(ScheduleNotFoundError):
            await engine.schedules.retrieve("sched_nope")
        with pytest.raises(TaskNotFoundError, match="remote-flow"):
            await engine.schedules.create("nope", cron="* * * * *")
        with pytest.raises(ValidationError, match="bad minute"):
            await engine.schedules.create("remote-flow", cron="99 * * * *")
        await engine.schedules.delete(made.id)
        assert (await engine.schedules.list()).data == []


def test_the_commands_make_list_change_switch_and_delete_schedules(db_url: str) -> None:
    register(db_url, "sched-cli")
    made = ok_json(
        db_url,
        "schedules",
        "create",
        "sched-cli",
        "--cron",
        "0 9 * * MON-FRI",
        "--timezone",
        "Europe/Berlin",
        "--payload",
        '{"a": 1}',
        "--catch-up",
        "all",
    )
    assert (made["task"], made["catchUp"], made["payload"]) == ("sched-cli", "all", {"a": 1})
    assert ok_json(db_url, "schedules", "get", made["id"]) == made
    table = invoke(db_url, "schedules", "list").stdout.splitlines()
    assert table[0].split("\t") == ["id", "task", "cron", "zone", "active", "next"]
    assert table[1].split("\t")[:5] == [
        made["id"],
        "sched-cli",
        "0 9 * * MON-FRI",
        "Europe/Berlin",
        "true",
    ]
    listed = ok_json(db_url, "schedules", "list", "--task", "sched-cli")
    assert [s["id"] for s in listed["data"]] == [made["id"]] and listed["pagination"]["count"] == 1
    changed = ok_json(db_url, "schedules", "update", made["id"], "--cron", "30 7 * * *")
    assert changed["generator"]["expression"] == "30 7 * * *"
    assert ok_json(db_url, "schedules", "deactivate", made["id"])["active"] is False
    assert ok_json(db_url, "schedules", "activate", made["id"])["active"] is True
    deleted = invoke(db_url, "schedules", "delete", made["id"])
    assert deleted.exit_code == 0 and made["id"] in deleted.stdout

    create = ("schedules", "create", "sched-cli", "--cron")
    assert_one_line_error(invoke(db_url, *create, "61 * * * *"), "invalid cron", "bad minute")
    assert_one_line_error(
        invoke(db_url, *create, "* * * * *", "--timezone", "Mars"), "unknown timezone 'Mars'"
    )
    assert_one_line_error(
        invoke(db_url, *create, "* * * * *", "--catch-up", "most"), "--catch-up must be"
    )
    assert_one_line_error(invoke(db_url, "schedules", "create", "sched-cli"), "--cron is required")
    assert_one_line_error(
        invoke(db_url, "schedules", "create", "nope", "--cron", "* * * * *"), "unknown task 'nope'"
    )
    assert_one_line_error(invoke(db_url, "schedules", "get", "sched_nope"), "sched_nope")
    assert ok_json(db_url, "schedules", "list")["data"] == []


async def test_the_schedules_page_lists_each_schedule_with_its_next_five_ticks(
    engine: Engine,
) -> None:
    await engine.storage.register_tasks([TaskInfo("sched-tick", None)])
    berlin = await engine.schedules.create(
        "sched-tick", cron="0 9 * * MON-FRI", timezone="Europe/Berlin", external_id="acme"
    )
    off = await engine.schedules.create("sched-tick", cron="*/5 * * * *")
    await engine.schedules.deactivate(off.id)
    async with client_for(engine, UI_KEY) as ui:
        assert (await ui.get("/ui/schedules")).status_code == 401  # signed in only
        await ui.post("/ui/login", data={"key": UI_KEY, "next": "/ui/schedules"})
        page = await ui.get("/ui/schedules")
        assert page.status_code == 200
        html = page.text
        assert 'href="/ui/schedules" aria-current="page">Schedules</a>' in html
        assert berlin.id in html and off.id in html and "acme" in html
        assert "At 09:00 on Monday through Friday, Europe/Berlin" in html
        assert "none: inactive" in html
        for moment in berlin.upcoming:  # each tick: in Berlin's time, and the instant
            local = moment.astimezone(ZoneInfo("Europe/Berlin"))
            assert local.strftime("%a %Y-%m-%d 09:00:00 %Z") in html
            assert moment.strftime("%H:%M:%S UTC") in html  # 07:00 or 08:00, by the season
            assert f'datetime="{moment.isoformat().replace("+00:00", "Z")}"' in html
        assert html.count("<li><time") == 5
        other = await ui.get("/ui/schedules", params={"task": "sched-other"})
        assert "No schedules of this task." in other.text
