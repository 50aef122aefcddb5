"""Turning stored rows into models, shared by the backends.

Rows are plain mappings with the column names of the schema; times are integer milliseconds
and JSON columns are text.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pydantic_core import to_jsonable_python

from ..clock import from_ms, from_ms_or_none
from ..errors import ValidationError
from ..keys import hash_signature
from ..models import (
    ClaimedRun,
    CompletionSource,
    JournalEntry,
    LateCompletion,
    Run,
    RunError,
    RunStatus,
    Token,
    WaitpointStatus,
)


class RowLike(Protocol):
    """A database row read by column name (sqlite3.Row, asyncpg.Record, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


R = TypeVar("R", bound=RowLike)


def dump_json(value: Any, what: str = "value") -> str:
    """Compact JSON text; anything pydantic can serialise is accepted."""
    try:
        return json.dumps(to_jsonable_python(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from exc


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def matches_legacy_hash(stored: str | None, signature: str) -> bool:
    """Whether ``signature`` is the one whose hash migration 4 kept for a token (constant time)."""
    return stored is not None and hmac.compare_digest(stored, hash_signature(signature))


def token_from_row(row: RowLike) -> Token:
    """The token of a ``waitpoints`` row, without its callback URL (``Token.url``)."""
    schema = row["data_schema"]
    via = row["completed_via"]
    data = load_json(row["data"])
    return Token(
        id=row["id"],
        status=WaitpointStatus(row["status"]),
        tags=json.loads(row["tags"]),
        idempotency_key=row["idempotency_key"],
        idempotency_key_expires_at=from_ms_or_none(row["idempotency_key_expires_at"]),
        ttl=row["ttl"],
        expires_at=from_ms_or_none(row["timeout_at"]),
        completed_at=from_ms_or_none(row["completed_at"]),
        created_at=from_ms(row["created_at"]),
        data=data,
        completed_via=CompletionSource(via) if via else None,
        cancel_reason=cancel_reason(row["status"], data),
        data_schema=load_json(schema),
        title=_added(row, "title"),
        description=_added(row, "description"),
        context=load_json(_added(row, "context")),
        completed_trace=_added(row, "completed_trace"),
    )


def cancel_reason(status: str, data: Any) -> str | None:
    """The reason a cancelled token was given, kept in its data beside the error's code and
    message (``{"code": "WAITPOINT_CANCELLED", "message": ..., "reason": ...}``)."""
    if status != WaitpointStatus.CANCELLED.value or not isinstance(data, dict):
        return None
    reason = data.get("reason")
    return reason if isinstance(reason, str) else None


def _added(row: RowLike, column: str) -> Any:
    """A column a later migration added (a token's title, description, context): None in a
    row of a schema from before it, which an engine still writes tokens to while it has not
    migrated (the upgrade tests make tokens with an old schema, then migrate)."""
    try:
        return row[column]
    except (KeyError, IndexError):
        return None


def run_from_row(row: RowLike, waiting_on: list[str] | None = None) -> Run:
    error = load_json(row["error"])
    return Run(
        id=row["id"],
        task_identifier=row["task_id"],
        status=RunStatus(row["status"]),
        payload=load_json(row["payload"]),
        output=load_json(row["output"]),
        error=RunError.model_validate(error) if error else None,
        tags=json.loads(row["tags"]),
        idempotency_key=row["idempotency_key"],
        attempt_count=row["attempt_count"],
        created_at=from_ms(row["created_at"]),
        updated_at=from_ms(row["updated_at"]),
        started_at=from_ms_or_none(row["started_at"]),
        finished_at=from_ms_or_none(row["finished_at"]),
        delayed_until=from_ms_or_none(row["delayed_until"]),
        ttl=row["ttl"],
        metadata=load_json(row["metadata"]),
        parent_run_id=row["parent_run_id"],
        depth=row["depth"],
        waiting_on=waiting_on or [],
        version=row["version"],
        paused_at=from_ms_or_none(row["paused_at"]),
        origin_run_id=row["origin_run_id"],
        origin=row["origin"],
        priority=row["priority"] or None,
    )


def child_result_json(row: RowLike) -> str:
    """What a RUN waitpoint holds once its child finished (the same shape the SQL builds)."""
    return dump_json(
        {
            "runId": row["id"],
            "status": row["status"],
            "output": load_json(row["output"]),
            "error": load_json(row["error"]),
        }
    )


def journal_from_row(row: RowLike) -> JournalEntry:
    return JournalEntry(
        key=row["key"],
        attempt=row["attempt"],
        position=row["position"],
        is_error=bool(row["is_error"]),
        value=load_json(row["value"]),
        recorded_ms=row["created_at"],
        duration_ms=row["duration_ms"],
        seq=row["seq"],
        rerun=bool(row["rerun"]),
    )


def claimed_runs(
    rows: Sequence[RowLike],
    entries: Sequence[RowLike],
    closed: Mapping[str, dict[str, Token]] | None = None,
) -> list[ClaimedRun]:
    """The runs a claim leased (``rows``) with their journals (``entries``, in the order they
    were recorded: replay returns racing calls in that order) and, by run, the closed tokens
    they were parked on (``closed``)."""
    journals: dict[str, list[JournalEntry]] = {}
    for entry in entries:
        journals.setdefault(entry["run_id"], []).append(journal_from_row(entry))
    return [
        ClaimedRun(
            id=r["id"],
            task_id=r["task_id"],
            payload=load_json(r["payload"]),
            attempt=r["attempt_count"],
            epoch=r["lease_epoch"],
            max_attempts=r["max_attempts"],
            executed_ms=r["executing_ms"],
            max_duration_ms=r["max_duration_ms"],
            metadata=load_json(r["metadata"]),
            journal=journals.get(r["id"], []),
            attempt_base=r["attempt_base"],
            created_ms=r["created_at"],
            trace_context=r["trace_context"],
            trace_attempts=json.loads(r["trace_attempts"] or "[]"),
            closed_tokens=(closed or {}).get(r["id"], {}),
        )
        for r in rows
    ]


LATE_COMPLETIONS_KEPT = 10
"""Late completions a token keeps (the last ones); older ones only count."""


def with_late_completions(token: Token, rows: Sequence[RowLike]) -> Token:
    """``token`` with its late completions, from rows of ``via``, ``attempted_at`` and the
    token's ``late_completion_count`` (read in one statement, so the two agree)."""
    if not rows:
        return token
    late = [
        LateCompletion(via=CompletionSource(r["via"]), at=from_ms(r["attempted_at"])) for r in rows
    ]
    count = int(rows[0]["late_completion_count"])
    return token.model_copy(update={"late_completions": late, "late_completion_count": count})


def page_slice(
    rows: Sequence[R], limit: int, *, before: bool, after: bool
) -> tuple[list[R], str | None, str | None]:
    """One page, newest first, from ``limit + 1`` rows fetched towards the page (oldest first
    when paging ``before`` a cursor, newest first otherwise), with the cursors of the older
    and the newer pages."""
    more = len(rows) > limit
    if before:
        kept = list(rows[:limit])[::-1]
        if not kept:
            return [], None, None
        return kept, kept[-1]["id"], kept[0]["id"] if more else None
    kept = list(rows[:limit])
    if not kept:
        return [], None, None
    return kept, kept[-1]["id"] if more else None, kept[0]["id"] if after else None
