"""The UI's own stylesheet and script, and a 404 page for every other path under /ui."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from .routing import PageError, PageRoute, ui_of

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


@router.get("/static/{name}")
async def static(request: Request, name: str) -> Response:
    response = ui_of(request).renderer.static(name)
    if response is None:
        raise PageError(404, "Not found", "There is no such file.")
    return response


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown(rest: str) -> Response:
    raise PageError(404, "Not found", "There is no page at this address.")
