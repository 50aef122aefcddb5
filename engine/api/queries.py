"""Query strings as Trigger.dev writes them: ``filter[status]=A,B``, ``page[size]=25``, ...

Each parser turns one raw parameter into an engine value or raises a 400 "Query Error" that
names the parameter and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query

from ..durations import parse_duration
from ..errors import ValidationError
from ..models import RunStatus
from ..validation import MAX_PAGE_SIZE
from .problems import Problem, query_error

E = TypeVar("E", bound=StrEnum)


def comma_list(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def statuses(raw: str | None, enum: type[E], name: str = "filter[status]") -> list[E]:
    values = comma_list(raw)
    try:
        return [enum(value.upper()) for value in values]
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise query_error(f"{name}={raw!r}: use one or more of {allowed}") from None


API_RUN_STATUSES = (
    "PENDING_VERSION QUEUED DEQUEUED EXECUTING WAITING COMPLETED CANCELED FAILED CRASHED"
    " SYSTEM_FAILURE DELAYED EXPIRED TIMED_OUT"
).split()


def run_statuses(raw: str | None) -> list[RunStatus] | None:
    """``filter[status]`` of runs: any of Trigger.dev's 13 statuses is a valid filter.

    Returns the statuses this engine has (an empty list: none of them, so no run matches),
    or None when there is no filter.
    """
    values = [value.upper() for value in comma_list(raw)]
    if not values:
        return None
    unknown = [value for value in values if value not in API_RUN_STATUSES]
    if unknown:
        allowed = ", ".join(API_RUN_STATUSES)
        raise query_error(f"filter[status]={raw!r}: use one or more of {allowed}")
    ours = {status.value for status in RunStatus}
    return [RunStatus(value) for value in values if value in ours]


def page_size(raw: str | None) -> int:
    if raw is None:
        return 25
    small = raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_PAGE_SIZE))
    if not small or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise query_error(f"page[size]={raw!r}: use a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def moment(raw: str | None, name: str) -> datetime | None:
    """Epoch milliseconds or an ISO 8601 date (UTC when it has no offset)."""
    if raw is None or raw == "":
        return None
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise query_error(f"{name}={raw!r}: use epoch milliseconds or an ISO 8601 date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def created_range(
    period: str | None, start: str | None, end: str | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``filter[createdAt][period]`` (e.g. ``24h``) or an explicit ``[from]``/``[to]`` range."""
    if period:
        try:
            return now - parse_duration(period), None
        except ValidationError as exc:
            raise query_error(f"filter[createdAt][period]={period!r}: {exc}") from None
    return moment(start, "filter[createdAt][from]"), moment(end, "filter[createdAt][to]")


@dataclass(frozen=True)
class Window:
    """The part of a list query that tokens and runs share: created-at range and paging."""

    created_after: datetime | None
    created_before: datetime | None
    limit: int
    after: str | None
    before: str | None

    def as_options(self) -> dict[str, Any]:
        return {
            "created_after": self.created_after,
            "created_before": self.created_before,
            "limit": self.limit,
            "after": self.after,
            "before": self.before,
        }


def window(
    period: Annotated[str | None, Query(alias="filter[createdAt][period]")] = None,
    created_from: Annotated[str | None, Query(alias="filter[createdAt][from]")] = None,
    created_to: Annotated[str | None, Query(alias="filter[createdAt][to]")] = None,
    size: Annotated[str | None, Query(alias="page[size]")] = None,
    after: Annotated[str | None, Query(alias="page[after]")] = None,
    before: Annotated[str | None, Query(alias="page[before]")] = None,
) -> Window:
    start, end = created_range(period, created_from, created_to, datetime.now(UTC))
    return Window(start, end, page_size(size), after, before)


ListWindow = Annotated[Window, Depends(window)]


def deadline(raw: str) -> str | datetime:
    """A duration (``1h30m``) or an ISO date with an offset: a token ``timeout``, a ``delay``.

    Whether a past date is refused (a timeout) or means "now" (a delay) is the engine's call.
    """
    if raw[:1].isdigit() and any(c in raw for c in "-T:"):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise Problem(422, f"timeout {raw!r} is neither a duration nor an ISO date") from None
        if parsed.tzinfo is None:
            raise Problem(422, f"timeout {raw!r} has no timezone offset; add Z or +00:00")
        return parsed
    return raw
