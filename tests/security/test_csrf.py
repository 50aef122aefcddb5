"""Form posts under /ui come from our own pages, also from browsers without Sec-Fetch-Site.

With ``Sec-Fetch-Site`` the browser's word decides (``same-origin`` or ``none``). Without it, a
post must carry an ``Origin`` equal to the server's own origin (the public URL's, or the one
the request was addressed to), or, without ``Origin``, such a ``Referer``; anything else is a
403 page and changes nothing. Every state-changing route under /ui is checked (sign-in,
sign-out, completing, cancelling and sharing a token, the run page's actions, an approval
link, an approver's voting link), and a test makes sure no such route is left out.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

import engine.ui as ui_package
from engine import Engine, Settings, TaskDefinition, Worker, request_approval
from engine.api import create_app
from engine.api.auth import Auth
from engine.models import RunStatus, TaskInfo
from engine.signing import approval_url, vote_url
from engine.ui.sessions import COOKIE
from tests.conftest import wait_for_status

KEY = "sk_test_waitpoint_csrf_tests_0123456789abcdef"
BASE_URL = "http://testserver"
PUBLIC_URL = "https://waitpoint.example.com"
"""``WAITPOINT_PUBLIC_URL``: the address behind a proxy, which differs from the Host here."""
EVIL = "https://evil.example"
SIGN_IN = {"sec-fetch-site": "same-origin"}

ACCEPTED, REFUSED = True, False
CASES: dict[str, tuple[dict[str, str], bool]] = {
    "cross-site Origin": ({"origin": EVIL}, REFUSED),
    "opaque Origin (null)": ({"origin": "null"}, REFUSED),
    "Origin of another port": ({"origin": "http://testserver:8080"}, REFUSED),
    "Origin of another scheme": ({"origin": "https://testserver"}, REFUSED),
    "cross-site Origin, same-origin Referer": (
        {"origin": EVIL, "referer": f"{BASE_URL}/ui/tokens"},
        REFUSED,
    ),
    "no Origin, cross-site Referer": ({"referer": f"{EVIL}/ui/tokens"}, REFUSED),
    "no Origin, no Referer": ({}, REFUSED),
    "same Origin": ({"origin": BASE_URL}, ACCEPTED),
    "same Origin with the default port": ({"origin": "HTTP://TestServer:80"}, ACCEPTED),
    "the public URL's Origin": ({"origin": PUBLIC_URL}, ACCEPTED),
    "no Origin, same-origin Referer": ({"referer": f"{BASE_URL}/ui/tokens?tag=x"}, ACCEPTED),
    "Sec-Fetch-Site cross-site, same Origin": (
        {"sec-fetch-site": "cross-site", "origin": BASE_URL},
        REFUSED,
    ),
    "Sec-Fetch-Site same-site": ({"sec-fetch-site": "same-site"}, REFUSED),
    "Sec-Fetch-Site same-origin, no Origin": ({"sec-fetch-site": "same-origin"}, ACCEPTED),
    "Sec-Fetch-Site none (typed or bookmarked)": ({"sec-fetch-site": "none"}, ACCEPTED),
}


@dataclass
class Post:
    """One form post to send, and how to tell whether it changed anything."""

    path: str
    data: dict[str, str]
    changed: Callable[[httpx.Response], Awaitable[bool]]
    cookie: str | None = None


Prepare = Callable[[Engine, httpx.AsyncClient], Awaitable[Post]]


async def _session(client: httpx.AsyncClient) -> str:
    answer = await client.post("/ui/login", data={"key": KEY}, headers=SIGN_IN)
    assert answer.status_code == 303, answer.text
    return answer.cookies[COOKIE]


async def sign_in(engine: Engine, client: httpx.AsyncClient) -> Post:
    async def changed(answer: httpx.Response) -> bool:
        return answer.status_code == 303 and COOKIE in answer.cookies

    return Post("/ui/login", {"key": KEY}, changed)


async def sign_out(engine: Engine, client: httpx.AsyncClient) -> Post:
    session = await _session(client)

    async def changed(answer: httpx.Response) -> bool:
        page = await client.get("/ui/tokens", headers={"cookie": f"{COOKIE}={session}"})
        return page.status_code == 401

    return Post("/ui/logout", {}, changed, cookie=session)


async def complete_token(engine: Engine, client: httpx.AsyncClient) -> Post:
    token = await engine.tokens.create(timeout="1h")

    async def changed(answer: httpx.Response) -> bool:
        return not (await engine.tokens.retrieve(token.id)).is_waiting

    return Post(f"/ui/tokens/{token.id}/complete", {"json": "1"}, changed, await _session(client))


async def cancel_token(engine: Engine, client: httpx.AsyncClient) -> Post:
    token = await engine.tokens.create(timeout="1h")

    async def changed(answer: httpx.Response) -> bool:
        return not (await engine.tokens.retrieve(token.id)).is_waiting

    return Post(f"/ui/tokens/{token.id}/cancel", {}, changed, await _session(client))


async def share_token(engine: Engine, client: httpx.AsyncClient) -> Post:
    token = await engine.tokens.create(timeout="1h")

    async def changed(answer: httpx.Response) -> bool:
        return 'id="approval-link"' in answer.text

    return Post(
        f"/ui/tokens/{token.id}/link", {"expires_in": "1h"}, changed, await _session(client)
    )


async def cancel_run(engine: Engine, client: httpx.AsyncClient) -> Post:
    await engine.storage.register_tasks([TaskInfo("csrf-task")])
    run = await engine.trigger("csrf-task", {})

    async def changed(answer: httpx.Response) -> bool:
        return (await engine.runs.retrieve(run.id)).status is RunStatus.CANCELED

    return Post(f"/ui/runs/{run.id}/cancel", {}, changed, await _session(client))


async def pause_run(engine: Engine, client: httpx.AsyncClient) -> Post:
    await engine.storage.register_tasks([TaskInfo("csrf-task")])
    run = await engine.trigger("csrf-task", {})

    async def changed(answer: httpx.Response) -> bool:
        return (await engine.runs.retrieve(run.id)).paused_at is not None

    return Post(f"/ui/runs/{run.id}/pause", {}, changed, await _session(client))


async def resume_run(engine: Engine, client: httpx.AsyncClient) -> Post:
    await engine.storage.register_tasks([TaskInfo("csrf-task")])
    run = await engine.runs.pause((await engine.trigger("csrf-task", {})).id)

    async def changed(answer: httpx.Response) -> bool:
        return (await engine.runs.retrieve(run.id)).paused_at is None

    return Post(f"/ui/runs/{run.id}/resume", {}, changed, await _session(client))


async def approve(engine: Engine, client: httpx.AsyncClient) -> Post:
    token = await engine.tokens.create(timeout="1h")
    link = urlsplit(approval_url(BASE_URL, Auth(KEY), token.id, "1h"))

    async def changed(answer: httpx.Response) -> bool:
        return not (await engine.tokens.retrieve(token.id)).is_waiting

    return Post(f"{link.path}?{link.query}", {"json": "true"}, changed)


async def _ask_ana(payload: object) -> bool:
    return (await request_approval("CSRF check", approvers=["ana@example.com"])).approved


ASK_ANA = TaskDefinition(id="csrf-approval", fn=_ask_ana)


async def vote(engine: Engine, client: httpx.AsyncClient) -> Post:
    worker = Worker(engine, {ASK_ANA.id: ASK_ANA}, poll_seconds=0.02)
    runner = asyncio.create_task(worker.run())
    try:  # the worker only parks the run on the approval: a vote needs none
        await asyncio.wait_for(worker.started.wait(), 5)
        run = await engine.trigger(ASK_ANA.id, {})
        await wait_for_status(engine, run.id, "WAITING", timeout=20)
    finally:
        worker.stop(graceful=False)
        await asyncio.wait_for(runner, 10)
    [approval] = await engine.approvals.list(run_id=run.id)
    link = urlsplit(vote_url(BASE_URL, Auth(KEY), approval.id, "ana@example.com", "1h"))

    async def changed(answer: httpx.Response) -> bool:
        return bool((await engine.approvals.retrieve(approval.id)).votes)

    return Post(f"{link.path}?{link.query}", {"vote": "approve"}, changed)


ROUTES: dict[str, tuple[str, Prepare]] = {
    "sign in": ("/ui/login", sign_in),
    "sign out": ("/ui/logout", sign_out),
    "complete a token": ("/ui/tokens/{token_id}/complete", complete_token),
    "cancel a token": ("/ui/tokens/{token_id}/cancel", cancel_token),
    "share an approval link": ("/ui/tokens/{token_id}/link", share_token),
    # every action of the run page (engine.ui.run_pages.RUN_ACTIONS) is this one route
    "cancel a run": ("/ui/runs/{run_id}/{action}", cancel_run),
    "pause a run": ("/ui/runs/{run_id}/{action}", pause_run),
    "resume a run": ("/ui/runs/{run_id}/{action}", resume_run),
    "answer an approval link": ("/ui/approve/{token_id}", approve),
    "vote through an approver's link": ("/ui/vote/{approval_id}", vote),
}


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[Engine]:
    async with Engine(sqlite_url, settings=Settings(public_url=PUBLIC_URL)) as opened:
        yield opened


@pytest.fixture
def app(engine: Engine) -> FastAPI:
    return create_app(engine, secret_key=KEY)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no Origin, Referer or Sec-Fetch-Site unless told to."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as opened:
        yield opened


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_form_post_is_accepted_only_from_this_site(
    engine: Engine, client: httpx.AsyncClient, route: str
) -> None:
    _, prepare = ROUTES[route]
    for case, (headers, accepted) in CASES.items():
        post = await prepare(engine, client)
        sent = dict(headers)
        if post.cookie:
            sent["cookie"] = f"{COOKIE}={post.cookie}"
        answer = await client.post(post.path, data=post.data, headers=sent)
        if accepted:
            assert answer.status_code in (200, 303), (case, answer.status_code, answer.text)
            assert await post.changed(answer), case
        else:
            assert answer.status_code == 403, (case, answer.status_code)
            assert "can only be sent from this site" in answer.text, case
            assert answer.headers["content-type"].startswith("text/html"), case
            assert "set-cookie" not in answer.headers, case
            assert not await post.changed(answer), case


def test_every_state_changing_route_under_ui_is_checked() -> None:
    """Every route of the UI's modules under /ui that takes more than GET is in ``ROUTES``
    (but the catch-all that answers 404 to any method)."""
    changing = set()
    for module in pkgutil.iter_modules(ui_package.__path__):
        router = getattr(importlib.import_module(f"engine.ui.{module.name}"), "router", None)
        if not isinstance(router, APIRouter):
            continue
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path.startswith("/ui"):
                if route.methods - {"GET", "HEAD"} and route.path != "/ui/{rest:path}":
                    changing.add(route.path)
    assert changing == {path for path, _ in ROUTES.values()}


async def test_without_a_host_header_only_the_public_url_is_this_site(
    engine: Engine, app: FastAPI
) -> None:
    """An HTTP/1.0 request may come without ``Host``: then only the public URL counts."""

    async def no_host(request: httpx.Request) -> None:
        del request.headers["host"]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, event_hooks={"request": [no_host]}
    ) as client:
        refused = await client.post("/ui/login", data={"key": KEY}, headers={"origin": BASE_URL})
        assert refused.status_code == 403
        accepted = await client.post("/ui/login", data={"key": KEY}, headers={"origin": PUBLIC_URL})
        assert accepted.status_code == 303
