"""The error hierarchy and the messages errors carry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

import engine
from engine import errors
from engine.errors import (
    ApprovalClosedError,
    ChildRunError,
    EngineError,
    NondeterminismError,
    NotFoundError,
    RunFailedError,
    RunWaitTimeoutError,
    StepFailedError,
    StorageError,
    Suspended,
    TaskNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    WaitpointError,
)

# ``RunError`` also ends in Error but is the JSON shape of a failed run's error, not an exception
PUBLIC_ERRORS = [
    getattr(engine, name)
    for name in engine.__all__
    if name.endswith("Error") and issubclass(getattr(engine, name), BaseException)
]

# errors whose constructor takes just an optional message
PLAIN_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, EngineError)
    and cls
    not in {
        NondeterminismError,
        TaskNotFoundError,
        TokenNotWaitingError,
        StepFailedError,
        RunFailedError,
        ChildRunError,
        ApprovalClosedError,
    }
]


def test_public_errors_are_all_exported() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, EngineError)
    }
    exported = {cls.__name__ for cls in PUBLIC_ERRORS}
    assert exported == defined


def test_the_only_public_error_name_that_is_not_an_exception_is_run_error() -> None:
    names = [n for n in engine.__all__ if n.endswith("Error")]
    assert [n for n in names if getattr(engine, n) not in PUBLIC_ERRORS] == ["RunError"]
    assert issubclass(engine.RunError, BaseModel)


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda c: c.__name__)
def test_every_public_error_is_an_engine_error(cls: type) -> None:
    assert issubclass(cls, EngineError)
    assert issubclass(cls, Exception)


def test_not_found_errors_share_a_base() -> None:
    for cls in (engine.TaskNotFoundError, engine.RunNotFoundError, engine.TokenNotFoundError):
        assert issubclass(cls, NotFoundError)


def test_waitpoint_timeout_and_cancel_are_waitpoint_errors() -> None:
    assert issubclass(engine.WaitpointTimeoutError, WaitpointError)
    assert issubclass(engine.WaitpointCancelledError, WaitpointError)


def test_lease_lost_is_a_storage_error() -> None:
    assert issubclass(engine.LeaseLostError, StorageError)


def test_suspended_is_base_exception_not_exception() -> None:
    assert issubclass(Suspended, BaseException)
    assert not issubclass(Suspended, Exception)
    assert not issubclass(Suspended, EngineError)


def test_suspended_escapes_except_exception() -> None:
    with pytest.raises(Suspended):
        try:
            raise Suspended()
        except Exception:  # pragma: no cover - must not catch it
            pytest.fail("except Exception caught Suspended")


def test_suspended_is_not_public() -> None:
    assert "Suspended" not in engine.__all__


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)
    with pytest.raises(ValueError, match="bad tag"):
        raise ValidationError("bad tag")


def test_run_wait_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(RunWaitTimeoutError, TimeoutError)
    assert issubclass(RunWaitTimeoutError, asyncio.TimeoutError)
    with pytest.raises(TimeoutError, match="still QUEUED"):
        raise RunWaitTimeoutError("run run_1 is still QUEUED after 1 seconds")


@pytest.mark.parametrize("cls", PLAIN_ERRORS, ids=lambda c: c.__name__)
def test_docstring_is_the_default_message(cls: type[EngineError]) -> None:
    assert cls.__doc__
    error = cls()
    assert str(error) == cls.__doc__.strip()
    assert error.args == (cls.__doc__.strip(),)


@pytest.mark.parametrize("cls", PLAIN_ERRORS, ids=lambda c: c.__name__)
def test_an_explicit_message_replaces_the_docstring(cls: type[EngineError]) -> None:
    assert str(cls("something specific")) == "something specific"


def test_empty_message_falls_back_to_docstring() -> None:
    assert str(engine.RunNotFoundError("")) == "No run with that id exists."


def test_undocumented_subclass_falls_back_to_class_name() -> None:
    class CustomError(EngineError):
        pass

    assert str(CustomError()) == "CustomError"


def test_task_not_found_lists_known_ids_sorted() -> None:
    error = TaskNotFoundError("bill", ["ship", "approve", "refund"])
    assert error.task_id == "bill"
    assert error.known == ["ship", "approve", "refund"]
    assert str(error) == "unknown task 'bill'; known tasks: approve, refund, ship"
    assert isinstance(error, NotFoundError)


def test_task_not_found_without_known_tasks_says_to_start_a_worker() -> None:
    message = str(TaskNotFoundError("bill", []))
    assert message.startswith("unknown task 'bill'; known tasks: none")
    assert "start a worker" in message


def test_nondeterminism_error_names_both_calls() -> None:
    error = NondeterminismError("step:charge#0", "wait_for_token#0")
    message = str(error)
    assert (error.expected, error.actual) == ("step:charge#0", "wait_for_token#0")
    assert "expected 'step:charge#0'" in message
    assert "called 'wait_for_token#0'" in message
    assert message.index("step:charge#0") < message.index("wait_for_token#0")
    assert "step(...)" in message


def test_token_not_waiting_says_timed_out_and_when() -> None:
    closed = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    error = TokenNotWaitingError("waitpoint_abc", "TIMED_OUT", closed)
    assert str(error) == (
        "token waitpoint_abc already timed out at 2025-06-01T12:30:00+00:00;"
        " it can no longer be completed or cancelled"
    )
    assert (error.token_id, error.status, error.closed_at) == ("waitpoint_abc", "TIMED_OUT", closed)


def test_token_not_waiting_says_cancelled() -> None:
    closed = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    message = str(TokenNotWaitingError("waitpoint_abc", "CANCELLED", closed))
    assert "waitpoint_abc already cancelled at 2025-06-01T12:30:00+00:00" in message


def test_token_not_waiting_without_time_says_unknown_time() -> None:
    message = str(TokenNotWaitingError("waitpoint_abc", "TIMED_OUT", None))
    assert "timed out at an unknown time" in message


def test_step_failed_error_prefixes_the_original_type() -> None:
    error = StepFailedError("card declined", "PaymentError")
    assert str(error) == "PaymentError: card declined"
    assert error.error_type == "PaymentError"
    assert str(StepFailedError("boom")) == "Exception: boom"


def test_run_failed_error_carries_status_and_error_message() -> None:
    error = RunFailedError("run_1", "FAILED", {"name": "KeyError", "message": "'x'"})
    assert str(error) == "run run_1 ended FAILED: 'x'"
    assert (error.run_id, error.status) == ("run_1", "FAILED")
    assert str(RunFailedError("run_2", "CANCELED")) == "run run_2 ended CANCELED"


def test_a_late_vote_says_how_the_approval_closed() -> None:
    assert str(ApprovalClosedError("waitpoint_a", "COMPLETED", True)) == (
        "approval waitpoint_a was approved; it takes no more votes"
    )
    assert "was rejected" in str(ApprovalClosedError("waitpoint_a", "COMPLETED", False))
    assert "timed out" in str(ApprovalClosedError("waitpoint_a", "TIMED_OUT", None))
    assert "waitpoint_a closed;" in str(ApprovalClosedError("waitpoint_a", "CANCELLED", None))
