"""Simulated processes: an Engine and a Worker on a storage proxy that can kill or stall them.

Each process opens its own storage (its own connections) on the shared database and gives its
worker a ``FaultyStorage`` in front of it. The proxy is how faults happen at durable
boundaries, without touching the engine:

- the process *dies* at a storage call, either before the call runs (refused) or after it
  committed (it never returns): from then on every call of that process raises
  ``ProcessDied``, so nothing of it writes again, and nothing is released. Another process
  takes its runs over once their leases run out by the manual clock;
- the process *stalls* at a call: every call it makes waits until the executor, after the
  leases ran out and another process took the runs over, lets it go on; its late writes must
  be refused;
- a ``StorageUnavailableError`` before the call runs, or after it committed;
- the proxy also gives the database a short lease (``World.lease_ms``) while the worker
  believes in a long one, so the worker never stops an attempt for real time passing while the
  manual clock stands still (and the same short delay before a run handed back after a
  database failure may be claimed again); and it holds claims and timer firings while the
  executor applies outside events (the gate).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import Any

from engine import Engine, LeaseLostError, StorageError, StorageUnavailableError, Worker
from engine.settings import Settings
from engine.signing import CallbackSigner
from engine.storage import Storage, open_storage

from .program import PROCESS, ProcessDied
from .world import FaultState, World

GATED = frozenset({"claim_runs", "fire_due_timers", "fire_due_schedules", "rescue_expired_leases"})
"""Calls that wait while the executor applies the outside events of an instant."""
COUNTED = frozenset(
    {
        "append_journal",
        "create_token",
        "wait_on_token",
        "wait_on_group",
        "sleep_until",
        "start_child",
        "wait_for_children",
        "set_metadata",
        "finish_run",
        "retry_run",
        "release_run",
        "claim_runs",
        "fire_due_timers",
        "fire_due_schedules",
        "rescue_expired_leases",
        "cancel_run",
        "complete_token",
        "cancel_token",
    }
)
"""Calls that change state: the executor waits for none of them to be in flight."""
FENCED = COUNTED - {
    "release_run",
    "claim_runs",
    "fire_due_timers",
    "fire_due_schedules",
    "rescue_expired_leases",
    "cancel_run",
    "complete_token",
    "cancel_token",
}
"""Writes of an attempt that must be refused once a newer attempt claimed the run."""
WORKER_LEASE_SECONDS = 3600.0
POLL_SECONDS = 0.5
"""The executor wakes the workers when it changes something (``poke``); polling is a fallback."""
PUBLIC_URL = "http://127.0.0.1:8030"


SIGNING_SECRET = "simulation-signing-secret-" + "0" * 40
"""Callback URLs are signed with it (the simulator never calls them back)."""


def sim_signer() -> CallbackSigner:
    return CallbackSigner(PUBLIC_URL, SIGNING_SECRET)


def open_sim_storage(url: str, clock: Any) -> Storage:
    return open_storage(
        url,
        signing_secret=SIGNING_SECRET,
        synchronous="NORMAL",
        pool_size=2,
        clock=clock,
    )


class FaultyStorage:
    """Forwards every call to the real storage through its process (see module docstring)."""

    def __init__(self, real: Storage, process: SimProcess) -> None:
        self._real = real
        self._process = process

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        process = self._process

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await process.call(name, attr, args, kwargs)

        return call


class SimProcess:
    """One simulated worker process."""

    def __init__(self, world: World, name: str, url: str, always_replay: bool) -> None:
        self.world = world
        self.name = name
        self.url = url
        self.always_replay = always_replay
        self.dead = False
        self.stalled = False
        self._resume = asyncio.Event()
        self.in_flight = 0
        self.calls_in_flight: list[str] = []
        self.epochs: dict[str, int] = {}
        """The lease epoch of this process's latest claim of each run."""
        self.real: Storage | None = None
        self.worker: Worker | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> frozenset[str]:
        return self.worker.running if self.worker is not None else frozenset()

    async def start(self, storage: Storage) -> None:
        """Run a worker on ``storage`` (open; the process hands it back when it stops)."""
        self.real = storage
        engine = Engine.over(FaultyStorage(self.real, self), sim_signer())
        engine.settings = Settings(
            database_url=self.url,
            api_url=None,
            lease_seconds=WORKER_LEASE_SECONDS,
            max_recoveries=1000,
            always_replay=self.always_replay,
        )
        self.worker = Worker(
            engine,
            self.world.definitions,
            lease_seconds=WORKER_LEASE_SECONDS,
            poll_seconds=POLL_SECONDS,
            always_replay=self.always_replay,
        )
        context = contextvars.copy_context()
        context.run(PROCESS.set, self)
        self.task = asyncio.get_running_loop().create_task(self._serve(), context=context)
        await asyncio.wait_for(self.worker.started.wait(), 30)

    async def _serve(self) -> None:
        assert self.worker is not None
        try:
            await self.worker.run()
        except BaseException as exc:  # a dead process's worker ends with ProcessDied
            if not self.dead and not isinstance(exc, asyncio.CancelledError):
                self.world.problems.append(f"{self.name}: worker ended with {exc!r}")

    def check_alive(self) -> None:
        if self.dead:
            raise ProcessDied(self.name)

    def held(self) -> list[tuple[str, int]]:
        """(run, epoch) of the attempts this process is executing now."""
        return [(r, self.epochs[r]) for r in self.running if r in self.epochs]

    def die(self) -> None:
        if self.dead:
            return
        self.world.interrupted.update(self.held())
        self.dead = True
        self._resume.set()  # stalled calls wake up, and die

    def stall(self) -> None:
        self.world.interrupted.update(self.held())
        self.stalled = True
        self._resume.clear()

    def release(self) -> None:
        self.stalled = False
        self._resume.set()

    def poke(self) -> None:
        """Make the worker look for work now (the clock moved: a retry may be due)."""
        wake = getattr(self.worker, "_wake", None)
        if isinstance(wake, asyncio.Event):
            wake.set()

    async def stop(self) -> Storage | None:
        """End the process (its worker, however it is); returns its storage, still open."""
        if self.worker is not None and self.task is not None and not self.task.done():
            if self.dead or self.stalled:
                self.task.cancel()
            else:
                self.worker.stop(graceful=False)
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 20)
            except (TimeoutError, asyncio.CancelledError):
                self.task.cancel()
                self.world.problems.append(f"{self.name}: the worker did not stop in 20 s")
                return None  # something of it may still be running: do not reuse its storage
        storage, self.real = self.real, None
        return storage

    # --- every storage call of this process goes through here ------------------------------

    async def call(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.check_alive()
        if self.stalled:
            await self._resume.wait()
            self.check_alive()
        counted = name in COUNTED
        if counted:
            self.in_flight += 1
            self.calls_in_flight.append(name)
        try:
            return await self._call(name, fn, args, kwargs)
        finally:
            if counted:
                self.in_flight -= 1
                self.calls_in_flight.remove(name)

    async def _call(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        world = self.world
        if name in GATED:
            await world.gate.wait()
            self.check_alive()
        bound = inspect.signature(fn).bind(*args, **kwargs)
        if "lease_ms" in bound.arguments:
            bound.arguments["lease_ms"] = world.lease_ms
        if name == "release_run" and bound.arguments.get("delay_ms"):
            # a run handed back after a database failure waits a lease, not a second: faults
            # may only delay runs by a few milliseconds of virtual time (see grammar.WINDOW_MS)
            bound.arguments["delay_ms"] = min(int(bound.arguments["delay_ms"]), world.lease_ms)
        run_id, epoch = _attribution(bound.arguments)
        fault = world.fault_for(run_id, "call") if name != "claim_runs" else None
        if fault is not None:
            await self._before(fault, run_id, epoch)
        newer = world.latest_epoch.get(run_id) if run_id is not None else None
        retry_due_before = world.retry_due.get(run_id) if run_id is not None else None
        if name == "retry_run" and run_id is not None:
            # Written down before the call: a process that dies while the call is in flight
            # (its worker's attempts are cancelled) may have committed it, and a run held back
            # by a back-off nobody knows of would look stuck (see Executor._held_runs).
            delay = int(bound.arguments.get("delay_ms", 0))
            world.retry_due[run_id] = world.clock.now_ms() + delay
        try:
            result = await fn(*bound.args, **bound.kwargs)
        except StorageError as exc:  # refused (lease lost), or a real outage: a fault too
            if run_id is not None and epoch is not None:
                world.interrupted.add((run_id, epoch))
            if name == "retry_run" and isinstance(exc, LeaseLostError) and run_id is not None:
                world.retry_due.pop(run_id, None)  # refused: it did not commit
                if retry_due_before is not None:
                    world.retry_due[run_id] = retry_due_before
            if not isinstance(exc, LeaseLostError):
                world.fired["outage (not injected)"] += 1
            raise
        if newer is not None and epoch is not None and epoch < newer and name in FENCED:
            world.violations.append(
                f"fencing: {name} of run {world.run_refs.get(str(run_id), run_id)} with lease"
                f" epoch {epoch} was accepted after epoch {newer} had claimed the run"
            )
        if name == "append_journal":
            world.journaled(bound.arguments.get("write") or args[0])
        elif name == "claim_runs":
            self._claimed(result)
        if fault is not None:
            self._after(fault, run_id, epoch)
        self.check_alive()  # died while this call was in flight: it never returns
        return result

    async def _before(self, fault: FaultState, run_id: str | None, epoch: int | None) -> None:
        spec = fault.spec
        kind, when = spec["kind"], spec.get("when")
        if run_id is not None and epoch is not None:
            self.world.interrupted.add((run_id, epoch))
        if kind == "crash" and when == "before":
            self.world.fire(fault)
            self.die()
            raise ProcessDied(self.name)
        if kind == "storage_error" and when == "before":
            self.world.fire(fault)
            raise StorageUnavailableError("simulated: the database could not be reached")
        if kind == "stall":
            self.world.fire(fault)
            self.stall()
            await self._resume.wait()
            self.check_alive()

    def _after(self, fault: FaultState, run_id: str | None, epoch: int | None) -> None:
        spec = fault.spec
        kind, when = spec["kind"], spec.get("when")
        if kind == "crash" and when == "after":
            self.world.fire(fault)
            self.die()
            raise ProcessDied(self.name)
        if kind == "storage_error" and when == "after":
            self.world.fire(fault)
            raise StorageUnavailableError("simulated: the connection broke after the commit")

    def _claimed(self, claimed: list[Any]) -> None:
        world = self.world
        crash: FaultState | None = None
        for run in claimed:
            self.epochs[run.id] = run.epoch
            world.latest_epoch[run.id] = max(run.epoch, world.latest_epoch.get(run.id, 0))
            payload = run.payload if isinstance(run.payload, dict) else {}
            if "ref" in payload and payload.get("ns") == world.ns:
                world.run_refs.setdefault(run.id, payload["ref"])
            fault = world.fault_for(run.id, "claim")
            if fault is not None and crash is None:
                crash = fault
        if crash is not None:
            world.fire(crash)
            world.interrupted.update((run.id, run.epoch) for run in claimed)
            self.die()
            raise ProcessDied(self.name)


def _attribution(arguments: dict[str, Any]) -> tuple[str | None, int | None]:
    """The run (and lease epoch) a storage call is made for, if it is made for one."""
    for value in arguments.values():
        run_id = getattr(value, "run_id", None)
        epoch = getattr(value, "epoch", None)
        if isinstance(run_id, str) and isinstance(epoch, int):
            return run_id, epoch
    run_id = arguments.get("run_id")
    epoch = arguments.get("epoch")
    if isinstance(run_id, str) and isinstance(epoch, int):
        return run_id, epoch
    return None, None
