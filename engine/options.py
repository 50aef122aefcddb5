"""The options of a trigger and of a token, and a query of runs, named once.

``TriggerOptions`` is what ``Engine.trigger``, ``Task.trigger``, the HTTP client, the REST API
and the CLI accept (each passes it on with ``**options``); ``TokenOptions`` is what
``create_token`` and ``engine.tokens.create`` accept. As ``TypedDict``s used with ``Unpack``,
mypy checks every caller's keywords and types against this one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

from pydantic import BaseModel

from .durations import Timeout, duration_ms, format_duration
from .errors import ValidationError
from .models import RunStatus

MAX_BATCH_ITEMS = 1_000
"""Runs one ``batch_trigger`` makes at most (one transaction: a bigger one would hold the
database's writer, SQLite's only one, for too long)."""
MAX_DEBOUNCE_KEY_LENGTH = 512
"""Trigger.dev's limit: a key its SDK sends is accepted here too."""
MIN_DEBOUNCE_MS = 1_000
MAX_DEBOUNCE_MS = 30 * 86_400_000


@dataclass(frozen=True)
class Debounce:
    """Collapse the triggers of a task with the same ``key`` into one run (Trigger.dev's
    ``debounce`` option): ``engine.trigger("reindex", doc, debounce=Debounce("doc-42", "5s"))``.

    The first trigger makes a DELAYED run due ``delay`` later; each trigger with the same key
    while that run is still DELAYED returns it (``is_cached``) and pushes it back to ``delay``
    after itself, so the run starts once the triggers pause for ``delay``. ``mode`` says whose
    data it runs with: ``"leading"`` (the default, as in Trigger.dev) the first trigger's,
    ``"trailing"`` the last one's (its payload, tags, metadata, max_attempts and
    max_duration replace the run's). ``max_delay`` bounds the pushing, from the first
    trigger: a trigger that would push the run later than that leaves it to start when it
    is due and makes a new run. Without it, triggers that never pause for ``delay`` keep
    the run waiting.

    ``delay`` is at least 1 s (Trigger.dev's minimum; a shorter window collapses next to
    nothing) and, like ``max_delay``, at most 30 days: a debounced run waits DELAYED that
    long, and a wait of months between triggers is a schedule's work, not a debounce's.
    """

    key: str
    delay: str | timedelta
    mode: Literal["leading", "trailing"] = "leading"
    max_delay: str | timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValidationError("debounce key must be a non-empty string")
        if len(self.key) > MAX_DEBOUNCE_KEY_LENGTH:
            raise ValidationError(
                f"debounce key is {len(self.key)} characters long;"
                f" at most {MAX_DEBOUNCE_KEY_LENGTH} allowed"
            )
        if self.mode not in ("leading", "trailing"):
            raise ValidationError(
                f"debounce mode must be 'leading' or 'trailing', not {self.mode!r}"
            )
        delay = _debounce_ms(self.delay, "delay")
        if self.max_delay is not None and _debounce_ms(self.max_delay, "max_delay") <= delay:
            raise ValidationError(
                f"debounce max_delay ({_shown(self.max_delay)}) must be longer than its delay"
                f" ({_shown(self.delay)}): no trigger could push the run back"
            )

    @property
    def delay_ms(self) -> int:
        return duration_ms(self.delay)

    @property
    def max_delay_ms(self) -> int | None:
        return None if self.max_delay is None else duration_ms(self.max_delay)


def _debounce_ms(value: str | timedelta, what: str) -> int:
    if not isinstance(value, str | timedelta):
        raise ValidationError(f"debounce {what} must be a duration ('5s') or a timedelta")
    try:
        ms = duration_ms(value)
    except ValidationError as exc:
        raise ValidationError(f"debounce {what}: {exc}") from None
    if not MIN_DEBOUNCE_MS <= ms <= MAX_DEBOUNCE_MS:
        raise ValidationError(f"debounce {what} is {_shown(value)}: it must be between 1s and 30d")
    return ms


def _shown(value: str | timedelta) -> str:
    return value if isinstance(value, str) else format_duration(value)


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
    priority: int | None
    """Seconds (Trigger.dev's meaning, 0 to 2,073,600: 24 days): the run is claimed as if it
    had been queued that much earlier, so it goes before the queue's runs younger than that."""
    rate_limit_key: str | None
    """Gives this key (a tenant) its own bucket of the task queue's rate limit."""
    debounce: Debounce | None
    """Triggers with the same key collapse into one run (``Debounce``); not with ``delay``."""


class BatchItem(TypedDict, total=False):
    """One run of ``Engine.batch_trigger``: Trigger.dev's ``{payload, options}`` item."""

    payload: Any
    options: TriggerOptions
    task: str
    """Another task than the batch's (as the items of Trigger.dev's ``batch.trigger``)."""


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
    "MAX_BATCH_ITEMS",
    "MAX_DEBOUNCE_KEY_LENGTH",
    "TOKEN_OPTION_NAMES",
    "TRIGGER_OPTION_NAMES",
    "BatchItem",
    "Debounce",
    "RunQuery",
    "TokenOptions",
    "TriggerOptions",
    "check_names",
]
