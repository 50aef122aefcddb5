"""Time as the engine sees it: UTC instants, stored as integer milliseconds.

For SQLite the database clock *is* the host clock, so the engine reads it here; tests may
hand storage a different ``Clock`` to move time without sleeping.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """The host's wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, rounded up so that a deadline never fires early."""
    return math.ceil(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def from_ms_or_none(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)
