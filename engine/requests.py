"""Turning what users pass (durations, tags, options) into what storage takes.

Every entry point (Python, the CLI, the REST API) goes through these, so a bad argument gets
the same ``ValidationError`` wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from typing_extensions import Unpack

from . import tracing
from .clock import from_ms, to_ms
from .durations import duration_ms, format_duration, resolve_deadline
from .errors import ValidationError
from .journal import CallKey
from .models import JournalEntry, RunError, RunEvent, TimelineEntry, Token, WaitTarget
from .options import (
    MAX_BATCH_ITEMS,
    TOKEN_OPTION_NAMES,
    TRIGGER_OPTION_NAMES,
    BatchItem,
    Debounce,
    TokenOptions,
    TriggerOptions,
    check_names,
)
from .storage import NewDebounce, NewRun, NewToken, PageRequest
from .validation import (
    MAX_DESCRIPTION_LENGTH,
    MAX_TITLE_LENGTH,
    clean_limit,
    clean_optional_text,
    clean_tags,
    clean_token_context,
    clean_token_text,
    data_schema_of,
)


def token_request(now_ms: int, **options: Unpack[TokenOptions]) -> NewToken:
    """Validate ``create_token`` arguments into what storage inserts.

    ``schema`` is a pydantic model class or a JSON Schema (what the REST API receives).
    ``title`` (at most 200 characters), ``description`` (plain text, at most 4,000) and
    ``context`` (a JSON object, at most 16 KiB as JSON) are shown to the reviewer.
    """
    check_names(dict(options), TOKEN_OPTION_NAMES, "create_token")
    timeout, schema = options.get("timeout"), options.get("schema")
    now = from_ms(now_ms)
    timeout_ms = ttl = None
    if timeout is not None:
        deadline, ttl = resolve_deadline(timeout, now)
        timeout_ms = to_ms(deadline)
    data_schema = data_schema_of(schema)
    key = clean_optional_text(options.get("idempotency_key"), "idempotency_key")
    return NewToken(
        timeout_ms=timeout_ms,
        ttl=ttl,
        tags=clean_tags(options.get("tags")),
        idempotency_key=key,
        idempotency_key_expires_ms=_key_expiry(now_ms, key, options.get("idempotency_key_ttl")),
        data_schema=data_schema,
        title=clean_token_text(options.get("title"), "title", MAX_TITLE_LENGTH),
        description=clean_token_text(
            options.get("description"), "description", MAX_DESCRIPTION_LENGTH
        ),
        context=clean_token_context(options.get("context")),
    )


def run_request(
    task_id: str,
    payload: Any,
    now_ms: int,
    *,
    queue: str | None = None,
    **options: Unpack[TriggerOptions],
) -> NewRun:
    """Validate trigger options into what storage inserts."""
    check_names(dict(options), TRIGGER_OPTION_NAMES, "trigger")
    max_attempts, metadata = options.get("max_attempts"), options.get("metadata")
    delay, ttl, max_duration = options.get("delay"), options.get("ttl"), options.get("max_duration")
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValidationError("max_attempts must be a positive integer")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationError("metadata must be a JSON object (a dict)")
    key = clean_optional_text(options.get("idempotency_key"), "idempotency_key")
    delayed_until = None
    if delay is not None:
        if isinstance(delay, datetime):
            delayed_until = moment_ms(delay, "delay")  # a past moment just means "now"
        else:
            delayed_until = now_ms + duration_ms(delay)
    return NewRun(
        task_id=task_id,
        payload=payload,
        tags=clean_tags(options.get("tags")),
        idempotency_key=key,
        idempotency_key_expires_ms=_key_expiry(now_ms, key, options.get("idempotency_key_ttl")),
        max_attempts=max_attempts,
        delayed_until_ms=delayed_until,
        ttl=None if ttl is None else (ttl if isinstance(ttl, str) else format_duration(ttl)),
        ttl_ms=None if ttl is None else duration_ms(ttl),
        metadata=metadata,
        max_duration_ms=None if max_duration is None else duration_ms(max_duration),
        queue=queue,
        concurrency_key=clean_optional_text(options.get("concurrency_key"), "concurrency_key"),
        debounce=_debounce(options.get("debounce"), delay),
        priority=clean_priority(options.get("priority")),
        rate_limit_key=clean_optional_text(options.get("rate_limit_key"), "rate_limit_key"),
        trace_context=tracing.traceparent(f"trigger {task_id}", {"waitpoint.task_id": task_id}),
    )


MAX_PRIORITY = 24 * 86_400
"""The highest ``priority``, in seconds (24 days): PostgreSQL computes a run's claim rank,
``available_at - priority * 1000``, with the 32-bit ``priority`` column, which holds at most
2,147,483 seconds times 1000."""


def clean_priority(priority: int | None) -> int:
    """A trigger's ``priority``: whole seconds from 0 to ``MAX_PRIORITY`` (None: 0)."""
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationError(
            f"priority must be a whole number of seconds, got {type(priority).__name__}"
        )
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValidationError(
            f"priority must be from 0 to {MAX_PRIORITY:,} seconds (24 days), got {priority:,}"
        )
    return priority


def _debounce(debounce: Debounce | None, delay: object) -> NewDebounce | None:
    """The debounce option for storage. Not with ``delay``: the debounce's own delay is the
    run's, pushed back by every trigger that joins it, where a ``delay`` would be one fixed
    start (which of the two would win is a guess no caller should have to make)."""
    if debounce is None:
        return None
    if not isinstance(debounce, Debounce):
        raise ValidationError("debounce must be a Debounce(key, delay, mode, max_delay)")
    if delay is not None:
        raise ValidationError(
            "debounce and delay do not combine: the debounce's delay is the run's delay"
        )
    return NewDebounce(
        debounce.key, debounce.delay_ms, debounce.mode == "trailing", debounce.max_delay_ms
    )


def batch_items(
    task_id: str | None, items: Sequence[BatchItem]
) -> list[tuple[str, Any, TriggerOptions]]:
    """Each item's task, payload and options, checked: at most ``MAX_BATCH_ITEMS`` items, each
    a dict of ``payload`` and ``options`` (Trigger.dev's item shape) and perhaps its ``task``
    (else ``task_id``'s); the message of a bad one names its index."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise ValidationError("items must be a list of {'payload': ..., 'options': {...}}")
    if len(items) > MAX_BATCH_ITEMS:
        raise ValidationError(
            f"too many items: {len(items)} given, at most {MAX_BATCH_ITEMS} in one batch"
        )
    checked: list[tuple[str, Any, TriggerOptions]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValidationError(
                f"item {index}: an item is {{'payload': ..., 'options': {{...}}}},"
                f" not {type(item).__name__}"
            )
        unknown = sorted(set(item) - {"payload", "options", "task"}, key=str)
        if unknown:
            raise ValidationError(
                f"item {index}: unknown key {unknown[0]!r}"
                " (an item has 'payload', 'options' and perhaps 'task')"
            )
        task = item.get("task", task_id)
        if not isinstance(task, str) or not task:
            raise ValidationError(f"item {index}: which task? give the item a 'task' id")
        options = item.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValidationError(f"item {index}: options must be a dict of trigger options")
        names = sorted(set(options) - TRIGGER_OPTION_NAMES, key=str)
        if names:
            raise ValidationError(f"item {index}: unknown option {names[0]!r}")
        checked.append((task, item.get("payload"), TriggerOptions(**options)))
    return checked


def _key_expiry(now_ms: int, key: str | None, ttl: str | timedelta | None) -> int | None:
    if ttl is None:
        return None
    if key is None:
        raise ValidationError("idempotency_key_ttl needs an idempotency_key")
    return now_ms + duration_ms(ttl)


def timeline(
    entries: list[JournalEntry],
    events: list[RunEvent],
    targets: Mapping[str, WaitTarget] | None = None,
) -> list[TimelineEntry]:
    """Journal entries and lifecycle events merged in the order they were written; a
    ``waiting`` event names what it waited on from ``targets`` (see ``waited_on``)."""
    items: list[tuple[int, int, TimelineEntry]] = [
        (e.recorded_ms, e.seq, timeline_entry(e)) for e in entries
    ]
    items += [(event.recorded_ms, event.seq, event_entry(event, targets)) for event in events]
    return [item for _, _, item in sorted(items, key=lambda i: (i[0], i[1]))]


_BAD_EVENTS = frozenset({"retrying", "crashed", "expired", "worker_lost", "canceled"})


def waited_on(events: list[RunEvent]) -> list[str]:
    """The waitpoints the run's ``waiting`` events name."""
    ids = {i for e in events if e.kind == "waiting" for i in (e.detail or {}).get("on", [])}
    return sorted(ids)


def event_entry(event: RunEvent, targets: Mapping[str, WaitTarget] | None = None) -> TimelineEntry:
    status = (event.detail or {}).get("status", "COMPLETED")
    waiting_on = None
    if event.kind == "waiting" and targets is not None:
        on = (event.detail or {}).get("on", [])
        waiting_on = [targets[i] for i in on if i in targets]
    return TimelineEntry(
        key=None,
        kind=event.kind,
        name="",
        attempt=event.attempt,
        at=from_ms(event.recorded_ms),
        ok=event.kind not in _BAD_EVENTS and status == "COMPLETED",
        detail=event.detail,
        waiting_on=waiting_on,
    )


def timeline_entry(entry: JournalEntry) -> TimelineEntry:
    key = CallKey.parse(entry.key)
    kind, name = key.kind, key.name
    token = error = value = None
    if entry.is_error:
        error = RunError.model_validate(entry.value)
    elif kind in ("create_token", "wait_for_token") and isinstance(entry.value, dict):
        token = Token.model_validate(entry.value)
    else:
        value = entry.value
    return TimelineEntry(
        key=entry.key,
        kind=kind,
        name=name,
        attempt=entry.attempt,
        at=from_ms(entry.recorded_ms),
        ok=not entry.is_error,
        duration_ms=entry.duration_ms,
        value=value,
        error=error,
        token=token,
    )


def page_request(limit: int, after: str | None, before: str | None) -> PageRequest:
    """``before`` wins over ``after`` (the SDK's previous-page call sends both)."""
    return PageRequest(clean_limit(limit), None if before is not None else after, before)


def moment_ms(moment: datetime | None, what: str) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValidationError(f"{what} must be a timezone-aware datetime")
    return to_ms(moment)
