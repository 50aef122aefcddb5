"""When a schedule ticks: cron expressions in a time zone, as instants in milliseconds.

Expressions are parsed and evaluated by cronsim (the cron library Healthchecks.io is built
on), not here: five fields, ``minute hour day-of-month month day-of-week`` as in Trigger.dev
and Debian's cron (``0 9 * * MON-FRI``, ``*/15 * * * *``, ``0 0 L * *``, ``0 0 * * 5L``,
``0 0 * * MON#1``), or six with seconds first (``*/10 * * * * *``: every ten seconds; ours,
Trigger.dev has no seconds). Time zones are IANA names (``Europe/Berlin``), read by zoneinfo
from the system's database or the ``tzdata`` package.

Daylight saving time is handled as cronsim documents, which is as Debian's cron does:

- a job at a fixed local time (neither the minute nor the hour field starts with ``*``) whose
  time is skipped when the clocks spring forward runs at the first minute after the gap
  (``30 2 * * *`` in Europe/Berlin on the last Sunday of March: at 03:00 local time); when
  the clocks fall back, it runs once, at the first of the two 02:30s;
- a job every minute or every hour (a ``*`` leading the minute or hour field) follows the
  real time: a skipped hour has no ticks, a repeated hour has its ticks twice.

Six-field expressions follow the real time always (cronsim: Debian's rules are for its
five fields). Every tick here is an instant (UTC milliseconds); the zone only says which.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

from .errors import ValidationError
from .models import CatchUp

UPCOMING = 5
"""How many of its next ticks a schedule shows (``Schedule.upcoming``, a run's payload)."""
MAX_EXPRESSION_LENGTH = 200
_WINDOWS_MS = (60_000, 3_600_000, 86_400_000, 32 * 86_400_000, 367 * 86_400_000)
"""How far back ``Cron.last_due`` looks for the latest tick before it looks further: a
schedule every second that was down for a day finds it among 60 ticks, not 86,400."""


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone, checked: ``Cron.of`` refuses what would not tick."""

    expression: str
    timezone: str = "UTC"

    @classmethod
    def of(cls, expression: Any, timezone: Any = None) -> Cron:
        """The expression (its fields separated by one space) and zone, or a
        ``ValidationError`` naming what is wrong: a bad field, an unknown time zone, or an
        expression that matches no time in the next 50 years (``0 0 * * 1L`` on the 31st
        of a 30-day month...)."""
        cron = cls(clean_cron(expression), clean_timezone(timezone))
        if cron.next_after(time.time_ns() // 1_000_000) is None:
            raise ValidationError(f"cron {cron.expression!r} never fires")
        return cron

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def description(self) -> str:
        """In English (``At 09:00 on Monday through Friday``), by cronsim; times are local."""
        return CronSim(self.expression, datetime.now(UTC)).explain()

    def after(self, after_ms: int) -> Iterator[int]:
        """The ticks strictly after ``after_ms``, in order, as UTC milliseconds (ending when
        none comes within 50 years of the one before).

        cronsim's fixed-time jobs count in local wall time, so started inside a repeated hour
        (when the clocks fell back) it may name the first of two equal wall times, an instant
        before the start: such ticks are passed over, so every tick is later than the last.
        """
        start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(self.zone)
        ticks = CronSim(self.expression, start)
        last = after_ms
        while True:
            try:
                moment = next(ticks)
            except StopIteration:
                return
            tick = int(moment.timestamp() * 1000)
            if tick > last:
                last = tick
                yield tick

    def next_after(self, after_ms: int) -> int | None:
        """The first tick after ``after_ms``; None if none comes within 50 years."""
        return next(self.after(after_ms), None)

    def upcoming(self, first_ms: int, count: int = UPCOMING) -> list[int]:
        """``count`` ticks from ``first_ms`` on (itself included: a tick, ``next_tick_at``)."""
        found = [first_ms]
        for tick in self.after(first_ms):
            if len(found) == count:
                break
            found.append(tick)
        return found[:count]

    def due(self, first_ms: int, now_ms: int, limit: int) -> list[int]:
        """The ticks from ``first_ms`` (a tick that fell due) to ``now_ms``, the oldest
        ``limit`` of them: what a schedule that catches up on every missed tick runs now."""
        found = [first_ms]
        for tick in self.after(first_ms):
            if tick > now_ms or len(found) == limit:
                break
            found.append(tick)
        return found

    def last_due(self, first_ms: int, now_ms: int) -> int:
        """The latest tick from ``first_ms`` (a tick that fell due) to ``now_ms``: what a
        schedule that catches up on its last missed tick only runs now. Looked for in a
        minute back, then an hour, a day, a month, a year, then all the way back to
        ``first_ms``, so a long downtime costs few steps however often the schedule ticks."""
        for window in (*_WINDOWS_MS, None):
            start = first_ms if window is None else max(first_ms, now_ms - window)
            latest = None
            for tick in self.after(start):
                if tick > now_ms:
                    break
                latest = tick
            if latest is not None:
                return latest
            if start == first_ms:
                break
        return first_ms


def clean_cron(expression: Any) -> str:
    """A cron expression of five fields (or six, seconds first), checked by cronsim."""
    example = "'0 9 * * MON-FRI'"
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError(f"cron must be a cron expression such as {example}")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValidationError(f"cron is at most {MAX_EXPRESSION_LENGTH} characters long")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValidationError(
            f"cron {expression!r} has {len(fields)} fields: give five (minute hour"
            " day-of-month month day-of-week), or six with seconds first"
        )
    text = " ".join(fields)
    try:
        CronSim(text, datetime.now(UTC))
    except CronSimError as exc:  # its message names the field: "Bad day-of-week"
        raise ValidationError(f"invalid cron {expression!r}: {str(exc).lower()}") from None
    return text


def clean_timezone(name: Any) -> str:
    """An IANA time zone name (``Europe/Berlin``); None is ``UTC``."""
    if name is None:
        return "UTC"
    if not isinstance(name, str) or name not in _known_timezones():
        raise ValidationError(
            f"unknown timezone {name!r}: use an IANA time zone name such as 'Europe/Berlin'"
            " or 'UTC'"
        )
    return name


def clean_catch_up(value: Any) -> CatchUp:
    """``"last"`` or ``"all"`` (``CatchUp``), refused otherwise with the choices named."""
    try:
        return CatchUp(value)
    except ValueError:
        choices = " or ".join(repr(c.value) for c in CatchUp)
        raise ValidationError(f"catch_up must be {choices}, not {value!r}") from None


def timezones() -> list[str]:
    """Every time zone name a schedule may use, sorted."""
    return sorted(_known_timezones())


@functools.cache
def _known_timezones() -> frozenset[str]:
    """zoneinfo's names, read once (it scans the zone files); ``UTC`` is always one."""
    return frozenset(available_timezones() | {"UTC"})


def iso_ms(ms: int) -> str:
    """An instant as JavaScript's ``Date.toISOString`` writes it (``2026-03-29T01:00:00.000Z``),
    the form Trigger.dev's scheduled payloads carry."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
