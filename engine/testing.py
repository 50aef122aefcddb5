"""Test your tasks in-process, on a throw-away SQLite file, with a clock you move yourself.

    from engine.testing import TaskTestEnvironment

    async def test_refund_is_declined_when_nobody_answers():
        async with TaskTestEnvironment([approve_refund]) as env:
            run = await env.trigger("approve-refund", {"order_id": 1, "amount": 5})
            await env.wait_until_waiting(run.id)
            await env.advance("24h")                  # the token times out, now
            done = await env.wait_for_run(run.id)
            assert done.output["refunded"] is False

The environment runs a real worker against a real database; only the clock is fake. Moving
it fires every token timeout, sleep and delay that falls due, so a 7-day approval flow is
tested in milliseconds. A schedule ticks on the way: ``advance("10m")`` with a schedule
every minute makes ten runs, each started before the clock moves on.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .approvals import fire_approvals
from .client import Engine
from .durations import to_timedelta
from .errors import RunWaitTimeoutError, TokenNotFoundError
from .models import CompletionResult, Run, RunStatus, Token
from .registry import TaskDefinition
from .settings import Settings
from .storage.schedules import FIRE_BATCH
from .worker import Worker


class ManualClock:
    """A clock that stands still until ``advance`` moves it (starts at the real time)."""

    def __init__(self) -> None:
        self._ms = time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self._ms

    def advance(self, delta: timedelta) -> None:
        self._ms += delta // timedelta(milliseconds=1)  # exact: no float in between


class TaskTestEnvironment:
    """An Engine and a Worker for ``tasks`` on a temporary database, with a ``ManualClock``."""

    def __init__(self, tasks: Iterable[TaskDefinition], *, timeout: float = 10.0) -> None:
        self.tasks = {definition.id: definition for definition in tasks}
        self.clock = ManualClock()
        self.timeout = timeout
        self._folder = tempfile.TemporaryDirectory(prefix="waitpoint-test-")
        url = f"sqlite:///{Path(self._folder.name) / 'engine.db'}"
        # a long lease: moving the clock must never make a running attempt look dead; a signing
        # secret of its own, so that no key file is made in the folder the tests run in
        settings = Settings(
            database_url=url,
            api_url=None,
            lease_seconds=10 * 365 * 86400,
            signing_secret=secrets.token_hex(32),
        )
        self.engine = Engine(settings=settings, clock=self.clock)
        self._worker: Worker | None = None
        self._running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.engine.__aenter__()
        self._worker = Worker(self.engine, self.tasks, poll_seconds=0.05)
        self._running = asyncio.create_task(self._worker.run())
        await asyncio.wait_for(self._worker.started.wait(), self.timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._worker is not None and self._running is not None:
            self._worker.stop(graceful=False)
            await asyncio.wait_for(self._running, self.timeout)
        await self.engine.__aexit__(exc_type, exc, tb)
        self._folder.cleanup()

    async def trigger(self, task_id: str, payload: Any = None, **options: Any) -> Run:
        return await self.engine.trigger(task_id, payload, **options)

    async def complete(self, token_id: str, data: Any = None) -> CompletionResult:
        return await self.engine.tokens.complete(token_id, data)

    async def wait_for_run(self, run_id: str) -> Run:
        """The finished run, whatever its status (no exception for FAILED or CANCELED)."""
        run = await self._until(run_id, lambda r: r.is_finished)
        return run

    async def wait_until_waiting(self, run_id: str) -> Run:
        """The run once it is parked (WAITING), with ``waiting_on`` filled."""
        return await self._until(run_id, lambda r: r.status is RunStatus.WAITING)

    async def waiting_tokens(self, run_id: str) -> list[Token]:
        """The tokens the run is parked on (after ``wait_until_waiting``), in ``waiting_on`` order.

        ``waiting_on`` names every waitpoint the run waits on, and only some are tokens: a
        group's timeout is a timer, ``trigger_and_wait`` waits on a child run. Those are the
        waitpoints ``tokens.retrieve`` does not find, so that one error, for an id the run
        waits on, means "not a token"; any other error is raised.
        """
        run = await self.engine.runs.retrieve(run_id)
        tokens = []
        for waitpoint_id in run.waiting_on:
            try:
                tokens.append(await self.engine.tokens.retrieve(waitpoint_id))
            except TokenNotFoundError:
                continue
        return tokens

    async def advance(self, duration: str | timedelta) -> None:
        """Move the clock, then fire every timer that fell due and let the worker settle.

        The clock stops at each tick of a schedule of these tasks (and each reminder or
        escalation of an approval) on the way: the tick's run is made and has settled before
        the clock goes on, as with a worker that was up all along (a single jump over several
        ticks would be downtime: see ``catch_up``)."""
        await self._settle()
        target = self.clock.now_ms() + to_timedelta(duration) // timedelta(milliseconds=1)
        while True:
            tick = await self._fire()
            await self._settle()
            if tick is None or tick > target:
                break
            self.clock.advance(timedelta(milliseconds=tick - self.clock.now_ms()))
        self.clock.advance(timedelta(milliseconds=target - self.clock.now_ms()))
        await self._fire()
        await self._settle()

    async def _fire(self) -> int | None:
        """Fire what is due now (timers, schedule ticks, approvals' reminders and escalations);
        returns when the next tick, reminder or escalation falls due."""
        storage = self.engine.storage
        while await storage.fire_due_timers(1000):
            pass
        while (fired := await storage.fire_due_schedules(list(self.tasks), FIRE_BATCH)).more_due:
            pass
        next_approval_ms = await fire_approvals(storage)
        moments = [m for m in (fired.next_tick_ms, next_approval_ms) if m is not None]
        return min(moments, default=None)

    async def _settle(self) -> None:
        """Wait until no run is executing and none is due to start (the worker is idle)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        storage = self.engine.storage
        versions = self._worker.versions if self._worker is not None else None
        while (
            await self.engine.runs.list(status=RunStatus.EXECUTING, limit=1)
        ).data or await storage.has_due_runs(list(self.tasks), versions):
            if loop.time() > deadline:
                raise RunWaitTimeoutError("runs are still due or executing")
            await asyncio.sleep(0.01)

    async def _until(self, run_id: str, done: Any) -> Run:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            run = await self.engine.runs.retrieve(run_id)
            if done(run):
                return run
            if loop.time() > deadline:
                raise RunWaitTimeoutError(f"run {run_id} is still {run.status.value}")
            await asyncio.sleep(0.01)
