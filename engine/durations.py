"""Durations as users write them ("30s", "1h30m", "7d") and the deadlines they make.

A timeout may be a duration string, a ``timedelta`` or an aware ``datetime``; everything is
turned into an absolute UTC deadline here, so storage only ever sees instants.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from .errors import ValidationError

_UNITS = {"w": 604800, "d": 86400, "hr": 3600, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]+)(w|d|hr|h|m|s)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:w|d|hr|h|m|s))+$")
_LONGEST = timedelta(days=365 * 100)

Timeout = str | timedelta | datetime


def parse_duration(text: str) -> timedelta:
    """Parse ``"1h30m"``-style text (units w, d, h/hr, m, s) into a positive timedelta."""
    cleaned = text.strip()
    if not _WHOLE.match(cleaned):
        raise ValidationError(
            f"invalid duration {text!r}: use one or more <number><unit> parts with units "
            "w, d, h, m, s (for example '30s', '1h30m', '7d')"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if seconds <= 0:
        raise ValidationError(f"invalid duration {text!r}: it must be longer than zero")
    if seconds > _LONGEST.total_seconds():
        raise ValidationError(f"invalid duration {text!r}: at most 100 years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a timedelta as ``parse_duration`` reads it (``5400s`` -> ``1h30m``).

    Fractions of a second are rounded up, so the text never promises less time than given.
    """
    seconds = math.ceil(delta.total_seconds())
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def to_timedelta(value: str | timedelta) -> timedelta:
    """A positive timedelta from a duration string or a timedelta."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValidationError(f"invalid duration {value!r}: it must be longer than zero")
        if value > _LONGEST:
            raise ValidationError(f"invalid duration {value!r}: at most 100 years")
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValidationError(f"invalid duration {value!r}: expected a string like '1h' or a timedelta")


def resolve_deadline(value: Timeout, now: datetime) -> tuple[datetime, str | None]:
    """Turn a timeout into ``(deadline, ttl text)``; the ttl is None for absolute datetimes.

    A datetime must be timezone-aware and in the future: a past deadline is almost always a
    bug in the caller, so it is refused rather than treated as "no timeout".
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(
                f"timeout datetime {value.isoformat()} has no timezone; pass an aware datetime"
            )
        if value <= now:
            raise ValidationError(f"timeout {value.isoformat()} is in the past")
        if value - now > _LONGEST:
            raise ValidationError(f"timeout {value.isoformat()} is more than 100 years away")
        return value.astimezone(UTC), None
    delta = to_timedelta(value)
    text = value.strip() if isinstance(value, str) else format_duration(delta)
    return now + delta, text
