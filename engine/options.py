"""The options of a trigger and of a token, and a query of runs, named once.

``TriggerOptions`` is what ``Engine.trigger``, ``Task.trigger``, the HTTP client, the REST API
and the CLI accept (each passes it on with ``**options``); ``TokenOptions`` is what
``create_token`` and ``engine.tokens.create`` accept. As ``TypedDict``s used with ``Unpack``,
mypy checks every caller's keywords and types against this one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict

from pydantic import BaseModel

from .durations import Timeout
from .models import RunStatus


class TriggerOptions(TypedDict, total=False):
    """How a run is queued (every option may be left out)."""

    idempotency_key: str | None
    """A repeat with the same key returns the same run (``is_cached``)."""
    idempotency_key_ttl: str | timedelta | None
    """How long the key stays taken ("1h"); needs ``idempotency_key``."""
    tags: list[str] | str | None
    max_attempts: int | None
    delay: Timeout | None
    """"10m", a timedelta or an aware datetime: the run stays DELAYED until then."""
    ttl: str | timedelta | None
    """The run becomes EXPIRED if no worker started it within this long after it was due."""
    metadata: dict[str, Any] | None
    """A JSON object kept on the run."""
    max_duration: str | timedelta | None
    """Executing time after which the run is TIMED_OUT (over the task's own limit)."""
    concurrency_key: str | None
    """Gives this key (a tenant) its own copy of the task queue's concurrency limit."""


class TokenOptions(TypedDict, total=False):
    """How a waitpoint token is made (every option may be left out)."""

    timeout: Timeout | None
    """"1h", a timedelta or an aware datetime: the token times out then if not completed."""
    idempotency_key: str | None
    idempotency_key_ttl: str | timedelta | None
    tags: list[str] | str | None
    schema: type[BaseModel] | dict[str, Any] | None
    """Completion data must match it; ``wait_for_token`` parses it into the model."""
    title: str | None
    """What the reviewer approves ("Refund order 42", at most 200 characters)."""
    description: str | None
    """Plain text, at most 4,000 characters."""
    context: dict[str, Any] | None
    """A JSON object (at most 16 KiB) the approval page and the inbox show."""


class RunQuery(TypedDict, total=False):
    """Which runs a call is about (``engine.runs.list``, ``ids``, ``cancel_matching``); filters
    of different keys all apply, a list matches any of its values."""

    status: RunStatus | str | Sequence[RunStatus | str] | None
    task: str | list[str] | None
    tags: list[str] | str | None
    """Runs carrying any of these tags."""
    created_after: datetime | None
    created_before: datetime | None
    version: str | None
    """Runs that recorded this version (``@task(version=)``, ``runs.migrate``)."""


TRIGGER_OPTION_NAMES = frozenset(TriggerOptions.__annotations__)
TOKEN_OPTION_NAMES = frozenset(TokenOptions.__annotations__)


def check_names(options: dict[str, Any], names: frozenset[str], call: str) -> None:
    """A ``TypeError`` for an option that does not exist, as a signature would raise it (a
    caller that mypy does not check may pass anything through ``**options``)."""
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r}")


__all__ = [
    "TOKEN_OPTION_NAMES",
    "TRIGGER_OPTION_NAMES",
    "RunQuery",
    "TokenOptions",
    "TriggerOptions",
    "check_names",
]
