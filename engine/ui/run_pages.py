"""Runs: a filterable list and each run's page (status, payload, output, errors with their
stack traces, the timeline of steps, waits and how each wait ended, and buttons that act on
the run: ``RUN_ACTIONS``). Signed-in only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..client import Engine
from ..models import Run, RunStatus
from .charts import FINISHED, Chart, finished_per_minute
from .render import PAGE_HEADERS
from .routing import PageError, PageRoute, SameSite, SignedIn, engine_of, ui_of
from .waterfall import waterfall

router = APIRouter(prefix="/ui/runs", route_class=PageRoute, include_in_schema=False)


@dataclass(frozen=True)
class RunAction:
    """A button on a run's page: a form post to ``/ui/runs/{id}/{name}`` (signed in, from
    this site) that calls the facade, then shows the run ``act`` returned (the same run, or
    a new one it made) with ``done`` as a notice. One entry of ``RUN_ACTIONS`` is all an
    action needs: its route, its button and its notice follow from it."""

    name: str
    label: str
    shown: Callable[[Run], bool]
    """Whether the run's page offers it (the facade still refuses what does not apply)."""
    act: Callable[[Engine, str], Awaitable[Run]]
    done: str
    danger: bool = False


def _paused(run: Run) -> bool:
    return run.paused_at is not None and not run.is_finished


RUN_ACTIONS: tuple[RunAction, ...] = (
    RunAction(
        "pause",
        "Pause run",
        lambda run: not run.is_finished and run.paused_at is None,
        lambda engine, run_id: engine.runs.pause(run_id),
        "Run paused.",
    ),
    RunAction(
        "resume",
        "Resume run",
        _paused,
        lambda engine, run_id: engine.runs.resume(run_id),
        "Run resumed.",
    ),
    RunAction(
        "retry",
        "Retry run",
        lambda run: run.status.is_failure,
        lambda engine, run_id: engine.runs.retry(run_id),
        "Run retried: its journaled steps replay, the step that failed runs again.",
    ),
    RunAction(
        "replay",
        "Replay as a new run",
        lambda run: run.is_finished,
        lambda engine, run_id: engine.runs.replay(run_id),
        "A replay of the run: a new run of its task with its payload.",
    ),
    RunAction(
        "cancel",
        "Cancel run",
        lambda run: not run.is_finished,
        lambda engine, run_id: engine.runs.cancel(run_id),
        "Run canceled.",
        danger=True,
    ),
)
_ACTIONS = {action.name: action for action in RUN_ACTIONS}


CHART_PAGES = 5
"""Pages of 100 read for the chart of runs finished per minute: its newest 500 runs."""
CHART_CREATED_WITHIN = timedelta(days=1)
"""The chart counts runs created this recently (``Runs.list`` filters on creation, not on
finishing): a run that waited longer than that before it finished is not counted."""


@dataclass(frozen=True)
class FinishedLately:
    """The runs page's chart, and what it was counted from: the page says so, since the
    list it reads is bounded."""

    chart: Chart
    read: int
    """How many finished runs were read."""
    complete: bool
    """False: more finished runs were created within ``CHART_CREATED_WITHIN`` than read."""


async def finished_lately(
    engine: Engine, now: datetime, task: str | None, tag: str | None
) -> FinishedLately:
    """The chart of the runs (of ``task``, tagged ``tag``) finished in the last hour, from
    the newest ``CHART_PAGES`` pages of finished runs created within a day."""
    found: list[Run] = []
    after = None
    for _ in range(CHART_PAGES):
        page = await engine.runs.list(
            status=[status.value for status in FINISHED],
            task=task,
            tags=[tag] if tag else None,
            created_after=now - CHART_CREATED_WITHIN,
            limit=100,
            after=after,
        )
        found += page.data
        after = page.next_cursor
        if after is None:
            break
    return FinishedLately(finished_per_minute(found, now), len(found), after is None)


@router.get("")
async def runs(
    request: Request,
    _: SignedIn,
    status: str = "",
    task: str = "",
    tag: str = "",
    after: str | None = None,
    before: str | None = None,
) -> Response:
    engine = engine_of(request)
    page = await engine.runs.list(
        status=status or None,
        task=task or None,
        tags=[tag] if tag else None,
        limit=50,
        after=after,
        before=before,
    )
    # the chart goes with the first page: older pages are for looking back
    first = after is None and before is None
    lately = await finished_lately(engine, datetime.now(UTC), task or None, tag) if first else None
    filters = {"status": status, "task": task, "tag": tag}
    stream = {"filter[status]": status, "filter[taskIdentifier]": task, "filter[tag]": tag}
    chosen = {k: v for k, v in stream.items() if v}
    return ui_of(request).renderer.page(
        request,
        "runs.html",
        page=page,
        lately=lately,
        statuses=[s.value for s in RunStatus],
        tasks=sorted(await engine.known_tasks()),
        query=urlencode(filters),
        stream="/api/v1/runs/stream" + (f"?{urlencode(chosen)}" if chosen else ""),
        status=status,
        task=task,
        tag=tag,
    )


@router.get("/{run_id}")
async def run_page(request: Request, run_id: str, _: SignedIn, done: str = "") -> Response:
    """``done``: the action just taken (``act`` sends here), whose notice the page shows."""
    engine = engine_of(request)
    run = await engine.runs.retrieve(run_id)
    timeline = await engine.runs.timeline(run_id)
    # drawn as of now while the run goes on: what it executes or waits on reaches the edge
    picture = waterfall(timeline, None if run.is_finished else datetime.now(UTC))
    task_paused = None  # a finished run is no longer held by its task
    if not run.is_finished:
        paused_tasks = {t.task_id: t.paused_at for t in await engine.tasks.paused()}
        task_paused = paused_tasks.get(run.task_identifier)
    return ui_of(request).renderer.page(
        request,
        "run.html",
        run=run,
        timeline=timeline,
        picture=picture,
        paused=_paused(run),
        task_paused=task_paused,
        actions=[action for action in RUN_ACTIONS if action.shown(run)],
        notice=_ACTIONS[done].done if done in _ACTIONS else None,
        stream=None if run.is_finished else f"/api/v1/runs/{run_id}/stream",
    )


@router.post("/{run_id}/{action}")
async def act(request: Request, run_id: str, action: str, _: SignedIn, __: SameSite) -> Response:
    """One of ``RUN_ACTIONS``, then back to the page of the run it gave (post, redirect, get:
    reloading that page sends nothing again)."""
    chosen = _ACTIONS.get(action)
    if chosen is None:
        raise PageError(404, "Not found", f"a run has no action {action!r}")
    run = await chosen.act(engine_of(request), run_id)
    query = urlencode({"done": chosen.name})
    return RedirectResponse(f"/ui/runs/{run.id}?{query}", status_code=303, headers=PAGE_HEADERS)
