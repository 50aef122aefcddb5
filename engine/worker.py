"""The worker: claims due runs, runs their attempts, keeps leases alive, fires timers.

Any number of workers (processes, and later machines) may serve one database; none is
special. Stopping is graceful by default: stop claiming, let running attempts finish (or
park), then exit; a hard stop cancels the attempts, which hand their runs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import anyio.lowlevel

from . import metrics
from .approvals import deliver_notices, fire_approvals
from .client import Engine
from .client.local import follow_public_url
from .durations import duration_ms
from .errors import StorageError
from .logs import get_logger
from .models import ClaimedRun, RunStatus
from .notifiers import Notifier, notifier_from_settings
from .registry import REGISTRY, TaskDefinition
from .runtime import Handoff, hand_back, run_attempt
from .signing import UNKNOWN_PUBLIC_URL
from .storage import DeclaredSchedule, NewWorker
from .storage.retention import PURGE_BATCH
from .storage.schedules import FIRE_BATCH
from .validation import clean_version

log = get_logger("engine.worker")

_TIMER_BATCH = 1000
PUBLIC_URL_SECONDS = 5.0
"""How often a worker not given a public URL reads the one the API server recorded."""
_MIN_TIMER_PAUSE = 0.01
RETENTION_SECONDS = 5.0
"""The pause between a worker's purges while they come back short; half the retention when
that is shorter (a 1 s retention purges every half second)."""
_BETWEEN_FULL_BATCHES = 0.05
"""The pause between full batches: other writers get the database in between."""


@dataclass(eq=False)
class _Attempt:
    """What a worker keeps about one attempt it is executing, from its claim to its end.

    One record instead of a map per field, so that a run is either wholly known as running
    here or not at all: no path can stop an attempt, count it or renew its lease from a
    leftover entry of a run that is gone, or miss one that is there. A record is told from
    a later attempt of the same run (this worker may claim a run again while its earlier
    attempt unwinds) by identity.
    """

    run_id: str
    lease_until: float | None
    """When the attempt's lease may expire at the earliest (the loop's clock); ``None`` once
    it was stopped for it (``_stop_expiring``), so that it is stopped and logged once."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Made at the claim, before the attempt starts, so that stopping it works from the
    claim on (a scope cancelled before it is entered cancels what runs in it)."""


class Worker:
    """Runs the given tasks (by default every task imported so far) against an open Engine.

    ``version`` (default ``WAITPOINT_VERSION``) is the version of the code it runs, for
    the tasks that name none themselves (``@task(version=)``): a run records the version of
    its first claim, and the worker claims only runs of the versions it serves or of none.
    """

    def __init__(
        self,
        engine: Engine,
        tasks: Mapping[str, TaskDefinition] | None = None,
        *,
        concurrency: int | None = None,
        lease_seconds: float | None = None,
        poll_seconds: float = 1.0,
        always_replay: bool | None = None,
        version: str | None = None,
        retention: str | timedelta | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.engine = engine
        self.tasks = dict(tasks if tasks is not None else REGISTRY)
        default = engine.settings.version if version is None else clean_version(version)
        self.versions: dict[str, str] = {}
        """The version this worker serves each versioned task at (the others: none)."""
        for task_id, definition in self.tasks.items():
            served = definition.version or default
            if served is not None:
                self.versions[task_id] = served
        self.concurrency = concurrency or engine.settings.concurrency
        self.lease_ms = int((lease_seconds or engine.settings.lease_seconds) * 1000)
        self._lease_margin = min(1.0, self.lease_ms / 4000)
        """How long before its lease may run out an attempt is stopped: a quarter of the
        lease, at most 1 s (the expiry loop's pause on a busy machine fits in it)."""
        self.poll_seconds = poll_seconds
        self.always_replay = (
            engine.settings.always_replay if always_replay is None else always_replay
        )
        """Hand each run back after every new durable call, so it resumes by replay (tests)."""
        kept = retention if retention is not None else engine.settings.retention
        self.retention_ms = None if kept is None else duration_ms(kept)
        """Delete finished runs and closed tokens older than this (``WAITPOINT_RETENTION``),
        a batch at a time (``_retention_loop``); None: delete nothing."""
        settings = engine.settings
        self.notifier = notifier or notifier_from_settings(
            settings.notify_url, secret=settings.notify_secret
        )
        """Tells approvers that an approval waits for them (``WAITPOINT_NOTIFY_URL``); None:
        the notices wait in the database for a worker that has one."""
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._attempts_by_run: dict[str, _Attempt] = {}
        """Each run this worker is executing, with the record of its attempt of it."""
        self._stopping = False
        self._wake = asyncio.Event()
        self._attempt_group: anyio.abc.TaskGroup | None = None
        """The task group the attempts run in, while the worker runs (a hard stop cancels it)."""
        self.started = asyncio.Event()
        self._timers_planned_ms = -math.inf
        """When the timer loop last planned to wake (the database's clock)."""
        self._peers: dict[str, list[str]] = {}
        """Each task's live workers, as the heartbeats last said (``_takes``)."""
        self._work = asyncio.Event()
        self._owed = 0
        """Runs queued at this worker's turns that it has not claimed yet."""
        self._owed_all = True
        """Whether the next claim takes all that is due (at start, after a poll, ...)."""

    @property
    def running(self) -> frozenset[str]:
        """Ids of the runs this worker is executing right now."""
        return frozenset(self._attempts_by_run)

    @property
    def declared_schedules(self) -> list[DeclaredSchedule]:
        """The schedules its tasks declare (``@task(cron=...)``), kept in the database when it
        starts: a changed one is updated, one removed from a task it serves is deleted."""
        return [
            DeclaredSchedule(task_id, d.cron, d.catch_up)
            for task_id, d in sorted(self.tasks.items())
            if d.cron is not None
        ]

    def stop(self, *, graceful: bool = True) -> None:
        """Stop claiming; unless ``graceful``, also cancel running attempts (runs go back)."""
        if self._stopping or not graceful:
            if self._attempt_group is not None:
                self._attempt_group.cancel_scope.cancel()
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Work until ``stop()``; returns once every attempt finished or was handed back.

        The worker's row (``waitpoint workers``) is written with its tasks, its heartbeat with
        its lease renewals, and it is marked stopped when this returns.
        """
        storage = self.engine.storage
        me = NewWorker(self.id, sorted(self.tasks), self.concurrency, self.lease_ms, self.versions)
        await storage.register_tasks([d.info for d in self.tasks.values()], me)
        await storage.declare_schedules(sorted(self.tasks), self.declared_schedules)
        self._peers = await storage.serving()
        log.info(
            "worker.started",
            worker=self.id,
            tasks=sorted(self.tasks),
            concurrency=self.concurrency,
            versions=self.versions or None,
        )
        signer = self.engine.signer
        if not signer.configured and await follow_public_url(signer, storage) is None:
            log.warning(
                "worker.public_url_unknown",
                worker=self.id,
                problem="no API server recorded its address in the database and"
                " WAITPOINT_PUBLIC_URL is unset: the URLs of the tokens made here point at"
                f" {UNKNOWN_PUBLIC_URL} until `waitpoint dev`/`serve` starts on it",
            )
        with _heap_frozen():
            async with anyio.create_task_group() as services:
                services.start_soon(self._timer_loop)
                services.start_soon(self._lease_loop)
                services.start_soon(self._expiry_loop)
                if self.retention_ms is not None:
                    services.start_soon(self._retention_loop, self.retention_ms)
                if self.notifier is not None:
                    services.start_soon(self._notice_loop, self.notifier)
                if not signer.configured:
                    services.start_soon(self._public_url_loop)
                unfollow = storage.follow_work(sorted(self.tasks), self._queued)
                try:
                    async with anyio.create_task_group() as attempts:
                        self._attempt_group = attempts
                        self.started.set()
                        await self._claim_loop(attempts)
                finally:
                    unfollow()
                self._attempt_group = None
                services.cancel_scope.cancel()
        try:  # a worker that cannot say so falls silent instead: it stops being live all the same
            await storage.stop_worker(self.id)
        except Exception as exc:
            log.warning("worker.stop_unrecorded", worker=self.id, error=str(exc))
        log.info("worker.stopped", worker=self.id)

    @contextlib.asynccontextmanager
    async def _surviving(
        self, storage_failed: str, loop_failed: str, pause: float
    ) -> AsyncIterator[None]:
        """One turn of a service loop: a failure ends the turn, never the loop or the worker.

        The claim, timer and lease loops are the worker: one that ended would leave it up but
        claiming nothing, firing no timer or letting its leases run out. A ``StorageError`` is
        the database failing (unreachable, locked, full) and is logged as such; anything else
        is a bug or a driver error that slipped through translation, logged with its
        traceback. Either way the loop waits ``pause`` seconds before its next turn (a failed
        turn skipped its own wait), so a failure that repeats every turn costs a log line per
        pause, not a hot spin. Cancellation passes through.
        """
        try:
            yield
        except StorageError as exc:
            log.error(storage_failed, worker=self.id, error=str(exc))
        except Exception:
            log.exception(loop_failed, worker=self.id)
        else:
            return
        if pause > 0:
            await anyio.sleep(pause)

    async def _claim_loop(self, attempts: anyio.abc.TaskGroup) -> None:
        while not self._stopping:
            async with self._surviving(
                "worker.claim_failed", "worker.claim_loop_failed", pause=self.poll_seconds
            ):
                await self._claim_turn(attempts)

    async def _claim_turn(self, attempts: anyio.abc.TaskGroup) -> None:
        """Claim what is due and start it; or wait for work, a wake-up or the poll.

        A claim takes as many runs as were queued at this worker's turns (``_queued``), so
        that it does not take the runs whose turn is another worker's (who would then find
        nothing); after a poll, a wake-up, or a commit that did not say what it queued, it
        takes all that is due, as far as it has room.
        """
        storage = self.engine.storage
        task_ids = sorted(self.tasks)
        self._work.clear()
        self._wake.clear()
        free = self.concurrency - len(self._attempts_by_run)
        everything, owed = self._owed_all, self._owed
        self._owed_all, self._owed = False, 0  # taken: what is told during the claim adds anew
        limit = max(free, 0) if everything else min(free, owed)
        claimed: list[ClaimedRun] = []
        asked = anyio.current_time()
        if limit > 0:
            # a claim cut short by a hard stop would strand its runs until their leases
            # ran out: finish it, and let the (cancelled) attempts hand the runs back
            with anyio.CancelScope(shield=True):
                claimed = await storage.claim_runs(
                    self.id, limit, self.lease_ms, task_ids, self.versions
                )
            if metrics.on:
                metrics.claimed(anyio.current_time() - asked)
        for run in claimed:
            # this worker's own earlier attempt of the run lost it (its lease was rescued)
            # and may still be unwinding: it must stop, and its bookkeeping is the new one's
            self._cancel(run.id)
            attempt = _Attempt(run.id, lease_until=asked + self.lease_ms / 1000)
            self._attempts_by_run[run.id] = attempt
            attempts.start_soon(self._attempt, run, attempt)
        # a claim that filled the room it had may have left runs due (all, or some of those
        # owed): they are claimed as soon as there is room again
        filled = len(claimed) == limit
        if filled and everything:
            self._owed_all = True
        elif filled:
            self._owed += owed - limit
        if limit > 0 and filled and (self._owed_all or self._owed):
            return  # claim again at once, as far as there is room
        pause = self.poll_seconds if limit == 0 or filled else self._pause()
        await _first_of([self._work, self._wake], pause)
        if self._wake.is_set() or not self._work.is_set():  # a wake-up or the poll
            self._owed_all = True

    def _pause(self) -> float:
        """How long to wait for work after a claim that found less than it had room for:
        a poll, or less when a rate limit held runs back (its bucket empty), until the
        bucket's next token. So a rate-limited queue goes on at its rate, and a worker
        neither spins on an empty bucket nor lets tokens go to waste while it sleeps a
        poll (a bucket holds at most ``limit`` of them)."""
        storage = self.engine.storage
        token_ms = storage.rate_limited_until(self.id)
        if token_ms is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (token_ms - storage.now_ms()) / 1000))

    def _queued(self, task_id: str | None, number: int | None) -> None:
        """``Storage.follow_work``: a run may have been queued; claim it if it is this
        worker's turn (``_takes``), or all that is due if the commit did not say what."""
        if task_id is None or number is None:
            self._owed_all = True
        elif self._takes(task_id, number):
            self._owed += 1
        else:
            return
        self._work.set()

    def _takes(self, task_id: str, number: int) -> bool:
        """Whether run ``number`` of ``task_id`` (a hash of its id), just queued, is this
        worker's to claim: the live workers serving the task take turns by that number, so
        that one of them claims it instead of all (with all but one finding nothing).

        The others claim at their next poll, at their own turns (the oldest due run first),
        or when a slot of theirs frees after they were full: so a run whose turn fell to a
        worker that is full, stopping or dead waits at most a poll. A worker that does not
        know itself among the task's workers (its heartbeat not read yet) takes every run.
        """
        peers = self._peers.get(task_id)
        if not peers or self.id not in peers:
            return True
        return peers[number % len(peers)] == self.id

    async def _attempt(self, run: ClaimedRun, attempt: _Attempt) -> None:
        outcome: RunStatus | Handoff | None = None
        ended = "stopped"  # unless it ends otherwise: cancelled (a hard stop, a lost lease)
        started = anyio.current_time() if metrics.on else None
        try:
            with attempt.scope as scope:
                await self._hold_lease(attempt)
                outcome = await run_attempt(
                    self.engine.storage,
                    self.engine.signer,
                    run,
                    self.tasks[run.task_id],
                    always_replay=self.always_replay,
                    hold_lease=lambda: self._hold_lease(attempt),
                )
            if scope.cancelled_caught:
                log.info("run.attempt_stopped", run_id=run.id, reason="canceled or taken over")
            else:
                ended = _outcome(outcome)
        except Exception:  # a bug in the engine must not take the worker down with it
            ended = "crashed"
            log.exception("worker.attempt_crashed", run_id=run.id)
        finally:
            if started is not None:
                metrics.attempted(run.task_id, ended, anyio.current_time() - started)
            full = len(self._attempts_by_run) >= self.concurrency
            if self._attempts_by_run.get(run.id) is attempt:  # not a newer attempt's record
                del self._attempts_by_run[run.id]
            if outcome is Handoff.REPLAY:
                # only now: a claim of the released run must not meet this attempt's bookkeeping
                with anyio.CancelScope(shield=True):
                    await hand_back(self.engine.storage, run)
            if full:  # a slot is free again (work this attempt made wakes the claim loop anyway)
                self._wake.set()

    async def _timer_loop(self) -> None:
        """Fire due token timeouts and schedule ticks, and rescue runs whose worker went
        silent."""
        while True:
            async with self._surviving(
                "worker.timers_failed", "worker.timer_loop_failed", pause=self.poll_seconds
            ):
                await self._timer_turn()

    async def _timer_turn(self) -> None:
        storage = self.engine.storage
        # taken first: it tells the deadlines set during this turn, which the reads below
        # may not have seen
        during = storage.deadline_event(self._timers_planned_ms)
        # one read first: most turns were woken by a commit that set no deadline due now
        outlook = await storage.timer_outlook(sorted(self.tasks))
        next_ms = outlook.next_ms if not outlook.due else await self._fire_due()
        pause = self.poll_seconds
        if next_ms is not None:
            pause = min(pause, max(0.0, (next_ms - storage.now_ms()) / 1000))
        until = storage.now_ms() + pause * 1000
        self._timers_planned_ms = until
        await anyio.sleep(_MIN_TIMER_PAUSE)
        if during.earliest < until:  # a deadline set meanwhile comes first: look again now
            return
        # from here on, only a deadline before the one slept to wakes this loop (a token
        # made with an hour's timeout does not)
        await _first_of([storage.deadline_event(until)], pause)

    async def _fire_due(self) -> int | None:
        """Fire what is due (timers, schedule ticks, approval reminders), rescue runs whose
        worker went silent; returns when the next deadline falls."""
        storage = self.engine.storage
        while await storage.fire_due_timers(_TIMER_BATCH) == _TIMER_BATCH:
            pass
        next_tick_ms = await self._fire_schedules()
        next_approval_ms = await fire_approvals(storage)
        rescued = await storage.rescue_expired_leases(self.engine.settings.max_recoveries)
        if rescued:
            log.warning("worker.rescued_runs", count=rescued)
            if metrics.on:
                metrics.rescued(rescued)
        return _earliest(await storage.next_timer_ms(), next_tick_ms, next_approval_ms)

    async def _fire_schedules(self) -> int | None:
        """Make the runs of the due ticks of the schedules of this worker's tasks (any number
        of workers may at once: each tick gets one run); returns when the next one falls due.

        Only the workers serving a task fire its schedules: while none is up, its ticks wait,
        and the worker that starts next catches up on them as the schedule says, instead of
        every missed tick queueing a run meanwhile."""
        storage = self.engine.storage
        while True:
            fired = await storage.fire_due_schedules(sorted(self.tasks), FIRE_BATCH)
            if fired.runs:
                log.info("worker.fired_schedules", worker=self.id, runs=fired.runs)
            if not fired.more_due:
                return fired.next_tick_ms

    async def _retention_loop(self, older_than_ms: int) -> None:
        """Delete what is older than the retention, one small batch (one short transaction)
        at a time: at once again while batches come back full, else after a pause. Workers
        purging at once take different rows (``storage.retention``)."""
        pause = min(RETENTION_SECONDS, older_than_ms / 2000)
        while True:
            full = False
            async with self._surviving(
                "worker.retention_failed", "worker.retention_loop_failed", pause=0.0
            ):
                purged = await self.engine.storage.purge(older_than_ms, PURGE_BATCH)
                if purged.runs or purged.tokens:
                    log.info(
                        "retention.purged", worker=self.id, runs=purged.runs, tokens=purged.tokens
                    )
                full = PURGE_BATCH in (purged.runs, purged.tokens)
            await anyio.sleep(_BETWEEN_FULL_BATCHES if full else pause)

    async def _notice_loop(self, notifier: Notifier) -> None:
        """Tell approvers what waits for them: the notices requests, reminders and
        escalations left in the database, a batch at a time."""
        while True:
            sent = 0
            async with self._surviving(
                "worker.notices_failed", "worker.notice_loop_failed", pause=self.poll_seconds
            ):
                sent = await deliver_notices(self.engine, notifier)
            await anyio.sleep(0 if sent else self.poll_seconds)

    async def _public_url_loop(self) -> None:
        """Follow the address the API server records: callback URLs made here point at where
        it listens, also when it started after this worker or moved to another port."""
        while True:
            await anyio.sleep(PUBLIC_URL_SECONDS)
            async with self._surviving(
                "worker.public_url_failed", "worker.public_url_loop_failed", pause=0.0
            ):
                await follow_public_url(self.engine.signer, self.engine.storage)

    async def _lease_loop(self) -> None:
        """Renew the leases of running attempts (and the worker's heartbeat, in the same
        transaction; an idle worker beats alone); stop attempts whose run was canceled.

        Each attempt's lease is extended here only when the database says it renewed it, and
        ``_expiry_loop`` stops the attempt before that lease can run out. The database expires
        a lease ``lease_ms`` after the renewal's clock reading, taken before this loop sent
        it, so the deadline kept here is never later.
        """
        renew_every = self.lease_ms / 3000
        renewed = anyio.current_time()
        while True:
            await anyio.sleep(min(self.poll_seconds, renew_every))
            async with self._surviving(
                "worker.lease_renewal_failed", "worker.lease_loop_failed", pause=0.0
            ):
                renewed = await self._lease_turn(renewed, renew_every)

    async def _lease_turn(self, renewed: float, renew_every: float) -> float:
        """Stop what this worker lost; renew the leases if due. Returns the last renewal."""
        storage = self.engine.storage
        self._peers = await storage.serving()  # whose turn a notification is (_takes)
        running = sorted(self._attempts_by_run)
        if running:
            for run_id in await storage.lost_runs(self.id, running):
                self._cancel(run_id)
        if anyio.current_time() - renewed < renew_every:
            return renewed
        sent = anyio.current_time()
        # and the heartbeat; a run it did not renew was lost meanwhile: its lease is not
        # extended here, so _expiry_loop stops its attempt in time
        kept = await storage.renew_leases(self.id, running, self.lease_ms)
        for run_id in kept:
            attempt = self._attempts_by_run.get(run_id)
            if attempt is not None and attempt.lease_until is not None:
                attempt.lease_until = sent + self.lease_ms / 1000
        return anyio.current_time()

    async def _expiry_loop(self) -> None:
        """Stop each attempt shortly before its lease can run out in the database.

        Apart from the lease loop and without any database call of its own: over a slow or
        cut link a renewal, or any read before it, can take longer than the lease, and the
        attempt must be stopped on time all the same, before another worker may take its run
        (two attempts of one run must never execute at the same time). Its margin
        (``_lease_margin``) covers the pause between its turns on a busy machine.
        """
        while True:
            await anyio.sleep(self._lease_margin / 5)
            horizon = anyio.current_time() + self._lease_margin
            for attempt in list(self._attempts_by_run.values()):
                if attempt.lease_until is not None and attempt.lease_until <= horizon:
                    self._stop_expiring(attempt)

    async def _hold_lease(self, attempt: _Attempt) -> None:
        """Before an attempt begins, and before each durable call runs new work (a step's
        body, a token, a wait): stop it here if its lease may run out first.

        A process that was paused (SIGSTOP, a frozen VM, a long pause of the machine) wakes
        with attempts whose runs another worker may have taken meanwhile; the expiry loop
        stops them at its next turn, but what they would start before that turn would run
        beside the new owner.
        """
        horizon = anyio.current_time() + self._lease_margin
        if attempt.lease_until is not None and attempt.lease_until > horizon:
            return
        self._stop_expiring(attempt)
        await anyio.lowlevel.checkpoint()  # the cancellation lands here

    def _stop_expiring(self, attempt: _Attempt) -> None:
        if attempt.lease_until is not None:  # logged once
            log.warning("run.lease_expiring", run_id=attempt.run_id, worker=self.id)
            attempt.lease_until = None
        attempt.scope.cancel()

    def _cancel(self, run_id: str) -> None:
        attempt = self._attempts_by_run.get(run_id)
        if attempt is not None:
            attempt.scope.cancel()


_frozen_by = 0
"""How many workers of this process run with the heap frozen (``_heap_frozen``)."""


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """While workers run, the objects that existed when the first one started (modules,
    tasks, models, the engine) are left out of the collector's full collections
    (``gc.freeze``): they live as long as the worker, and walking them at each full
    collection cost a worker 7% of its CPU per token-wait run. Objects still die when
    nothing refers to them; a cycle among them that became garbage meanwhile is collected
    once the last worker of the process stopped (``gc.unfreeze``). A process that froze its
    heap itself keeps it as it chose."""
    global _frozen_by
    if _frozen_by == 0 and gc.get_freeze_count():
        yield  # frozen by the application: not ours to undo
        return
    if _frozen_by == 0:
        gc.freeze()
    _frozen_by += 1
    try:
        yield
    finally:
        _frozen_by -= 1
        if _frozen_by == 0:
            gc.unfreeze()


def _outcome(outcome: RunStatus | Handoff | None) -> str:
    """How an attempt ended, as ``waitpoint_attempt_duration_seconds`` labels it: its run's
    status when it finished it (``completed``, ``failed``, ``timed_out``), ``retrying``
    (queued again after a failure), or ``released`` (parked on a wait, handed back, or
    stopped by the database: the run goes on in a later attempt)."""
    if outcome is None or isinstance(outcome, Handoff):
        return "released"
    if outcome is RunStatus.QUEUED:
        return "retrying"
    return outcome.value.lower()


def _earliest(*moments: int | None) -> int | None:
    """The earliest of the moments given (None: none)."""
    return min((m for m in moments if m is not None), default=None)


async def _first_of(events: list[asyncio.Event], timeout: float) -> None:
    """Return when any of the events is set, or after ``timeout`` seconds."""
    if timeout <= 0 or any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
