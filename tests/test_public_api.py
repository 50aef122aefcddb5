"""The names ``import engine`` promises."""

from __future__ import annotations

import importlib

import pytest

import engine

EXPECTED_ALL = [
    "AbortTaskRunError",
    "Approval",
    "ApprovalClosedError",
    "ApprovalDecision",
    "ApprovalNotFoundError",
    "ApprovalNotice",
    "ApprovalVote",
    "Approver",
    "ChildRunError",
    "CompletionResult",
    "CompletionSource",
    "ConcurrentWaitError",
    "ConfigurationError",
    "Debounce",
    "Delivery",
    "DurableCallInStepError",
    "EmailNotifier",
    "Engine",
    "EngineError",
    "GroupResult",
    "LeaseLostError",
    "MaxDurationExceededError",
    "NondeterminismError",
    "NotFoundError",
    "NotInRunError",
    "Notifier",
    "Page",
    "Queue",
    "QueueDepth",
    "RateLimit",
    "Retry",
    "Run",
    "RunCount",
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
    "StatsSnapshot",
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
    "WebhookNotifier",
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
    "verify_webhook",
    "wait_for_any",
    "wait_for_token",
    "wait_for_tokens",
]


def test_all_is_exactly_the_public_api() -> None:
    assert engine.__all__ == EXPECTED_ALL


def test_all_is_sorted_without_duplicates() -> None:
    assert engine.__all__ == sorted(set(engine.__all__))


def test_the_lazy_exports_are_exactly_all() -> None:
    """``engine`` loads its names on first use (PEP 562): each public name has a module to
    load it from, and nothing else does."""
    assert sorted(engine._WHERE) == EXPECTED_ALL
    assert engine.Engine.__module__ == "engine.client"
    assert "Engine" in dir(engine)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("engine")
    assert getattr(module, name) is not None
    exec(f"from engine import {name}", {})


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from engine import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL
