"""Schedules: every schedule with its next five ticks, in its own time zone and in UTC, a
page at a time (newest first), filtered by task. Signed-in only; what changes a schedule
is the API's, the CLI's and Python's (``engine.schedules``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request, Response

from ..models import Schedule
from .routing import PageRoute, SignedIn, engine_of, ui_of

router = APIRouter(prefix="/ui/schedules", route_class=PageRoute, include_in_schema=False)

PER_PAGE = 50


@dataclass(frozen=True)
class ScheduleRow:
    schedule: Schedule
    ticks: list[tuple[str, str, datetime]]
    """The next five ticks: each as the schedule's zone has it (``Mon 2026-12-07 09:00:00
    CET``), in UTC (``08:00 UTC``; empty for a schedule in UTC), and the instant."""


def row_of(schedule: Schedule) -> ScheduleRow:
    zone = ZoneInfo(schedule.timezone)
    in_utc = schedule.timezone != "UTC"
    return ScheduleRow(
        schedule,
        [
            (
                t.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z"),
                t.astimezone(UTC).strftime("%H:%M:%S UTC") if in_utc else "",
                t,
            )
            for t in schedule.upcoming
        ],
    )


@router.get("")
async def schedules(
    request: Request,
    _: SignedIn,
    task: str = "",
    page: int = Query(default=1, ge=1),
) -> Response:
    engine = engine_of(request)
    found = await engine.schedules.list(task=task or None, page=page, per_page=PER_PAGE)
    return ui_of(request).renderer.page(
        request,
        "schedules.html",
        rows=[row_of(schedule) for schedule in found.data],
        pagination=found.pagination,
        tasks=sorted(await engine.known_tasks()),
        task=task,
    )
