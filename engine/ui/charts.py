"""Small pictures of the dashboard's lists, drawn on the server: runs finished per minute by
status over the last hour (stacked bars) and how many waiting tokens expire soon.

Pure functions over what the facade's lists return, so they are unit-tested without a
browser or a database; the pages say which runs and tokens they read (the lists are read a
page at a time, up to a bound, so that a busy database does not make the page slow).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..models import Run, RunStatus, Token

FINISHED = (
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CRASHED,
    RunStatus.TIMED_OUT,
    RunStatus.CANCELED,
    RunStatus.EXPIRED,
)
"""The final statuses, in the order they stack, bottom first."""

MINUTES = 60
WIDTH = 960
HEIGHT = 120
PLOT_LEFT = 40
PLOT_RIGHT = WIDTH - 20
PLOT_TOP = 10
PLOT_BOTTOM = HEIGHT - 24
GAP = 2.0
_SCALES = (1, 2, 5)


@dataclass(frozen=True)
class Piece:
    """One status's part of one minute's bar."""

    x: float
    y: float
    width: float
    height: float
    status: str
    count: int
    title: str


@dataclass(frozen=True)
class Mark:
    """A labelled line of the chart's axes: a moment under the bars, a count beside them."""

    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    """Runs finished per minute, stacked by status, in SVG user units."""

    pieces: tuple[Piece, ...]
    times: tuple[Mark, ...]
    counts: tuple[Mark, ...]
    totals: tuple[tuple[str, int], ...]
    """Each final status with its count over the hour, in stacking order (zeros left out)."""
    summary: str
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = PLOT_LEFT
    plot_right: int = PLOT_RIGHT
    plot_bottom: int = PLOT_BOTTOM


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def finished_per_minute(runs: Iterable[Run], now: datetime, minutes: int = MINUTES) -> Chart:
    """The runs that finished in the ``minutes`` whole minutes up to ``now``'s (the last bar
    is the minute going on), counted per minute and final status."""
    end = minute_of(now) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    counts = [dict.fromkeys(FINISHED, 0) for _ in range(minutes)]
    for run in runs:
        if run.finished_at is None or run.status not in counts[0]:
            continue
        if start <= run.finished_at < end:
            counts[(run.finished_at - start) // timedelta(minutes=1)][run.status] += 1
    top = _nice(max((sum(minute.values()) for minute in counts), default=0))
    slot = (PLOT_RIGHT - PLOT_LEFT) / minutes
    unit = (PLOT_BOTTOM - PLOT_TOP) / top
    pieces = []
    for index, minute in enumerate(counts):
        bottom = float(PLOT_BOTTOM)
        when = start + timedelta(minutes=index)
        for status, count in minute.items():
            if not count:
                continue
            height = count * unit
            bottom -= height
            words = f"{count} {status.value.lower().replace('_', ' ')}"
            pieces.append(
                Piece(
                    round(PLOT_LEFT + index * slot + GAP / 2, 2),
                    round(bottom, 2),
                    round(slot - GAP, 2),
                    round(height, 2),
                    status.value,
                    count,
                    f"{when:%H:%M} UTC: {words}",
                )
            )
    times = tuple(
        Mark(round(PLOT_LEFT + index * slot, 2), f"{start + timedelta(minutes=index):%H:%M}")
        for index in range(0, minutes + 1, 10)
    )
    levels = (0, top // 2, top) if top % 2 == 0 and top > 1 else (0, top)
    counts_marks = tuple(Mark(round(PLOT_BOTTOM - n * unit, 2), str(n)) for n in levels)
    totals = tuple(
        (status.value, total)
        for status in FINISHED
        if (total := sum(minute[status] for minute in counts))
    )
    return Chart(tuple(pieces), times, counts_marks, totals, _summary(counts, totals, start, end))


def _nice(n: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that is at least ``n``."""
    scale = 1
    while True:
        for step in _SCALES:
            if step * scale >= n:
                return step * scale
        scale *= 10


def _summary(
    counts: list[dict[RunStatus, int]],
    totals: tuple[tuple[str, int], ...],
    start: datetime,
    end: datetime,
) -> str:
    """The chart in words (the SVG's ``aria-label``)."""
    span = f"from {start:%H:%M} to {end:%H:%M} UTC"
    if not totals:
        return f"Runs finished per minute {span}: none."
    words = ", ".join(f"{n} {status.lower().replace('_', ' ')}" for status, n in totals)
    busiest = max(range(len(counts)), key=lambda i: sum(counts[i].values()))
    peak = sum(counts[busiest].values())
    at = start + timedelta(minutes=busiest)
    return f"Runs finished per minute {span}: {words}; at most {peak} in a minute ({at:%H:%M})."


@dataclass(frozen=True)
class Expiring:
    """How many waiting tokens expire soon, of those read (``complete``: all of them)."""

    within_hour: int
    within_day: int
    complete: bool


def expiring(tokens: Iterable[Token], now: datetime, *, complete: bool) -> Expiring:
    """Waiting tokens whose timeout falls within the next hour and the next 24 hours; one
    already past it (its timer has not closed it yet) counts as expiring now."""
    hour, day = now + timedelta(hours=1), now + timedelta(days=1)
    soon = [token.expires_at for token in tokens if token.is_waiting and token.expires_at]
    return Expiring(
        within_hour=sum(1 for at in soon if at <= hour),
        within_day=sum(1 for at in soon if at <= day),
        complete=complete,
    )
