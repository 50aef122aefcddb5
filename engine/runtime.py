"""Running one attempt of a run, and the attempt boundary: how the attempt ends.

The task function is called from the top (``engine.context`` replays what the journal holds).
When it returns or raises, or when a durable call ended the attempt early, this module alone
decides what is written:

- the attempt ended early (``RunContext.stopped_by``) for an error the engine raised
  (nondeterminism, two waits at once, a durable call inside a step): the run fails for good,
  whatever the task did with the error;
- it parked (``Suspended``): its coroutines are cancelled, then its lease is released; the
  run resumes by replay when the wait ends, whatever the task did after the wait raised;
- it lost its lease: nothing is written (another worker holds the run);
- the database failed it (``AttemptInterrupted``, ``StorageUnavailableError``): the run is
  handed back to the queue, never failed for it;
- always-replay mode asked for a replay (``ReplayRequested``): the caller hands it back;
- otherwise the task's own outcome: its return value finishes the run, its exception fails
  it or, under a retry policy, queues the next attempt. A retry runs again the steps whose
  errors failed the attempt (``RunContext.escaped_steps``) and replays everything else.

Every write here is fenced by the lease epoch: a worker that lost the run changes nothing.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import anyio

from . import logs, tracing
from .context import AttemptInterrupted, HoldLease, ReplayRequested, RunContext
from .errors import (
    AbortTaskRunError,
    ConcurrentWaitError,
    DurableCallInStepError,
    EngineError,
    LeaseLostError,
    MaxDurationExceededError,
    NondeterminismError,
    StorageError,
    Suspended,
    ValidationError,
)
from .journal import error_of, failure_site
from .models import ClaimedRun, RunStatus
from .registry import TaskDefinition
from .signing import CallbackSigner
from .storage import Storage

log = logs.get_logger("engine.runtime")

STORAGE_RETRY_MS = 1000
"""A run the database failed is claimable again after this long: retried, never in a loop."""

_FINAL = (
    NondeterminismError,
    ValidationError,
    MaxDurationExceededError,
    ConcurrentWaitError,
    DurableCallInStepError,
    AbortTaskRunError,
)
"""Errors that fail a run at once, whatever its retry policy."""


class Handoff(enum.Enum):
    """What ``run_attempt`` returns when the caller must hand the run back to the queue."""

    REPLAY = "replay"
    """Always-replay mode: release the run (no new attempt) so the next claim replays it."""


class _Returned:
    """The task function returned ``output``."""

    def __init__(self, output: Any) -> None:
        self.output = output


async def run_attempt(
    storage: Storage,
    signer: CallbackSigner,
    run: ClaimedRun,
    definition: TaskDefinition,
    *,
    always_replay: bool = False,
    hold_lease: HoldLease | None = None,
) -> RunStatus | Handoff | None:
    """Execute one attempt of ``run``; returns the status it reached, or None if it parked.

    Every exit is written through the lease epoch: a worker that lost the run changes nothing.
    With ``always_replay`` it may return ``Handoff.REPLAY``: the caller must then
    ``hand_back`` the run (once it no longer counts the attempt as running). ``hold_lease``
    is awaited before each durable call runs new work (``RunContext.hold_lease``).
    """
    if tracing.tracer() is None:
        return await _attempt(storage, signer, run, definition, always_replay, hold_lease)
    attributes = {
        "waitpoint.run_id": run.id,
        "waitpoint.task_id": run.task_id,
        "waitpoint.attempt": run.attempt,
        "waitpoint.resumed": bool(run.journal),
    }
    with tracing.span(f"attempt {run.task_id}", parent=run.trace_context, attributes=attributes):
        attempt = tracing.traceparent()
        if attempt is not None:
            try:  # for the run's span, whichever worker ends the run
                await storage.record_attempt_trace(run.id, run.epoch, attempt)
            except StorageError as exc:  # a trace is not worth an attempt
                log.warning("run.trace_unrecorded", error=str(exc))
        outcome = await _attempt(storage, signer, run, definition, always_replay, hold_lease)
    if isinstance(outcome, RunStatus) and outcome.is_terminal:
        tracing.emit(
            f"run {run.task_id}",
            start_ms=run.created_ms,
            end_ms=storage.now_ms(),
            parent=run.trace_context,
            attributes={**attributes, "waitpoint.status": outcome.value},
            links_to=[*run.trace_attempts, *([attempt] if attempt else [])],
        )
    return outcome


async def _attempt(
    storage: Storage,
    signer: CallbackSigner,
    run: ClaimedRun,
    definition: TaskDefinition,
    always_replay: bool,
    hold_lease: HoldLease | None,
) -> RunStatus | Handoff | None:
    context = RunContext(storage, signer, run, always_replay=always_replay, hold_lease=hold_lease)
    entered = context.enter()
    bound = logs.bind(run_id=run.id, task=run.task_id, attempt=run.attempt)
    log.info("run.started", resumed=bool(run.journal))
    try:
        try:
            ended: _Returned | BaseException = _Returned(await _call_task(context, definition))
        except asyncio.CancelledError:
            # the worker is shutting down or lost the lease: hand the run back so another
            # worker picks it up, and finish doing so before the worker (and its storage) close
            with anyio.CancelScope(shield=True):
                await context.cancel_leftovers()
                await _release(storage, run)
            raise
        except (Exception, Suspended) as exc:
            ended = exc
        with anyio.CancelScope(shield=True):
            # nothing of this attempt may still run once another worker can start the run
            await context.cancel_leftovers()
        return await _end(storage, context, definition, ended)
    finally:
        logs.unbind(bound)
        RunContext.leave(entered)


async def _end(
    storage: Storage, context: RunContext, definition: TaskDefinition, ended: Any
) -> RunStatus | Handoff | None:
    """Write how the attempt ended (see the module docstring for the order of the rules)."""
    run = context.run
    stopped = context.stopped_by
    if context.fatal is not None:
        return await _fail(storage, context, definition, context.fatal)
    if isinstance(stopped, AttemptInterrupted):
        await _interrupted(storage, run, stopped.cause)
        return None
    if isinstance(stopped, ReplayRequested):
        log.info("run.replay_requested")
        return Handoff.REPLAY
    if isinstance(stopped, Suspended):
        log.info("run.waiting")
        with anyio.CancelScope(shield=True):
            await _release(storage, run, None)
        return None
    if isinstance(ended, StorageError):  # e.g. complete_token from task code
        await _interrupted(storage, run, ended)
        return None
    if isinstance(ended, Exception):
        if _replay_before_failing(context, ended):
            log.info("run.replay_before_failing", error=str(ended))
            return Handoff.REPLAY
        return await _fail(storage, context, definition, ended)
    if not isinstance(ended, _Returned):  # Suspended raised by the task itself
        error = EngineError("the task raised Suspended itself; it is the engine's to raise")
        return await _fail(storage, context, definition, error)
    return await _finish(storage, context, definition, ended.output)


async def _finish(
    storage: Storage, context: RunContext, definition: TaskDefinition, output: Any
) -> RunStatus | Handoff | None:
    run = context.run
    try:
        context.check_finished_replay()
    except NondeterminismError as exc:
        return await _fail(storage, context, definition, exc)
    if context.always_replay and context.journaled_new:
        # finish only from an attempt that replayed every call: the same return value must
        # come out of a pure replay
        log.info("run.replay_before_finish")
        return Handoff.REPLAY
    try:
        await storage.finish_run(
            run.id, run.epoch, RunStatus.COMPLETED, output, None, context.elapsed_ms()
        )
    except StorageError as exc:
        await _interrupted(storage, run, exc)
        return None
    except EngineError as exc:  # the output is not JSON
        return await _fail(storage, context, definition, exc)
    log.info("run.completed")
    return RunStatus.COMPLETED


async def _interrupted(storage: Storage, run: ClaimedRun, cause: StorageError) -> None:
    """The database, not the task, ended the attempt: the run is tried again, never failed.

    Handed back now if the database answers, else rescued when its lease runs out; with its
    lease lost, another worker holds the run and nothing is written.
    """
    if isinstance(cause, LeaseLostError):
        log.warning("run.lease_lost", reason=str(cause))
        return
    log.error("run.storage_failed", error=str(cause), retry_in_ms=STORAGE_RETRY_MS)
    with anyio.CancelScope(shield=True):
        await _release(storage, run, delay_ms=STORAGE_RETRY_MS)


def _replay_before_failing(context: RunContext, exc: Exception) -> bool:
    """Always-replay mode: a run fails (or retries) only from an attempt that replayed all.

    Not when it ran out of time: that ends the run now.
    """
    return (
        context.always_replay
        and context.journaled_new
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
    error = error_of(exc)
    status = RunStatus.TIMED_OUT if isinstance(exc, MaxDurationExceededError) else RunStatus.FAILED
    max_attempts = run.max_attempts or definition.retry.max_attempts
    elapsed = context.elapsed_ms()
    attempt = run.attempt - run.attempt_base  # a retry by hand starts the count again
    rerun = context.escaped_steps(exc)  # run again by the next attempt, or a retry by hand
    try:
        if not isinstance(exc, _FINAL) and attempt < max_attempts:
            delay = definition.retry.delay_ms(attempt)
            await storage.retry_run(run.id, run.epoch, delay, error, elapsed, rerun)
            log.warning(
                "run.retrying",
                error=error.message,
                where=failure_site(error.stack_trace),
                delay_ms=delay,
                rerun=rerun,
            )
            return RunStatus.QUEUED
        await storage.finish_run(run.id, run.epoch, status, None, error, elapsed, rerun)
    except LeaseLostError as lost:
        log.warning("run.lease_lost", reason=str(lost))
        return None
    except StorageError as failed:
        log.error("run.fail_not_recorded", error=str(failed))
        return None
    log.error(
        "run.failed",
        status=status.value,
        error=error.message,
        error_type=error.name,
        where=failure_site(error.stack_trace),
    )
    return status


async def hand_back(storage: Storage, run: ClaimedRun) -> None:
    """Always-replay mode: put the run back in the queue, not as a new attempt or a retry."""
    await _release(storage, run, "run.handed_back")


async def _release(
    storage: Storage, run: ClaimedRun, event: str | None = "run.released", delay_ms: int = 0
) -> None:
    try:
        await storage.release_run(run.id, run.epoch, delay_ms)
        if event is not None:
            log.info(event, run_id=run.id)
    except StorageError as exc:
        log.warning("run.release_failed", run_id=run.id, error=str(exc))
