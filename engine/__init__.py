"""Waitpoint: durable runs for Python asyncio.

Tasks are ``async def`` functions; inside one, ``await wait_for_token(token)`` parks the run
until someone completes the token, with nothing of the run left in memory. Runs, tokens and
journals live in SQLite, so a run resumes exactly where it left off after restarts and crashes.

The names below load on first use (PEP 562), so that ``import engine`` and the CLI's
``--help`` do not pay for the storage, the models and asyncio before anything needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .approvals import ApprovalDecision, request_approval
    from .client import Engine
    from .durable import (
        RunInfo,
        complete_token,
        create_token,
        current_run,
        deprecate_patch,
        patched,
        receive,
        receive_op,
        sleep,
        sleep_until,
        step,
        update_metadata,
        wait_for_any,
        wait_for_token,
        wait_for_tokens,
    )
    from .errors import (
        AbortTaskRunError,
        ApprovalClosedError,
        ApprovalNotFoundError,
        ChildRunError,
        ConcurrentWaitError,
        ConfigurationError,
        DurableCallInStepError,
        EngineError,
        LeaseLostError,
        MaxDurationExceededError,
        NondeterminismError,
        NotFoundError,
        NotInRunError,
        RunFailedError,
        RunNotFoundError,
        RunStateError,
        RunWaitTimeoutError,
        ScheduleNotFoundError,
        StepFailedError,
        StorageError,
        StorageUnavailableError,
        TaskNotFoundError,
        TokenNotFoundError,
        TokenNotWaitingError,
        ValidationError,
        VoteRefusedError,
        WaitpointCancelledError,
        WaitpointError,
        WaitpointTimeoutError,
    )
    from .models import (
        Approval,
        ApprovalVote,
        Approver,
        CompletionResult,
        CompletionSource,
        GroupResult,
        Page,
        Run,
        RunError,
        RunResult,
        RunStatus,
        Schedule,
        ScheduledPayload,
        TimelineEntry,
        Token,
        WaitpointStatus,
        WaitResult,
    )
    from .options import Debounce
    from .registry import Queue, RateLimit, Retry, TaskDefinition, task
    from .replay_check import check_replay
    from .settings import Settings
    from .worker import Worker

_WHERE = {
    "AbortTaskRunError": "errors",
    "Approval": "models",
    "ApprovalClosedError": "errors",
    "ApprovalDecision": "approvals",
    "ApprovalNotFoundError": "errors",
    "ApprovalVote": "models",
    "Approver": "models",
    "ChildRunError": "errors",
    "CompletionResult": "models",
    "CompletionSource": "models",
    "ConcurrentWaitError": "errors",
    "ConfigurationError": "errors",
    "Debounce": "options",
    "DurableCallInStepError": "errors",
    "Engine": "client",
    "EngineError": "errors",
    "GroupResult": "models",
    "LeaseLostError": "errors",
    "MaxDurationExceededError": "errors",
    "NondeterminismError": "errors",
    "NotFoundError": "errors",
    "NotInRunError": "errors",
    "Page": "models",
    "Queue": "registry",
    "RateLimit": "registry",
    "Retry": "registry",
    "Run": "models",
    "RunError": "models",
    "RunFailedError": "errors",
    "RunInfo": "durable",
    "RunNotFoundError": "errors",
    "RunResult": "models",
    "RunStateError": "errors",
    "RunStatus": "models",
    "RunWaitTimeoutError": "errors",
    "Schedule": "models",
    "ScheduleNotFoundError": "errors",
    "ScheduledPayload": "models",
    "Settings": "settings",
    "StepFailedError": "errors",
    "StorageError": "errors",
    "StorageUnavailableError": "errors",
    "TaskDefinition": "registry",
    "TaskNotFoundError": "errors",
    "TimelineEntry": "models",
    "Token": "models",
    "TokenNotFoundError": "errors",
    "TokenNotWaitingError": "errors",
    "ValidationError": "errors",
    "VoteRefusedError": "errors",
    "WaitResult": "models",
    "WaitpointCancelledError": "errors",
    "WaitpointError": "errors",
    "WaitpointStatus": "models",
    "WaitpointTimeoutError": "errors",
    "Worker": "worker",
    "check_replay": "replay_check",
    "complete_token": "durable",
    "create_token": "durable",
    "current_run": "durable",
    "deprecate_patch": "durable",
    "patched": "durable",
    "receive": "durable",
    "receive_op": "durable",
    "request_approval": "approvals",
    "sleep": "durable",
    "sleep_until": "durable",
    "step": "durable",
    "task": "registry",
    "update_metadata": "durable",
    "wait_for_any": "durable",
    "wait_for_token": "durable",
    "wait_for_tokens": "durable",
}
"""Each public name and the module (under ``engine``) that defines it."""

__all__ = [
    "AbortTaskRunError",
    "Approval",
    "ApprovalClosedError",
    "ApprovalDecision",
    "ApprovalNotFoundError",
    "ApprovalVote",
    "Approver",
    "ChildRunError",
    "CompletionResult",
    "CompletionSource",
    "ConcurrentWaitError",
    "ConfigurationError",
    "Debounce",
    "DurableCallInStepError",
    "Engine",
    "EngineError",
    "GroupResult",
    "LeaseLostError",
    "MaxDurationExceededError",
    "NondeterminismError",
    "NotFoundError",
    "NotInRunError",
    "Page",
    "Queue",
    "RateLimit",
    "Retry",
    "Run",
    "RunError",
    "RunFailedError",
    "RunInfo",
    "RunNotFoundError",
    "RunResult",
    "RunStateError",
    "RunStatus",
    "RunWaitTimeoutError",
    "Schedule",
    "ScheduleNotFoundError",
    "ScheduledPayload",
    "Settings",
    "StepFailedError",
    "StorageError",
    "StorageUnavailableError",
    "TaskDefinition",
    "TaskNotFoundError",
    "TimelineEntry",
    "Token",
    "TokenNotFoundError",
    "TokenNotWaitingError",
    "ValidationError",
    "VoteRefusedError",
    "WaitResult",
    "WaitpointCancelledError",
    "WaitpointError",
    "WaitpointStatus",
    "WaitpointTimeoutError",
    "Worker",
    "check_replay",
    "complete_token",
    "create_token",
    "current_run",
    "deprecate_patch",
    "patched",
    "receive",
    "receive_op",
    "request_approval",
    "sleep",
    "sleep_until",
    "step",
    "task",
    "update_metadata",
    "wait_for_any",
    "wait_for_token",
    "wait_for_tokens",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` and keep the name here, as an eager import would."""
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'engine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
