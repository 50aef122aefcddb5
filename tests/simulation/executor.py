"""Play a scenario on the real engine: a real database, a manual clock, simulated processes.

The loop, per scenario:

1. *settle*: wait until every live process is idle (no attempt running, no state-changing
   storage call in flight, no run due, no timer due). A run left EXECUTING with no live attempt
   (its process died or stalled, or an attempt gave it up) costs ``LEASE_MS + 1`` of virtual
   time: the clock moves just past its lease and the run is rescued and taken over. A stalled
   process is let go only once everything else settled.
2. move the clock to the next instant something is due: an outside event, a timer in the
   database (token timeouts, sleeps, group deadlines), a retry's back-off;
3. with claims and timer firings of the processes held (the gate), apply the outside events of
   that instant in scenario order, fire the due timers, then let the workers go.

Real time is only bounded by generous timeouts; nothing is timed by it. Several scenarios may
run one after the other on one database (``Database``): each starts a day after the previous
one ended, by the database's manual clock, and its idempotency keys carry a namespace of its
own, so they cannot meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from engine import Engine, Run, RunStatus, StorageUnavailableError, Token, TokenNotWaitingError
from engine.clock import from_ms, to_ms
from engine.models import JournalEntry, RunEvent
from engine.storage import Storage
from engine.testing import ManualClock

from . import grammar as g
from .processes import SimProcess, open_sim_storage, sim_signer
from .program import payload_of, task_definitions
from .world import FaultState, World

IDLE_STORAGES = 3
"""Open storages a database keeps for the next processes (PostgreSQL: 5 connections each)."""
TASK_IDS = [g.task_id(n) for n in g.ATTEMPTS]
NOT_YET = sys.maxsize
"""The due time of an agenda item that waits for something (a token not made yet)."""
TERMINAL = {s.value for s in RunStatus if s.is_terminal}


class SimulationTimeout(Exception):
    """The scenario did not settle or end within its real-time budget."""


@dataclass
class RunRecord:
    id: str
    ref: str | None
    task: str
    status: str
    output: Any
    error: dict[str, Any] | None
    metadata: dict[str, Any]
    journal: list[JournalEntry]
    events: list[RunEvent]
    finished_ms: int | None


@dataclass
class Observed:
    """What the scenario did on the engine, read back after it ended."""

    world: World
    runs: list[RunRecord]
    acks: dict[int, str]
    tokens: dict[tuple[str, str], Token]
    integrity: list[str]
    errors: list[str]
    """Error-level engine log events that point at an engine bug."""
    seconds: float
    timed_out: str | None = None


class Database:
    """One database for many scenarios: a SQLite file or a PostgreSQL schema of its own."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.clock = ManualClock()
        self.url = ""
        self.client: Storage | None = None
        self._idle: list[Storage] = []
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._schema: str | None = None

    async def open(self) -> Database:
        if self.backend == "sqlite":
            self._folder = tempfile.TemporaryDirectory(prefix="waitpoint-sim-")
            self.url = f"sqlite:///{Path(self._folder.name) / 'sim.db'}"
        else:
            from tests.postgres import SERVER_URL

            self._schema = f"wps_{uuid.uuid4().hex[:16]}"
            separator = "&" if "?" in SERVER_URL else "?"
            self.url = f"{SERVER_URL}{separator}schema={self._schema}"
        client = open_sim_storage(self.url, self.clock)
        await client.open()
        self.client = RetryingReads(client)
        return self

    async def storage(self) -> Storage:
        """An open storage for a simulated process (reused: opening one costs more than a
        scenario's worth of work on PostgreSQL)."""
        if self._idle:
            return self._idle.pop()
        storage = open_sim_storage(self.url, self.clock)
        await storage.open()
        return storage

    async def give_back(self, storage: Storage) -> None:
        if len(self._idle) < IDLE_STORAGES:
            self._idle.append(storage)
        else:
            await storage.close()

    async def close(self) -> None:
        for storage in self._idle:
            await storage.close()
        self._idle.clear()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._schema is not None:
            from tests.postgres import drop_schema

            await drop_schema(self._schema)
        if self._folder is not None:
            self._folder.cleanup()

    def integrity(self) -> list[str]:
        """``PRAGMA integrity_check`` on SQLite (PostgreSQL checks its own pages)."""
        if self.backend != "sqlite":
            return []
        path = self.url[len("sqlite:///") :]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
        return [] if rows == ["ok"] else rows


class RetryingReads:
    """The outside world's storage: a read that meets an unreachable database (a shared
    server out of connections) is tried again for a while; the scenario is not the engine's
    to fail for it. Writes are the engine's to retry (it does, before they began)."""

    def __init__(self, real: Storage) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not name.startswith(("get_", "list_", "has_", "next_")):
            return attr

        async def read(*args: Any, **kwargs: Any) -> Any:
            for delay in (0.05, 0.1, 0.2, 0.5, 1, 1, 2, 2, 4, 4):
                try:
                    return await attr(*args, **kwargs)
                except StorageUnavailableError:
                    await asyncio.sleep(delay)
            return await attr(*args, **kwargs)

        return read


@dataclass(order=True)
class _Item:
    at: int
    order: int
    kind: str = field(compare=False)
    data: dict[str, Any] = field(compare=False)


class Executor:
    """Runs one scenario on an open ``Database``."""

    def __init__(self, db: Database, scenario: g.Scenario, *, timeout: float = 120.0) -> None:
        assert db.client is not None
        self.db = db
        self.client = Engine.over(db.client, sim_signer())
        self.storage = db.client
        self.scenario = scenario
        self.clock = db.clock
        self.timeout = timeout
        now = self.clock.now_ms()
        self.t0 = (now // 1000 + 86_400) * 1000
        self.clock.advance(timedelta(milliseconds=self.t0 - now))
        self.world = World(
            clock=self.clock,
            t0=self.t0,
            ns=f"s{scenario.seed}-{uuid.uuid4().hex[:8]}",
            definitions=task_definitions(),
            lease_ms=g.LEASE_MS,
            faults=[FaultState(dict(f)) for f in scenario.faults if f["kind"] != "blackout"],
        )
        self.blackout = False
        self.rng = random.Random(scenario.seed)
        """Only for the real-time jitter of hot events (which cannot be replayed exactly)."""
        self.slot = 0
        self.acks: dict[int, str] = {}
        self.agenda: list[_Item] = []
        for index, root in enumerate(scenario.roots):
            self.agenda.append(_Item(self.t0 + root["at"], index, "trigger", root))
        base = len(scenario.roots)
        for event in scenario.events:
            order = base + event["index"]
            self.agenda.append(_Item(self.t0 + event["at"], order, "event", event))
        for fault in scenario.faults:
            if fault["kind"] == "blackout":
                self.agenda.append(_Item(self.t0 + fault["at"], -1, "blackout", fault))
                self.agenda.append(_Item(self.t0 + fault["until"], 10**6, "revive", fault))
        self.agenda.sort()
        self._deadline = 0.0

    # --- the main loop -----------------------------------------------------------------------

    async def run(self) -> Observed:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.timeout
        timed_out: str | None = None
        with capture_engine_errors() as errors:
            try:
                await self._ensure_processes()
                await self._loop()
            except SimulationTimeout as exc:
                timed_out = str(exc)
            finally:
                await self._stop_processes()
            observed = await self._observe()
        observed.errors = errors
        observed.timed_out = timed_out
        observed.seconds = time.monotonic() - started
        await self._cancel_leftovers(observed)
        return observed

    async def _loop(self) -> None:
        world = self.world
        while True:
            await self._settle()
            due = await self._next_instant()
            if due is None:
                return
            world.gate.clear()
            hot: list[_Item] = []
            try:
                now = self.clock.now_ms()
                if due > now:
                    self.clock.advance(timedelta(milliseconds=due - now))
                while True:
                    self.agenda.sort(key=lambda item: (self._time_of(item), item.order))
                    if not self.agenda or self._time_of(self.agenda[0]) > due:
                        break
                    item = self.agenda.pop(0)
                    if item.kind == "event" and item.data.get("hot") and not self.blackout:
                        hot.append(item)
                    else:
                        await self._apply(item)
                if not self.blackout:
                    await self._fire_timers()
            finally:
                world.gate.set()
                self._poke()
            for item in hot:  # racing the runs of this instant, which are executing now
                await asyncio.sleep(self.rng.uniform(0, 0.003))
                world.fired["event: hot (racing the runs of its instant)"] += 1
                await self._apply(item)

    def _time_of(self, item: _Item) -> int:
        """When an agenda item is due; a completion racing a token's deadline waits for the
        token (the reference places it by the token's own deadline, whenever it is made)."""
        event = item.data
        if item.kind == "event" and event.get("race") is not None:
            token = self.world.tokens.get((event["token"][0], event["token"][1]))
            if token is None or token.expires_at is None:
                return NOT_YET
            return to_ms(token.expires_at) + int(event["race"])
        return item.at

    async def _next_instant(self) -> int | None:
        now = self.clock.now_ms()
        candidates = [t for t in map(self._time_of, self.agenda) if t != NOT_YET]
        timer = await self.storage.next_timer_ms()
        if timer is not None and timer > now:
            candidates.append(timer)
        candidates.extend(w for w in self.world.retry_due.values() if w > now)
        return min(candidates) if candidates else None

    def _check_time(self, what: str) -> None:
        if asyncio.get_running_loop().time() > self._deadline:
            state = "; ".join(
                f"{p.name}: {'dead' if p.dead else 'stalled' if p.stalled else 'live'},"
                f" {p.in_flight} calls in flight ({', '.join(p.calls_in_flight) or '-'}),"
                f" running {sorted(self.world.run_refs.get(r, r) for r in p.running)}"
                for p in self.world.processes
            )
            raise SimulationTimeout(
                f"{what} after {self.timeout:.0f} s of real time (at T0+"
                f"{self.clock.now_ms() - self.t0} ms; {state})"
            )

    async def _settle(self) -> None:
        world = self.world
        quiet = 0
        while True:
            self._check_time("the processes did not settle")
            if self.blackout:
                return
            await self._ensure_processes()
            active = world.active()
            if any(p.in_flight or p.running for p in active):
                quiet = 0
                await asyncio.sleep(0.002)
                continue
            now = self.clock.now_ms()
            timer = await self.storage.next_timer_ms()
            if timer is not None and timer <= now:
                await self._fire_timers()
                quiet = 0
                continue
            if await self.storage.has_due_runs(TASK_IDS):
                quiet = 0
                self._poke()
                await asyncio.sleep(0.002)
                continue
            running = set().union(*(p.running for p in active))
            executing, blocked = await self._held_runs()
            orphans = (executing - running) | blocked
            if orphans:
                quiet += 1
                if quiet >= 2:  # no live attempt holds them: let their leases run out
                    self.clock.advance(timedelta(milliseconds=world.lease_ms + 1))
                    await self.storage.rescue_expired_leases(1000)
                    self._poke()
                    quiet = 0
                await asyncio.sleep(0.002)
                continue
            stalled = [p for p in world.live() if p.stalled]
            if stalled:
                for process in stalled:
                    process.release()
                quiet = 0
                continue
            quiet += 1
            if quiet >= 2:
                return
            await asyncio.sleep(0.002)

    async def _held_runs(self) -> tuple[set[str], set[str]]:
        """Runs EXECUTING, and runs QUEUED but not due though no back-off holds them back:
        a lease keeps them (a dead process parked them and never let go)."""
        page = await self.client.runs.list(
            status=["EXECUTING", "QUEUED"], created_after=from_ms(self.t0 - 1), limit=100
        )
        now = self.clock.now_ms()
        retrying = self.world.retry_due
        executing = {r.id for r in page.data if r.status is RunStatus.EXECUTING}
        blocked = {
            r.id for r in page.data if r.status is RunStatus.QUEUED and retrying.get(r.id, 0) <= now
        }
        return executing, blocked

    async def _fire_timers(self) -> None:
        while await self.storage.fire_due_timers(1000) == 1000:
            pass
        await self.storage.rescue_expired_leases(1000)

    # --- processes ------------------------------------------------------------------------------

    async def _ensure_processes(self) -> None:
        if self.blackout:
            return
        while len(self.world.live()) < self.scenario.processes or not self.world.active():
            await self._start_process()

    async def _start_process(self) -> None:
        replay = self.scenario.replay[self.slot % len(self.scenario.replay)]
        process = SimProcess(self.world, f"p{self.slot}", self.db.url, replay)
        self.slot += 1
        self.world.processes.append(process)
        await process.start(await self.db.storage())

    async def _stop_processes(self) -> None:
        for process in self.world.processes:
            storage = await process.stop()
            if storage is not None:
                await self.db.give_back(storage)

    def _poke(self) -> None:
        for process in self.world.active():
            process.poke()

    # --- outside events ---------------------------------------------------------------------

    async def _apply(self, item: _Item) -> None:
        world = self.world
        if item.kind == "trigger":
            program = item.data["program"]
            run = await self.client.trigger(
                g.task_id(program["attempts"]), payload_of(program, world.ns, self.t0)
            )
            world.saw_run(run.id, program["ref"])
        elif item.kind == "blackout":
            self.blackout = True
            for process in world.live():
                process.die()
        elif item.kind == "revive":
            self.blackout = False
            world.fired["blackout"] += 1
            await self._ensure_processes()
        elif item.data["kind"] == "cancel_run":
            await self._cancel_run(item.data)
        elif item.data.get("race") is not None:
            await self._race(item.data)
        else:
            self.acks[item.data["index"]] = await self._close_token(item.data)

    async def _close_token(self, event: dict[str, Any]) -> str:
        token = self.world.tokens.get((event["token"][0], event["token"][1]))
        if token is None:
            return "no such token yet"
        try:
            if event["kind"] == "complete":
                done = await self.client.tokens.complete(token.id, event["data"])
            else:
                done = await self.client.tokens.cancel(token.id)
        except TokenNotWaitingError:
            return "refused"
        return "applied" if done.applied else "not_applied"

    async def _race(self, event: dict[str, Any]) -> None:
        """A completion at the token's deadline (or 1 ms before), racing its timer."""
        self.world.fired["event: at a token's deadline (racing its timer)"] += 1
        if self.blackout:  # no worker alive to fire the timer
            self.acks[event["index"]] = await self._close_token(event)
            return
        close, _ = await asyncio.gather(
            self._close_token(event), self.storage.fire_due_timers(1000)
        )
        self.acks[event["index"]] = close

    async def _cancel_run(self, event: dict[str, Any]) -> None:
        run_id = self.world.run_ids.get(event["run"])
        if run_id is None:
            self.acks[event["index"]] = "no such run yet"
            return
        before = await self.client.runs.retrieve(run_id)
        if before.is_finished:
            self.acks[event["index"]] = "finished"
            return
        await self.client.runs.cancel(run_id)
        self.acks[event["index"]] = "canceled"

    # --- reading back -------------------------------------------------------------------------

    async def _all_runs(self) -> list[Run]:
        runs: list[Run] = []
        after: str | None = None
        while True:
            page = await self.client.runs.list(
                created_after=from_ms(self.t0 - 1), limit=100, after=after
            )
            runs.extend(page.data)
            if page.next_cursor is None:
                return runs
            after = page.next_cursor

    async def _observe(self) -> Observed:
        world = self.world
        records: list[RunRecord] = []
        for run in await self._all_runs():
            payload = run.payload if isinstance(run.payload, dict) else {}
            if payload.get("ns") != world.ns:
                continue
            ref = payload.get("ref")
            records.append(
                RunRecord(
                    id=run.id,
                    ref=ref,
                    task=run.task_identifier,
                    status=run.status.value,
                    output=run.output,
                    error=run.error.model_dump() if run.error else None,
                    metadata=dict(run.metadata or {}),
                    journal=await self.storage.get_journal(run.id),
                    events=await self.storage.get_events(run.id),
                    finished_ms=None if run.finished_at is None else to_ms(run.finished_at),
                )
            )
        tokens = {
            owner: await self.client.tokens.retrieve(token.id)
            for owner, token in world.tokens.items()
        }
        return Observed(
            world=world,
            runs=records,
            acks=dict(self.acks),
            tokens=tokens,
            integrity=self.db.integrity(),
            errors=[],
            seconds=0.0,
        )

    async def _cancel_leftovers(self, observed: Observed) -> None:
        """A run a bug left unfinished must not wake up in the next scenario."""
        for run in observed.runs:
            if run.status not in TERMINAL:
                with contextlib.suppress(Exception):
                    await self.client.runs.cancel(run.id)


ENGINE_BUG_EVENTS = frozenset({"worker.attempt_crashed", "worker.timers_failed"})


@contextlib.contextmanager
def capture_engine_errors() -> Iterator[list[str]]:
    """Silence the engine's logs for the scenario; keep the events that mean an engine bug."""
    found: list[str] = []

    def keep(_: Any, __: str, event: dict[str, Any]) -> Any:
        if event.get("event") in ENGINE_BUG_EVENTS and "simulated" not in str(event):
            found.append(f"{event.get('event')}: {event.get('error') or event.get('exc_info')}")
        raise structlog.DropEvent

    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, keep],  # type: ignore[list-item]
        wrapper_class=structlog.make_filtering_bound_logger(40),
        cache_logger_on_first_use=False,
    )
    try:
        yield found
    finally:
        structlog.configure(**saved)
