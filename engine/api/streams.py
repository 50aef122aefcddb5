"""Server-sent events: a run, the token list, the run list, as they change (ours).

    GET /api/v1/runs/{id}/stream            event: run     data: <run JSON, as /api/v3/runs>
    GET /api/v1/waitpoints/tokens/stream    event: tokens  data: {"data": [<token JSON>...]}
    GET /api/v1/runs/stream                 event: runs    data: {"data": [<run JSON>...]}

Each stream sends the current state at once and again after every commit that changed it
(``engine.client.follow`` waits on the storage's change event, so an idle stream costs no
queries beyond a re-check every few seconds), a ``: keep-alive`` comment when nothing
changed for a while, and ``event: end`` once a run finished, after which it closes.
Starlette stops the generator when the client goes away.

Auth: the secret key, the dashboard's session cookie (``EventSource`` cannot send headers),
or, for one run, a public access token with ``read:runs:<id>`` (what trigger returns).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ..client import follow
from ..models import Page, Run, Token, WaitpointStatus
from .auth import AuthError, Caller
from .deps import EngineDep, auth_of
from .queries import comma_list, page_size, run_statuses, statuses
from .wire import page_json, run_json, token_json

router = APIRouter(tags=["streams"], include_in_schema=False)
"""Not in /openapi.json: OpenAPI cannot describe an endless event stream (and a fuzzer that
calls every documented route would wait on one forever); the README documents them."""

KEEP_ALIVE_SECONDS = 15.0
RETRY_MS = 2000
SESSION_COOKIE = "waitpoint_session"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> bytes:
    """One event; JSON never contains a raw newline, so ``data`` is one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream_caller(request: Request, scope: str | None = None) -> Caller:
    """Whoever may watch: the secret key or a scoped token (header), or a dashboard session."""
    header = request.headers.get("authorization")
    if header:
        who = auth_of(request).caller(header)
        if scope is None:
            auth_of(request).require_secret(who)
        else:
            auth_of(request).require(who, scope)
        return who
    ui = getattr(request.app.state, "ui", None)
    if ui is not None:
        await ui.sessions.verify(request.cookies.get(SESSION_COOKIE), "session")
        return Caller(is_secret=True)
    raise AuthError(401, "Invalid API key: send Authorization: Bearer <secret key>")


async def _events(
    read: Callable[[], Awaitable[Any]],
    event: str,
    body: Callable[[Any], Any],
    first: Any,
    done: Callable[[Any], bool] = lambda _: False,
    *,
    storage: Any,
) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    yield sse(event, body(first))
    if done(first):
        yield sse("end", {})
        return
    last = json.dumps(body(first), sort_keys=True)
    changes = follow(
        storage, read, key=lambda v: json.dumps(body(v), sort_keys=True), idle=KEEP_ALIVE_SECONDS
    )
    async for value in changes:
        if value is None:
            yield b": keep-alive\n\n"
            continue
        text = json.dumps(body(value), sort_keys=True)
        if text == last:
            continue
        last = text
        yield sse(event, body(value))
        if done(value):
            yield sse("end", {})
            return


def _stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_HEADERS)


@router.get("/api/v1/runs/stream", summary="Follow the run list as it changes (ours, SSE)")
async def runs_stream(
    request: Request,
    engine: EngineDep,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    task: Annotated[str | None, Query(alias="filter[taskIdentifier]")] = None,
    tag: Annotated[str | None, Query(alias="filter[tag]")] = None,
    size: Annotated[str | None, Query(alias="page[size]")] = None,
) -> StreamingResponse:
    await stream_caller(request)
    wanted = run_statuses(status)
    limit = page_size(size)

    async def read() -> Page[Run]:
        if wanted == []:
            return Page(data=[])
        return await engine.runs.list(
            status=wanted, task=comma_list(task), tags=comma_list(tag), limit=limit
        )

    def body(page: Page[Run]) -> dict[str, Any]:
        return page_json(page, [run_json(r) for r in page.data])

    first = await read()
    return _stream(_events(read, "runs", body, first, storage=engine.storage))


@router.get("/api/v1/runs/{run_id}/stream", summary="Follow one run until it ends (ours, SSE)")
async def run_stream(run_id: str, request: Request, engine: EngineDep) -> StreamingResponse:
    await stream_caller(request, f"read:runs:{run_id}")
    first = await engine.runs.retrieve(run_id)  # 404 before the stream starts

    async def read() -> Run:
        return await engine.runs.retrieve(run_id)

    def finished(run: Run) -> bool:
        return run.is_finished

    return _stream(_events(read, "run", run_json, first, finished, storage=engine.storage))


@router.get(
    "/api/v1/waitpoints/tokens/stream",
    summary="Follow the token list as it changes (ours, SSE)",
)
async def tokens_stream(
    request: Request,
    engine: EngineDep,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    tags: Annotated[str | None, Query(alias="filter[tags]")] = None,
    size: Annotated[str | None, Query(alias="page[size]")] = None,
) -> StreamingResponse:
    await stream_caller(request)
    wanted = statuses(status, WaitpointStatus)
    limit = page_size(size)

    async def read() -> Page[Token]:
        return await engine.tokens.list(status=wanted, tags=comma_list(tags), limit=limit)

    def body(page: Page[Token]) -> dict[str, Any]:
        return page_json(page, [token_json(t) for t in page.data])

    first = await read()
    return _stream(_events(read, "tokens", body, first, storage=engine.storage))
