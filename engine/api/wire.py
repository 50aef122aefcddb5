"""The JSON the API speaks: the seed token schema plus Trigger.dev's fields, and v3 run JSON.

The Trigger.dev SDK validates responses with zod: an optional field must be absent, never
``null`` (a null date reads as 1970, a null string is an error), and its token status enum
has no CANCELLED. So requests from the SDK (they carry ``x-trigger-api-version``) see a
cancelled token as TIMED_OUT with ``outputIsError`` and ``cancelled: true``; every other
client sees CANCELLED.
"""

from __future__ import annotations

import json
from typing import Any

from ..models import Page, Run, RunStatus, Token, WaitpointStatus

SDK_VERSION_HEADER = "x-trigger-api-version"


def token_json(token: Token, *, for_sdk: bool = False) -> dict[str, Any]:
    """A token as the seed schema has it, plus ``timeoutAt``/``output``/... for the SDK."""
    body: dict[str, Any] = token.model_dump(mode="json", by_alias=True)
    if body.get("expiresAt") is not None:
        body["timeoutAt"] = body["expiresAt"]
    for key in ("expiresAt", "completedAt"):
        if for_sdk and body.get(key) is None:
            body.pop(key, None)
    if token.status is not WaitpointStatus.WAITING:
        body["output"] = json.dumps(token.data)
        body["outputType"] = "application/json"
        body["outputIsError"] = token.status is not WaitpointStatus.COMPLETED
    if token.status is WaitpointStatus.CANCELLED:
        body["cancelled"] = True
        if for_sdk:
            body["status"] = WaitpointStatus.TIMED_OUT.value
    return body


_RUN_FLAGS = {
    "isQueued": {RunStatus.QUEUED},
    "isExecuting": {RunStatus.EXECUTING},
    "isWaiting": {RunStatus.WAITING},
    "isCompleted": {status for status in RunStatus if status.is_terminal},
    "isSuccess": {RunStatus.COMPLETED},
    "isFailed": {RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED, RunStatus.EXPIRED},
    "isCancelled": {RunStatus.CANCELED},
}


def run_json(run: Run) -> dict[str, Any]:
    """A run in the shape of Trigger.dev's ``GET /api/v3/runs/{id}`` (absent, never null)."""
    body: dict[str, Any] = run.model_dump(mode="json", by_alias=True)
    if run.error is not None:
        body["error"] = {
            "name": run.error.name,
            "message": run.error.message,
            "stackTrace": run.error.stack_trace,
        }
    for flag, statuses in _RUN_FLAGS.items():
        body[flag] = run.status in statuses
    end = run.finished_at
    start = run.started_at
    body.update(
        {
            "triggerFunction": "trigger",
            "durationMs": int((end - start).total_seconds() * 1000) if end and start else 0,
            "costInCents": 0,
            "baseCostInCents": 0,
            "isTest": False,
            "relatedRuns": {},
            "env": {"id": "waitpoint", "name": "waitpoint"},
        }
    )
    return body


def page_json(page: Page[Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    pagination: dict[str, str] = {}
    if page.next_cursor is not None:
        pagination["next"] = page.next_cursor
    if page.previous_cursor is not None:
        pagination["previous"] = page.previous_cursor
    return {"data": items, "pagination": pagination}
