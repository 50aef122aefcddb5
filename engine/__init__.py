"""Waitpoint: durable runs for Python asyncio.

Tasks are ``async def`` functions; inside one, ``await wait_for_token(token)`` parks the run
until someone completes the token, with nothing of the run left in memory. Runs, tokens and
journals live in SQLite, so a run resumes exactly where it left off after restarts and crashes.
"""

from .client import Engine
from .durable import (
    RunInfo,
    complete_token,
    create_token,
    current_run,
    sleep,
    sleep_until,
    step,
    update_metadata,
    wait_for_token,
    wait_for_tokens,
)
from .errors import (
    AbortTaskRunError,
    ChildRunError,
    ConcurrentWaitError,
    ConfigurationError,
    EngineError,
    LeaseLostError,
    MaxDurationExceededError,
    NondeterminismError,
    NotFoundError,
    NotInRunError,
    RunFailedError,
    RunNotFoundError,
    RunWaitTimeoutError,
    StepFailedError,
    StorageError,
    TaskNotFoundError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    WaitpointCancelledError,
    WaitpointError,
    WaitpointTimeoutError,
)
from .logs import configure_default_logging
from .models import (
    CompletionResult,
    CompletionSource,
    GroupResult,
    Page,
    Run,
    RunError,
    RunResult,
    RunStatus,
    TimelineEntry,
    Token,
    WaitpointStatus,
    WaitResult,
)
from .registry import Queue, Retry, TaskDefinition, task
from .settings import Settings
from .worker import Worker

configure_default_logging()

__all__ = [
    "AbortTaskRunError",
    "ChildRunError",
    "CompletionResult",
    "CompletionSource",
    "ConcurrentWaitError",
    "ConfigurationError",
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
    "Retry",
    "Run",
    "RunError",
    "RunFailedError",
    "RunInfo",
    "RunNotFoundError",
    "RunResult",
    "RunStatus",
    "RunWaitTimeoutError",
    "Settings",
    "StepFailedError",
    "StorageError",
    "TaskDefinition",
    "TaskNotFoundError",
    "TimelineEntry",
    "Token",
    "TokenNotFoundError",
    "TokenNotWaitingError",
    "ValidationError",
    "WaitResult",
    "WaitpointCancelledError",
    "WaitpointError",
    "WaitpointStatus",
    "WaitpointTimeoutError",
    "Worker",
    "complete_token",
    "create_token",
    "current_run",
    "sleep",
    "sleep_until",
    "step",
    "task",
    "update_metadata",
    "wait_for_token",
    "wait_for_tokens",
]
