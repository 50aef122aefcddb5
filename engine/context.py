"""One attempt of a run as durable calls see it, and the protocol every durable call follows.

A run executes by calling its task function from the top every time it resumes. Every durable
call (``step``, ``create_token``, ``wait_for_token``, ``wait_for_tokens``, ``sleep``, child
runs) goes through ``RunContext.durable_call``, which alone knows the protocol:

1. refuse the call if this attempt already ended (it parked, failed for good, lost its lease
   or its database) or if it is made inside a step's body;
2. give it a key (``journal.CallKey``) and a position (the order in which calls started);
3. for a wait, refuse a second wait while one is in progress (``ConcurrentWaitError``);
4. look the key up in the journal: a recorded outcome is returned (a step's recorded error
   raised) without running anything, in the order the outcomes were recorded, so calls
   racing each other (``as_completed``, first-of-N) replay the same winner; a new call made
   where the journal holds an unconsumed entry of an earlier position means the code changed
   underneath the run (``NondeterminismError``);
5. otherwise execute it: the call's own storage operation writes its outcome to the journal,
   fenced by the lease epoch, in the same transaction as its effect;
6. a wait that must park ends the attempt with ``Suspended``; a database failure ends it with
   ``AttemptInterrupted`` (the run is handed back, not failed).

Once the attempt ended, whatever the task does afterwards (catch the exception, swallow it in
``gather(..., return_exceptions=True)``, return a value, call more durable functions in a
``finally``) is not a result: ``stopped_by`` says how the attempt ends, and the attempt
boundary (``engine.runtime``) goes by it.

Always-replay mode ends the attempt after every new durable call: once this attempt journaled
a new call, the next new call raises ``ReplayRequested``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import tracing
from .errors import (
    ConcurrentWaitError,
    DurableCallInStepError,
    EngineError,
    NondeterminismError,
    NotInRunError,
    StorageError,
    Suspended,
)
from .journal import CallKey, call_base, decode_error
from .models import ClaimedRun, JournalEntry
from .signing import CallbackSigner
from .storage import JournalWrite, Storage

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("waitpoint_run")
_step_body: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "waitpoint_step_body", default=None
)


class ReplayRequested(Suspended):
    """Always-replay mode: this attempt journaled a new call; end it and replay from the top."""


class AttemptInterrupted(Suspended):
    """The database failed (or the lease was lost) during a durable call: the attempt ends.

    The run is handed back to the queue (or, lease lost, left to the worker that holds it
    now), never failed as if the task had raised: the task did nothing wrong.
    """

    def __init__(self, cause: StorageError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class AttemptOver(Suspended):
    """A durable call made after this attempt ended: the task must unwind, nothing runs."""


class ReachedNewCode(Suspended):
    """A replay check (``checking``) met a call its journal does not hold: from here on the
    code runs for the first time, so there is nothing more to check against the journal."""


@dataclass(frozen=True)
class Recorded:
    """What a new durable call journaled: its value, or (``is_error``) a step's error."""

    value: Any
    is_error: bool = False
    cause: BaseException | None = None
    """The original exception of a failed step (the task sees it as ``__cause__``)."""


Execute = Callable[[JournalWrite], Awaitable[Recorded | None]]
"""Runs a new durable call and journals it with the given write; None: the run parked."""
HoldLease = Callable[[], Awaitable[None]]
"""Returns while the attempt may go on; stops it (cancels it) when its lease may run out."""


WAIT_KINDS = {
    "sleep": "sleep",
    "trigger_and_wait": "child",
    "batch_trigger_and_wait": "children",
    "receive": "message",
    "request_approval": "approval",
}
"""The span name of each kind of wait (``wait <kind>``)."""


class RunContext:
    """The state of one attempt, found by durable calls through a context variable."""

    def __init__(
        self,
        storage: Storage,
        signer: CallbackSigner,
        run: ClaimedRun,
        *,
        always_replay: bool = False,
        checking: bool = False,
        hold_lease: HoldLease | None = None,
    ) -> None:
        self.storage = storage
        self.hold_lease = hold_lease
        """The worker's: awaited before a durable call runs new work, it stops the attempt
        there when its lease may run out first (a process that was paused past its lease
        must not begin a step's body beside the worker that took the run over)."""
        self.checking = checking
        """A replay check (``engine.replay_check``): journaled calls replay, and the first
        call the journal does not hold ends the attempt (``ReachedNewCode``); nothing runs or
        is written."""
        self.signer = signer
        """Presents the tokens the task makes with their callback URLs (storage makes none)."""
        self.run = run
        self.always_replay = always_replay
        self.journaled_new = False
        """This attempt journaled a durable call that was not in the journal when it began."""
        self.stopped_by: BaseException | None = None
        """Why this attempt ended before the task did: a ``Suspended`` (parked, handed back,
        interrupted) or an error that fails the run whatever the task does with it."""
        self.metadata: dict[str, Any] = dict(run.metadata or {})
        self._entries: dict[str, JournalEntry] = {}
        self._order: dict[str, int] = {}
        for order, entry in enumerate(run.journal):  # in the order they were recorded
            if entry.is_error and entry.rerun:  # a step whose error failed an earlier attempt
                continue
            self._entries[entry.key] = entry
            self._order[entry.key] = order
        self._unconsumed = dict(self._entries)
        self._occurrences: dict[str, int] = {}
        self._position = 0
        self._started = time.monotonic()
        self._waiting = False
        self._replaying: dict[int, asyncio.Event] = {}
        self._step_errors: list[tuple[BaseException, str]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replayed = 0
        """Journaled calls this attempt made again (their outcomes replayed)."""
        self.patches: dict[str, bool] = {}
        """What ``patched`` answered for each patch id in this attempt: the same every time."""

    @staticmethod
    def current() -> RunContext:
        try:
            return _current.get()
        except LookupError:
            raise NotInRunError() from None

    @staticmethod
    def find() -> RunContext | None:
        return _current.get(None)

    def enter(self) -> contextvars.Token[RunContext]:
        """Make this the context durable calls find (until ``leave``)."""
        return _current.set(self)

    @staticmethod
    def leave(token: contextvars.Token[RunContext]) -> None:
        _current.reset(token)

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def fatal(self) -> EngineError | None:
        """The error that fails the run whatever the task did with it (no retries)."""
        return self.stopped_by if isinstance(self.stopped_by, EngineError) else None

    def elapsed_ms(self) -> int:
        """How long this attempt has been executing."""
        return int((time.monotonic() - self._started) * 1000)

    async def durable_call(
        self,
        kind: str,
        name: str = "",
        *,
        execute: Execute,
        decode: Callable[[Any], T],
        waits: str | None = None,
    ) -> T:
        """Make one durable call: replay its journaled outcome, or execute and journal it.

        ``decode`` turns the journaled value into what the task gets, on the first execution
        as on every replay. ``waits`` names a call that may park the run (one at a time).
        """
        self.refuse_when_stopped()
        inside = _step_body.get()
        if inside is not None:
            raise self._stop(
                DurableCallInStepError(
                    f"{call_base(kind, name)} was called inside the body of {inside}; durable "
                    "calls belong in the task function, between steps: move it out of the "
                    "step's function, or split the step in two"
                )
            )
        self._track_task()
        key, position = self._next_call(kind, name)
        with self._one_wait(waits):
            entry = self._recorded(key, position)
            if entry is not None:
                await self._replay_in_order(key)
                self.replayed += 1
                return self._outcome(key, entry.value, entry.is_error, decode)
            if self.checking:
                raise self._stop(ReachedNewCode())
            if self.hold_lease is not None:
                await self.hold_lease()
            write = JournalWrite(
                run_id=self.run.id,
                epoch=self.run.epoch,
                attempt=self.run.attempt,
                key=key,
                position=position,
            )
            try:
                recorded = await execute(write)
            except StorageError as exc:
                raise self.interrupted(exc) from exc
            if recorded is None:
                raise self._stop(Suspended())
            if waits is not None and not self.journaled_new and self.run.journal:
                self._trace_resumed_wait(waits)
            self.journaled_new = True
            return self._outcome(key, recorded.value, recorded.is_error, decode, recorded.cause)

    def _trace_resumed_wait(self, waits: str) -> None:
        """The span of the wait this resumed attempt went on from (tracing on): from the last
        call journaled before the run parked to now. Token and group waits make their own
        (from their tokens, linked to who completed them: ``durable._trace_wait``)."""
        if tracing.tracer() is None or waits in ("wait_for_token", "wait_for_tokens"):
            return
        since = max(entry.recorded_ms for entry in self.run.journal)
        kind = WAIT_KINDS.get(waits, waits)
        attributes = {"waitpoint.wait": kind, "waitpoint.run_id": self.run.id}
        tracing.emit(
            f"wait {kind}", start_ms=since, end_ms=self.storage.now_ms(), attributes=attributes
        )

    def refuse_when_stopped(self) -> None:
        """Raise ``AttemptOver`` if this attempt already ended: nothing more may run."""
        if self.stopped_by is not None:
            raise AttemptOver()

    def interrupted(self, exc: StorageError) -> AttemptInterrupted:
        """The attempt ends because the database failed it (the run goes back, not failed)."""
        return self._stop(AttemptInterrupted(exc))

    @contextlib.contextmanager
    def step_body(self, key: str) -> Iterator[None]:
        """Mark code running as the body of step ``key``: durable calls are refused there."""
        reset = _step_body.set(key)
        try:
            yield
        finally:
            _step_body.reset(reset)

    def escaped_steps(self, exc: BaseException) -> list[str]:
        """Keys of the step errors among ``exc`` and its causes: the steps a retry runs again.

        A step error the task caught and went on from is history, replayed by retries like
        a result; the one that failed the attempt (raised as it is, or as the cause of
        another error) is run again by the next attempt.
        """
        keys: set[str] = set()
        seen: set[int] = set()
        pending: list[BaseException] = [exc]
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            keys.update(key for error, key in self._step_errors if error is current)
            pending += [e for e in (current.__cause__, current.__context__) if e is not None]
            if isinstance(current, BaseExceptionGroup):
                pending += current.exceptions
        return sorted(keys)

    def patch_state(self, patch_id: str) -> bool | None:
        """Whether the run took patch ``patch_id``: True when its journal holds the marker,
        False when it holds calls not replayed yet but no marker (the run got past this point
        on code without the patch), None when nothing is left to replay (new code runs now:
        the marker is to be recorded)."""
        if str(CallKey("patch", patch_id, 0)) in self._entries:
            return True
        return False if self._unconsumed else None

    def next_unreplayed(self) -> str | None:
        """The key of the earliest journaled call not made again yet (None: all were)."""
        left = sorted(self._unconsumed.values(), key=lambda e: e.position)
        return left[0].key if left else None

    def check_finished_replay(self) -> None:
        """A run that returns must have made every call its journal recorded."""
        leftover = self.next_unreplayed()
        if leftover is not None:
            raise self._stop(NondeterminismError(expected=leftover, actual="the task returning"))

    async def cancel_leftovers(self) -> None:
        """Cancel coroutines of this attempt still running (e.g. siblings in a gather)."""
        current = asyncio.current_task()
        left = [t for t in self._tasks if t is not current and not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)

    def _stop(self, reason: E) -> E:
        """The attempt ends for ``reason`` (the first reason given wins); returns it to raise."""
        if self.stopped_by is None:
            self.stopped_by = reason
        return reason

    def _track_task(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)

    def _next_call(self, kind: str, name: str) -> tuple[str, int]:
        """The key and position of the durable call being made now."""
        base = call_base(kind, name)
        occurrence = self._occurrences.get(base, 0)
        self._occurrences[base] = occurrence + 1
        position = self._position
        self._position += 1
        return str(CallKey(kind, name, occurrence)), position

    def _recorded(self, key: str, position: int) -> JournalEntry | None:
        """The journaled outcome of this call, or None if it is new (and may run)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._unconsumed.pop(key, None)
            return entry
        for earlier in self._unconsumed.values():
            if earlier.position <= position:
                raise self._stop(NondeterminismError(expected=earlier.key, actual=key))
        if self.always_replay and self.journaled_new:
            raise self._stop(ReplayRequested())
        return None

    @contextlib.contextmanager
    def _one_wait(self, what: str | None) -> Iterator[None]:
        """Mark a wait in progress; a second one started meanwhile fails the run."""
        if what is None:
            yield
            return
        if self._waiting:
            raise self._stop(
                ConcurrentWaitError(
                    f"{what} was called while another wait of this run was in progress; a run "
                    "waits on one thing at a time: use wait_for_tokens([...]) for several "
                    "tokens, batch_trigger_and_wait for several child runs"
                )
            )
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    async def _replay_in_order(self, key: str) -> None:
        """Return replayed outcomes in the order they were recorded.

        Calls replayed together (siblings in a gather, racers in ``as_completed``) start
        together; each yields once so all of them are known, then returns only after every
        one recorded before it returned. So the call that won a race when it ran wins it
        again on every replay.
        """
        order = self._order[key]
        returned = asyncio.Event()
        self._replaying[order] = returned
        try:
            while True:
                await asyncio.sleep(0)
                first = min(self._replaying)
                if first == order:
                    return
                await self._replaying[first].wait()
        finally:
            del self._replaying[order]
            returned.set()

    def _outcome(
        self,
        key: str,
        value: Any,
        is_error: bool,
        decode: Callable[[Any], T],
        cause: BaseException | None = None,
    ) -> T:
        """What the task gets from a journaled value: the decoded value, or the step's error."""
        if is_error:
            error = decode_error(value)
            self._step_errors.append((error, key))
            raise error from cause
        return decode(value)
