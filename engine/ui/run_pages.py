"""Runs: a filterable list and each run's page (status, payload, output, errors with their
stack traces, and the timeline of steps, waits and how each wait ended). Signed-in only."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..models import RunStatus
from .render import PAGE_HEADERS
from .routing import PageRoute, SameSite, SignedIn, engine_of, ui_of

router = APIRouter(prefix="/ui/runs", route_class=PageRoute, include_in_schema=False)


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
    filters = {"status": status, "task": task, "tag": tag}
    stream = {"filter[status]": status, "filter[taskIdentifier]": task, "filter[tag]": tag}
    chosen = {k: v for k, v in stream.items() if v}
    return ui_of(request).renderer.page(
        request,
        "runs.html",
        page=page,
        statuses=[s.value for s in RunStatus],
        tasks=sorted(await engine.known_tasks()),
        query=urlencode(filters),
        stream="/api/v1/runs/stream" + (f"?{urlencode(chosen)}" if chosen else ""),
        status=status,
        task=task,
        tag=tag,
    )


@router.get("/{run_id}")
async def run_page(request: Request, run_id: str, _: SignedIn) -> Response:
    engine = engine_of(request)
    run = await engine.runs.retrieve(run_id)
    timeline = await engine.runs.timeline(run_id)
    return ui_of(request).renderer.page(
        request,
        "run.html",
        run=run,
        timeline=timeline,
        stream=None if run.is_finished else f"/api/v1/runs/{run_id}/stream",
    )


@router.post("/{run_id}/cancel")
async def cancel(request: Request, run_id: str, _: SignedIn, __: SameSite) -> Response:
    await engine_of(request).runs.cancel(run_id)
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303, headers=PAGE_HEADERS)
