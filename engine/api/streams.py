"""Server-sent events: a run, the token list, the run list, as they change (ours).

    GET /api/v1/runs/{id}/stream            event: run     data: <run JSON, as /api/v3/runs>
    GET /api/v1/waitpoints/tokens/stream    event: tokens  data: {"data": [<token JSON>...]}
    GET /api/v1/runs/stream                 event: runs    data: {"data": [<run JSON>...]}

Each stream sends the current state at once and again after every commit that changed it, a
``: keep-alive`` comment when nothing changed for a while, and ``event: end`` once a run
finished, after which it closes. Streams with the same query share one watcher
(``watchers.Watcher``): one read and one serialised event per change, however many are open.

List streams say *what* changed, not everything about it: tokens come without ``data`` (and
its ``output`` copy), runs without ``payload`` and ``output``; those can be large and are on
the item's own route. The one-run stream sends the whole run, as ``/api/v3/runs/{id}`` does.

Open streams are capped per client address (``WAITPOINT_MAX_STREAMS_PER_CLIENT``, 429 past
it) and in all (``WAITPOINT_MAX_STREAMS``, 503); a stream's slot and its share of a watcher
are given back as soon as its client goes away.

Auth: the secret key, the dashboard's session cookie (``EventSource`` cannot send headers),
or, for one run, a public access token with ``read:runs:<id>`` (what trigger returns).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import AuthError
from ..models import Page, Run, Token, WaitpointStatus
from .auth import Caller
from .deps import EngineDep, auth_of
from .queries import comma_list, page_size, run_statuses, statuses
from .watchers import StreamHub, StreamSlots, Watcher
from .wire import page_json, run_json, token_json

router = APIRouter(tags=["streams"], include_in_schema=False)
"""Not in /openapi.json: OpenAPI cannot describe an endless event stream (and a fuzzer that
calls every documented route would wait on one forever); the README documents them."""

KEEP_ALIVE_SECONDS = 15.0
RETRY_MS = 2000
SESSION_COOKIE = "waitpoint_session"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = b"event: end\ndata: {}\n\n"
_KEEP_ALIVE = b": keep-alive\n\n"

LIST_TOKEN_BODIES = ("data", "output", "outputType")
"""Left out of tokens in the token-list stream: the completion data (and its string copy)."""
LIST_RUN_BODIES = ("payload", "output")
"""Left out of runs in the run-list stream: what went in and what came out."""


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


def hub_of(request: Request) -> StreamHub:
    """The app's watchers and stream slots, made on the first stream from its settings."""
    state = request.app.state
    hub: StreamHub | None = getattr(state, "stream_hub", None)
    if hub is None:
        settings = state.settings
        slots = StreamSlots(settings.max_streams, settings.max_streams_per_client)
        hub = StreamHub(state.engine.storage, slots)
        state.stream_hub = hub
    return hub


def view_of(who: Caller) -> str:
    """Part of a watcher's key: callers who may see different JSON never share a watcher.

    Today the secret key, a dashboard session and a ``read:runs:<id>`` token all see the same
    JSON; keying on the view keeps that true if one of them is ever shown less.
    """
    return "secret" if who.is_secret else "scoped"


class EventStream(StreamingResponse):
    """A stream that gives back its slot and its watcher however it ends.

    Released when the response ends for any reason (the client went away, the run ended, an
    error), and from the body's own ``finally`` should the response never be sent at all.
    """

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=_HEADERS)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


async def _events(watcher: Watcher, release: Callable[[], None]) -> AsyncIterator[bytes]:
    """One client's copy of a watcher: its latest state whenever it moved on, keep-alives.

    A client that reads slowly gets the newest state when it catches up, not each one it
    missed: the watcher holds one event, never a queue per client.
    """
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        seen = 0
        while True:
            published = watcher.published
            if watcher.version > seen:
                seen = watcher.version
                yield watcher.message
                if watcher.ended:
                    yield _END
                    return
                continue
            if watcher.failed is not None:
                return  # the connection closes; EventSource reconnects after RETRY_MS
            try:
                await asyncio.wait_for(published.wait(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield _KEEP_ALIVE
    finally:
        release()


async def _open(
    request: Request,
    key: Hashable,
    event: str,
    read: Callable[[], Awaitable[Any]],
    body: Callable[[Any], Any],
    done: Callable[[Any], bool] = lambda _: False,
) -> EventStream:
    """Take a slot (429/503 past a cap), join the watcher of ``key``, and stream it."""
    hub = hub_of(request)
    client = request.client.host if request.client else "unknown"
    hub.slots.take(client)
    try:
        watcher = await hub.subscribe(key, event, read, body, done)
    except BaseException:
        hub.slots.give_back(client)
        raise
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            hub.unsubscribe(watcher)
            hub.slots.give_back(client)

    return EventStream(_events(watcher, release), release)


def list_token_json(token: Token) -> dict[str, Any]:
    body = token_json(token)
    for name in LIST_TOKEN_BODIES:
        body.pop(name, None)
    return body


def list_run_json(run: Run) -> dict[str, Any]:
    body = run_json(run)
    for name in LIST_RUN_BODIES:
        body.pop(name, None)
    return body


@router.get("/api/v1/runs/stream", summary="Follow the run list as it changes (ours, SSE)")
async def runs_stream(
    request: Request,
    engine: EngineDep,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    task: Annotated[str | None, Query(alias="filter[taskIdentifier]")] = None,
    tag: Annotated[str | None, Query(alias="filter[tag]")] = None,
    size: Annotated[str | None, Query(alias="page[size]")] = None,
) -> StreamingResponse:
    who = await stream_caller(request)
    wanted = run_statuses(status)
    tasks, tags = comma_list(task), comma_list(tag)
    limit = page_size(size)

    async def read() -> Page[Run]:
        if wanted == []:
            return Page(data=[])
        return await engine.runs.list(status=wanted, task=tasks, tags=tags, limit=limit)

    def body(page: Page[Run]) -> dict[str, Any]:
        return page_json(page, [list_run_json(r) for r in page.data])

    shown = None if wanted is None else tuple(sorted({s.value for s in wanted}))
    key = (view_of(who), "runs", shown, tuple(sorted(set(tasks))), tuple(sorted(set(tags))), limit)
    return await _open(request, key, "runs", read, body)


@router.get("/api/v1/runs/{run_id}/stream", summary="Follow one run until it ends (ours, SSE)")
async def run_stream(run_id: str, request: Request, engine: EngineDep) -> StreamingResponse:
    who = await stream_caller(request, f"read:runs:{run_id}")

    async def read() -> Run:
        return await engine.runs.retrieve(run_id)  # 404 (first read) before the stream starts

    def finished(run: Run) -> bool:
        return run.is_finished

    key = (view_of(who), "run", run_id)
    return await _open(request, key, "run", read, run_json, finished)


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
    who = await stream_caller(request)
    wanted = statuses(status, WaitpointStatus)
    tagged = comma_list(tags)
    limit = page_size(size)

    async def read() -> Page[Token]:
        return await engine.tokens.list(status=wanted, tags=tagged, limit=limit)

    def body(page: Page[Token]) -> dict[str, Any]:
        return page_json(page, [list_token_json(t) for t in page.data])

    shown = tuple(sorted({s.value for s in wanted}))
    key = (view_of(who), "tokens", shown, tuple(sorted(set(tagged))), limit)
    return await _open(request, key, "tokens", read, body)
