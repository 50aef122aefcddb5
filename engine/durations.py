"""Durations as users write them ("30s", "1h30m", "7d") and the deadlines they make.

A timeout may be a duration string, a ``timedelta`` or an aware ``datetime``; everything is
turned into an absolute UTC deadline here, so storage only ever sees instants.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from .clock import to_ms
from .errors import ValidationError

_UNITS = {"w": 604800, "d": 86400, "hr": 3600, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]+)(w|d|hr|h|m|s)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:w|d|hr|h|m|s))+$")
_LONGEST = timedelta(days=365 * 100)
_MOST_DIGITS = 12
"""More digits than any number in a duration of at most 100 years (3.2e9 seconds) can have."""

Timeout = str | timedelta | datetime


@lru_cache(maxsize=1024)
def parse_duration(text: str, *, allow_zero: bool = False) -> timedelta:
    """Parse ``"1h30m"``-style text (units w, d, h/hr, m, s) into a positive timedelta.

    ``allow_zero`` accepts ``"0s"`` too (a sleep of nothing returns at once). Remembered: a
    task gives the same few durations (``timeout="1h"``) at every run.
    """
    cleaned = text.strip()
    if not _WHOLE.match(cleaned):
        raise ValidationError(
            f"invalid duration {text!r}: use one or more <number><unit> parts with units "
            "w, d, h, m, s (for example '30s', '1h30m', '7d')"
        )
    parts = _PART.findall(cleaned)
    if any(len(n.lstrip("0")) > _MOST_DIGITS for n, _ in parts):  # int() refuses 4,300 digits
        raise ValidationError(f"invalid duration {text[:40]!r}...: at most 100 years")
    seconds = sum(int(n.lstrip("0") or "0") * _UNITS[unit] for n, unit in parts)
    if seconds == 0 and not allow_zero:
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


def to_timedelta(value: str | timedelta, *, allow_zero: bool = False) -> timedelta:
    """A positive timedelta (or zero, with ``allow_zero``) from a duration string or a timedelta."""
    if isinstance(value, timedelta):
        if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
            least = "zero or longer" if allow_zero else "longer than zero"
            raise ValidationError(f"invalid duration {value!r}: it must be {least}")
        if value > _LONGEST:
            raise ValidationError(f"invalid duration {value!r}: at most 100 years")
        return value
    if isinstance(value, str):
        return parse_duration(value, allow_zero=allow_zero)
    raise ValidationError(f"invalid duration {value!r}: expected a string like '1h' or a timedelta")


def duration_ms(value: str | timedelta, *, allow_zero: bool = False) -> int:
    """The duration in whole milliseconds, rounded up: a wait never ends before it was asked to."""
    delta = to_timedelta(value, allow_zero=allow_zero)
    return -(-delta // timedelta(microseconds=1) // 1000)


@dataclass(frozen=True)
class Deadline:
    """When a wait ends, as the task gave it: an instant (``at_ms``) or a delay (``after_ms``).

    A delay counts from the moment the wait's waitpoint is made. The storage resolves the
    deadline once, by the database clock, when it makes that waitpoint; a replay of the call
    finds the waitpoint and reads its deadline back instead of computing it again (a delay
    would move, and an instant that has passed meanwhile is not an error).
    """

    at_ms: int | None = None
    after_ms: int = 0

    @classmethod
    def of(cls, value: Timeout, *, allow_zero: bool = False) -> Deadline:
        """A timeout as users write it: a duration, a timedelta or an aware datetime."""
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValidationError(
                    f"deadline {value.isoformat()} has no timezone; pass an aware datetime"
                )
            return cls(at_ms=to_ms(value))
        return cls(after_ms=duration_ms(value, allow_zero=allow_zero))

    def resolve(self, now_ms: int) -> int:
        """The deadline in milliseconds since the epoch, for a waitpoint made at ``now_ms``."""
        return self.at_ms if self.at_ms is not None else now_ms + self.after_ms


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
