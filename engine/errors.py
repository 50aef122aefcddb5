"""Every error the engine raises, in one place.

    EngineError
    ├── ValidationError              bad input: a duration, a tag, a payload, completion data
    ├── ConfigurationError           the engine cannot start as configured
    ├── NotInRunError                a durable call made outside a run
    ├── NondeterminismError          replay met a different call than the journal recorded
    ├── ConcurrentWaitError          two waits at once in one run, not through the group API
    ├── DurableCallInStepError       a durable call made inside a step's body
    ├── AbortTaskRunError            raised by a task to fail its run at once, without retries
    ├── NotFoundError
    │   ├── TaskNotFoundError
    │   ├── RunNotFoundError
    │   ├── TokenNotFoundError
    │   ├── ScheduleNotFoundError
    │   └── ApprovalNotFoundError
    ├── TokenNotWaitingError         completing a token that timed out or was cancelled
    ├── ApprovalClosedError          a vote on an approval that already closed (kept as late)
    ├── VoteRefusedError             a vote by someone not asked, or a second one where
    │                                changing a vote is not allowed
    ├── RunStateError                the run's status forbids it: retrying a run that did not
    │                                fail, pausing or resuming a finished one
    ├── WaitpointError               what a failed wait carries in ``WaitResult.error``
    │   ├── WaitpointTimeoutError
    │   └── WaitpointCancelledError
    ├── StepFailedError              a journaled step error whose class cannot be rebuilt
    ├── MaxDurationExceededError     the run executed longer than its task's max_duration
    ├── RunFailedError               ``wait_for_run`` on a run that did not complete
    ├── ChildRunError                what a child run that did not complete gives its parent
    ├── RunWaitTimeoutError          ``wait_for_run`` gave up (also a ``TimeoutError``)
    └── StorageError                 the database failed; nothing above storage sees driver errors
        └── LeaseLostError           this worker no longer owns the run; its write was refused

``AuthError`` is not an ``EngineError``: it is the API's answer to a caller (401 or 403), raised
where a credential is checked (``engine.signing``, ``engine.api.auth``) and never by the engine.

``Suspended`` is not an error: it is control flow (a ``BaseException``, so that a task's
``except Exception:`` cannot swallow it) raised when an attempt ends before the task did (the
run parks on a waitpoint, or the attempt is interrupted; see ``engine.context``) and handled in
exactly one place, the attempt boundary in ``engine.runtime``. A task that catches it anyway
changes nothing: the attempt ended when it was raised.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class EngineError(Exception):
    """Root of every error the engine raises."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class ValidationError(EngineError, ValueError):
    """Input was refused; the message names the field and what is wrong. Nothing was changed."""


class ConfigurationError(EngineError):
    """The engine cannot start as configured (database URL, missing extra, no Engine)."""


class NotInRunError(EngineError):
    """This call only works inside a running task (a function decorated with @task)."""


class NondeterminismError(EngineError):
    """Replay diverged from the journal: the task code changed or is not deterministic.

    Code between durable calls must make the same calls in the same order on every replay;
    move clock reads, randomness and I/O into ``step(...)``.
    """

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"replay expected {expected!r} (recorded in the journal) but the task called "
            f"{actual!r}. The task code changed or is not deterministic between durable calls; "
            "move clock reads, randomness and I/O into step(...), or finish old runs before "
            "deploying the change."
        )


class ConcurrentWaitError(EngineError):
    """A run started a second wait while another was in progress.

    A run waits on one thing at a time. To wait on several tokens, use
    ``wait_for_tokens([...], mode="all" | "any")``; for several child runs,
    ``batch_trigger_and_wait``. The run fails at once, without retries.
    """


class DurableCallInStepError(EngineError):
    """A durable call (step, token, wait, child run) was made inside the body of a step.

    A step's body runs once and only its result is journaled, so what it does inside cannot
    be replayed. Make durable calls in the task function, between steps. The run fails at
    once, without retries.
    """


class AbortTaskRunError(EngineError):
    """Raise this in a task to fail its run at once: no retries, whatever the retry policy."""


class NotFoundError(EngineError):
    """No object with that id exists."""


class RunStateError(EngineError):
    """The run's status does not allow this (a retry of a run that did not fail, a pause of
    a finished run); the message says what it is and what would."""


class TaskNotFoundError(NotFoundError):
    """No task with that id is known to this process or to any worker's registry."""

    def __init__(self, task_id: str, known: list[str]) -> None:
        self.task_id = task_id
        self.known = known
        listing = ", ".join(sorted(known)) if known else "none (start a worker to register tasks)"
        super().__init__(f"unknown task {task_id!r}; known tasks: {listing}")


class RunNotFoundError(NotFoundError):
    """No run with that id exists."""


class TokenNotFoundError(NotFoundError):
    """No waitpoint token with that id exists."""


class ScheduleNotFoundError(NotFoundError):
    """No schedule with that id exists (``engine.schedules``)."""


class ApprovalNotFoundError(NotFoundError):
    """No approval with that id exists (``engine.approvals``)."""


class ApprovalClosedError(EngineError):
    """The approval already closed (approved, rejected or timed out): the vote was refused
    and kept as a late vote."""

    def __init__(self, approval_id: str, status: str, approved: bool | None) -> None:
        self.approval_id = approval_id
        self.status = status
        self.approved = approved
        how = "was approved" if approved else "was rejected" if approved is False else "closed"
        if status == "TIMED_OUT":
            how = "timed out"
        super().__init__(f"approval {approval_id} {how}; it takes no more votes")


class VoteRefusedError(EngineError):
    """The vote cannot count: its approver is not asked by the approval, or voted already
    and the approval does not allow changing a vote. The message says which."""


class TokenNotWaitingError(EngineError):
    """The token already closed (timed out, cancelled or completed) and cannot be closed again."""

    def __init__(self, token_id: str, status: str, closed_at: datetime | None) -> None:
        self.token_id = token_id
        self.status = status
        self.closed_at = closed_at
        when = closed_at.isoformat() if closed_at else "an unknown time"
        how = "timed out" if status == "TIMED_OUT" else status.lower().replace("_", " ")
        super().__init__(
            f"token {token_id} already {how} at {when}; it can no longer be completed or cancelled"
        )


class WaitpointError(EngineError):
    """A wait ended without completion data."""


class WaitpointTimeoutError(WaitpointError):
    """The token timed out before anyone completed it."""


class WaitpointCancelledError(WaitpointError):
    """The token was cancelled before anyone completed it; ``reason`` is why, as the canceller
    wrote it (None when they gave none)."""

    def __init__(self, message: str | None = None, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class StepFailedError(EngineError):
    """A step failed in an earlier execution and its exception class could not be rebuilt."""

    def __init__(self, message: str, error_type: str = "Exception") -> None:
        self.error_type = error_type
        super().__init__(f"{error_type}: {message}")


class MaxDurationExceededError(EngineError):
    """The run spent longer than its task's ``max_duration`` executing (waits do not count)."""


class RunFailedError(EngineError):
    """The run ended without completing (failed or canceled)."""

    def __init__(self, run_id: str, status: str, error: Any = None) -> None:
        self.run_id = run_id
        self.status = status
        self.error = error
        detail = f": {error.get('message')}" if isinstance(error, dict) else ""
        super().__init__(f"run {run_id} ended {status}{detail}")


class ChildRunError(EngineError):
    """A child run ended without completing; ``run_id``, ``status`` and ``error`` say how."""

    def __init__(self, run_id: str, status: str, error: Any = None) -> None:
        self.run_id = run_id
        self.status = status
        self.error = error
        detail = f": {error.get('message')}" if isinstance(error, dict) else ""
        super().__init__(f"child run {run_id} ended {status}{detail}")


class RunWaitTimeoutError(EngineError, TimeoutError):
    """The run did not finish within the time given to wait_for_run."""


class StorageError(EngineError):
    """The database failed to carry out an operation."""


class StorageUnavailableError(StorageError):
    """The database could not be reached (refused, too many clients, connection lost, locked
    for too long). Transient: a run meeting it is handed back and tried again, not failed."""


class LeaseLostError(StorageError):
    """This worker's lease on the run expired or was taken over; its write was refused."""


class AuthError(Exception):
    """A caller without the right credential; the API answers ``status`` (401 or 403) with
    this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Suspended(BaseException):
    """The attempt ended (the run parked on a waitpoint); the run resumes by replay later."""
