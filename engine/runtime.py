"""Running one attempt of a run: the journal, replay, and the attempt boundary.

A run is executed by calling its task function from the top every time it resumes. Each
durable call (``step``, ``create_token``, ``wait_for_token``) gets a key (its kind, name and
occurrence: ``step:charge#0``) and a position (the order in which calls started). A call
whose key is in the journal returns the recorded outcome without running anything; a new call
runs and is recorded. A new call made where the journal holds an unconsumed entry from an
earlier position means the code changed underneath the run: ``NondeterminismError``.

``Suspended`` (raised by a wait that parks the run) is caught here and nowhere else.

Always-replay mode (``WAITPOINT_ALWAYS_REPLAY=1``, ``Worker(always_replay=True)``) ends the
attempt after every new durable call, not only at waits: once this attempt journaled a new
call, the next new call raises ``ReplayRequested`` (and a task that returns or raises is not
finished yet), the worker hands the run back to the queue, and the next claim replays the
whole journal. A run that never waits is then replayed as often as it makes durable calls, which
flushes out nondeterminism and replay bugs in tests instead of in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

import anyio
import structlog
from pydantic import BaseModel

from .errors import (
    AbortTaskRunError,
    ConcurrentWaitError,
    EngineError,
    LeaseLostError,
    MaxDurationExceededError,
    NondeterminismError,
    NotInRunError,
    StorageError,
    StorageUnavailableError,
    Suspended,
    ValidationError,
)
from .models import ClaimedRun, JournalEntry, RunError, RunStatus
from .registry import TaskDefinition
from .storage import JournalWrite, Storage

log = structlog.get_logger("engine.runtime")

_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("waitpoint_run")


class ReplayRequested(Suspended):
    """Always-replay mode: this attempt journaled a new call; end it and replay from the top."""


class Handoff(enum.Enum):
    """What ``run_attempt`` returns when the caller must hand the run back to the queue."""

    REPLAY = "replay"
    """Always-replay mode: release the run (no new attempt) so the next claim replays it."""


class RunContext:
    """The state of one attempt, found by durable calls through a context variable."""

    def __init__(self, storage: Storage, run: ClaimedRun, *, always_replay: bool = False) -> None:
        self.storage = storage
        self.run = run
        self.always_replay = always_replay
        self.journaled_new = False
        """This attempt journaled a durable call that was not in the journal when it began."""
        self._entries: dict[str, JournalEntry] = {}
        for entry in run.journal:
            # a step's recorded error belongs to the attempt that recorded it; a new attempt
            # runs the step again
            if entry.is_error and entry.attempt != run.attempt:
                continue
            self._entries[entry.key] = entry
        self._unconsumed = dict(self._entries)
        self._occurrences: dict[str, int] = {}
        self._position = 0
        self._started = time.monotonic()
        self.divergence: NondeterminismError | None = None
        self.fatal: EngineError | None = None
        """An error that fails the run whatever the task does with it (no retries)."""
        self._waiting = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metadata: dict[str, Any] = dict(run.metadata or {})

    @staticmethod
    def current() -> RunContext:
        try:
            return _current.get()
        except LookupError:
            raise NotInRunError() from None

    @staticmethod
    def find() -> RunContext | None:
        return _current.get(None)

    @property
    def run_id(self) -> str:
        return self.run.id

    def elapsed_ms(self) -> int:
        """How long this attempt has been executing."""
        return int((time.monotonic() - self._started) * 1000)

    def next_call(self, kind: str, name: str = "") -> tuple[str, int]:
        """The key and position of the durable call being made now (and who makes it)."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        base = f"{kind}:{name}" if name else kind
        occurrence = self._occurrences.get(base, 0)
        self._occurrences[base] = occurrence + 1
        position = self._position
        self._position += 1
        return f"{base}#{occurrence}", position

    def recorded(self, key: str, position: int) -> JournalEntry | None:
        """The journaled outcome of this call, or None if it is new (and may run)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._unconsumed.pop(key, None)
            return entry
        for earlier in self._unconsumed.values():
            if earlier.position <= position:
                self.divergence = NondeterminismError(expected=earlier.key, actual=key)
                raise self.divergence
        if self.always_replay and self.journaled_new:
            raise ReplayRequested()
        return None

    def journaled(self) -> None:
        """A new call's outcome was just written to the journal (by any durable call)."""
        self.journaled_new = True

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Mark a wait in progress; a second one started meanwhile fails the run."""
        if self._waiting:
            self.fatal = ConcurrentWaitError(
                f"{what} was called while another wait of this run was in progress; a run "
                "waits on one thing at a time: use wait_for_tokens([...]) for several tokens, "
                "batch_trigger_and_wait for several child runs"
            )
            raise self.fatal
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    async def cancel_leftovers(self) -> None:
        """Cancel coroutines of this attempt still running (e.g. siblings in a gather)."""
        current = asyncio.current_task()
        left = [t for t in self._tasks if t is not current and not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)

    def journal_write(
        self, key: str, position: int, value: Any, *, is_error: bool = False
    ) -> JournalWrite:
        return JournalWrite(
            run_id=self.run.id,
            epoch=self.run.epoch,
            attempt=self.run.attempt,
            key=key,
            position=position,
            is_error=is_error,
            value=value,
        )

    async def record(
        self,
        key: str,
        position: int,
        value: Any,
        *,
        is_error: bool = False,
        duration_ms: int | None = None,
    ) -> None:
        write = self.journal_write(key, position, value, is_error=is_error)
        await self.storage.append_journal(replace(write, duration_ms=duration_ms))
        self.journaled()

    def check_finished_replay(self) -> None:
        """A run that returns must have made every call its journal recorded."""
        if self.divergence is not None:
            raise self.divergence
        leftover = sorted(self._unconsumed.values(), key=lambda e: e.position)
        if leftover:
            self.divergence = NondeterminismError(
                expected=leftover[0].key, actual="the task returning"
            )
            raise self.divergence


M = TypeVar("M", bound=BaseModel)


def as_journaled(model: M) -> M:
    """``model`` as a replay rebuilds it from the journal: fields excluded from JSON dropped.

    A durable call returns this on its first execution too, so task code sees the same value
    whether the call ran now or was replayed.
    """
    return type(model).model_validate(model.model_dump(mode="json", by_alias=True))


def error_of(exc: BaseException) -> RunError:
    """The JSON-able description of an exception kept on a run or a journaled step."""
    cls = type(exc)
    return RunError(
        name=f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__ != "builtins"
        else cls.__name__,
        message=str(exc),
        stack_trace="".join(traceback.format_exception(exc)),
    )


async def run_attempt(
    storage: Storage, run: ClaimedRun, definition: TaskDefinition, *, always_replay: bool = False
) -> RunStatus | Handoff | None:
    """Execute one attempt of ``run``; returns the status it reached, or None if it parked.

    Every exit is written through the lease epoch: a worker that lost the run changes nothing.
    With ``always_replay`` it may return ``Handoff.REPLAY``: the caller must then
    ``hand_back`` the run (once it no longer counts the attempt as running).
    """
    context = RunContext(storage, run, always_replay=always_replay)
    reset = _current.set(context)
    bound = structlog.contextvars.bind_contextvars(
        run_id=run.id, task=run.task_id, attempt=run.attempt
    )
    log.info("run.started", resumed=bool(run.journal))
    try:
        return await _execute(storage, context, definition)
    finally:
        await context.cancel_leftovers()
        structlog.contextvars.reset_contextvars(**bound)
        _current.reset(reset)


async def _execute(
    storage: Storage, context: RunContext, definition: TaskDefinition
) -> RunStatus | Handoff | None:
    run = context.run
    try:
        output = await _call_task(context, definition)
        context.check_finished_replay()
        if context.always_replay and context.journaled_new:
            # finish only from an attempt that replayed every call: the same return value
            # must come out of a pure replay
            log.info("run.replay_before_finish")
            return Handoff.REPLAY
        await storage.finish_run(
            run.id, run.epoch, RunStatus.COMPLETED, output, None, context.elapsed_ms()
        )
    except Suspended as suspended:
        if context.fatal is not None:  # a concurrent wait: the parked run fails all the same
            return await _fail(storage, context, definition, context.fatal)
        if isinstance(suspended, ReplayRequested):
            log.info("run.replay_requested")
            return Handoff.REPLAY
        log.info("run.waiting")
        # only now, with the task's stack unwound, may another worker start the run
        with anyio.CancelScope(shield=True):
            await _release(storage, run, None)
        return None
    except LeaseLostError as exc:
        log.warning("run.lease_lost", reason=str(exc))
        return None
    except StorageUnavailableError as exc:
        # the database, not the task, failed: the run is tried again (handed back now if the
        # database answers, else rescued when its lease runs out), never failed for it
        log.error("run.storage_unavailable", error=str(exc))
        with anyio.CancelScope(shield=True):
            await _release(storage, run)
        return None
    except asyncio.CancelledError:
        # the worker is shutting down: hand the run back so another worker picks it up, and
        # finish doing so before the worker (and its storage) may close
        with anyio.CancelScope(shield=True):
            await _release(storage, run)
        raise
    except Exception as exc:
        if _replay_before_failing(context, exc):
            log.info("run.replay_before_failing", error=str(exc))
            return Handoff.REPLAY
        return await _fail(storage, context, definition, exc)
    log.info("run.completed")
    return RunStatus.COMPLETED


def _replay_before_failing(context: RunContext, exc: Exception) -> bool:
    """Always-replay mode: a run fails (or retries) only from an attempt that replayed all.

    Not when the engine itself failed it (nondeterminism, a concurrent wait) or it ran out
    of time: those end the run now.
    """
    return (
        context.always_replay
        and context.journaled_new
        and context.divergence is None
        and context.fatal is None
        and not isinstance(exc, MaxDurationExceededError)
    )


async def _call_task(context: RunContext, definition: TaskDefinition) -> Any:
    """Call the task function, within what is left of its ``max_duration``."""
    payload = definition.parse_payload(context.run.payload)
    max_ms = context.run.max_duration_ms or definition.max_duration_ms
    if max_ms is None:
        return await definition.fn(payload)
    left_ms = max_ms - context.run.executed_ms
    limit = f"max_duration of {max_ms} ms"
    if left_ms <= 0:
        raise MaxDurationExceededError(f"the run already executed longer than its {limit}")
    try:
        async with asyncio.timeout(left_ms / 1000) as scope:
            return await definition.fn(payload)
    except TimeoutError as exc:
        if scope.expired():
            raise MaxDurationExceededError(f"the run executed longer than its {limit}") from exc
        raise


async def _fail(
    storage: Storage, context: RunContext, definition: TaskDefinition, exc: Exception
) -> RunStatus | None:
    run = context.run
    if context.divergence is not None or context.fatal is not None:
        # the task may have caught it; the run still cannot go on
        exc = context.divergence or context.fatal or exc
    error = error_of(exc)
    final = isinstance(
        exc,
        NondeterminismError
        | ValidationError
        | MaxDurationExceededError
        | ConcurrentWaitError
        | AbortTaskRunError,
    )
    status = RunStatus.TIMED_OUT if isinstance(exc, MaxDurationExceededError) else RunStatus.FAILED
    max_attempts = run.max_attempts or definition.retry.max_attempts
    elapsed = context.elapsed_ms()
    try:
        if not final and run.attempt < max_attempts:
            delay = definition.retry.delay_ms(run.attempt)
            await storage.retry_run(run.id, run.epoch, delay, error, elapsed)
            log.warning("run.retrying", error=error.message, delay_ms=delay)
            return RunStatus.QUEUED
        await storage.finish_run(run.id, run.epoch, status, None, error, elapsed)
    except LeaseLostError as lost:
        log.warning("run.lease_lost", reason=str(lost))
        return None
    except StorageError as failed:
        log.error("run.fail_not_recorded", error=str(failed))
        return None
    log.error("run.failed", status=status.value, error=error.message, error_type=error.name)
    return status


async def hand_back(storage: Storage, run: ClaimedRun) -> None:
    """Always-replay mode: put the run back in the queue, not as a new attempt or a retry."""
    await _release(storage, run, "run.handed_back")


async def _release(storage: Storage, run: ClaimedRun, event: str | None = "run.released") -> None:
    try:
        await storage.release_run(run.id, run.epoch)
        if event is not None:
            log.info(event, run_id=run.id)
    except StorageError as exc:
        log.warning("run.release_failed", run_id=run.id, error=str(exc))
