"""What every UI route shares: HTML error pages, the signed-in check, reading form bodies.

A page never answers a client mistake with a 5xx or with the API's JSON: ``PageRoute``
turns every error a handler raises into an error page with the right status (401 and 403
for credentials, 404 for unknown ids, 410 for closed tokens, 422 for bad input), the way
``engine.api.problems`` does for JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..api.auth import Auth, Caller
from ..api.limits import FailureLimiter, client_address, too_many_message
from ..api.problems import Problem
from ..client import Engine
from ..errors import (
    ApprovalClosedError,
    ApprovalNotFoundError,
    AuthError,
    EngineError,
    NotFoundError,
    RunNotFoundError,
    RunStateError,
    StorageError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    VoteRefusedError,
)
from .render import Renderer
from .sessions import COOKIE, Sessions

APPROVE_PREFIX = "/ui/approve/"
VOTE_PREFIX = "/ui/vote/"
INBOX_PATH = "/ui/inbox"
MAX_FORM_FIELDS = 200


@dataclass(frozen=True)
class UI:
    """The UI's share of the app state: templates, sessions, the API's auth and the limit on
    wrong credentials (one budget per address for the API and the dashboard alike)."""

    renderer: Renderer
    sessions: Sessions
    auth: Auth
    limiter: FailureLimiter


def ui_of(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def is_link_page(path: str) -> bool:
    """A standalone page opened with a link (no session, no navigation): an approval, a vote
    or an approver's inbox."""
    return path.startswith((APPROVE_PREFIX, VOTE_PREFIX)) or path == INBOX_PATH


class PageError(Exception):
    """An error page: status, a short title, and what the person can do about it."""

    def __init__(
        self, status: int, title: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = headers or {}


def _page_error(exc: Exception) -> PageError:
    if isinstance(exc, PageError):
        return exc
    if isinstance(exc, AuthError):
        title = "Sign-in needed" if exc.status == 401 else "Not allowed"
        return PageError(exc.status, title, exc.message)
    if isinstance(exc, TokenNotFoundError):
        return PageError(404, "Not found", "There is no waitpoint token with this id.")
    if isinstance(exc, RunNotFoundError):
        return PageError(404, "Not found", "There is no run with this id.")
    if isinstance(exc, ApprovalNotFoundError):
        return PageError(404, "Not found", "There is no approval with this id.")
    if isinstance(exc, NotFoundError):
        return PageError(404, "Not found", str(exc))
    if isinstance(exc, TokenNotWaitingError | ApprovalClosedError):
        return PageError(410, "Already closed", str(exc))
    if isinstance(exc, RunStateError | VoteRefusedError):
        return PageError(409, "Not possible now", str(exc))
    if isinstance(exc, ValidationError):
        return PageError(422, "Not accepted", str(exc))
    if isinstance(exc, StorageError):
        return PageError(503, "Try again shortly", f"the service cannot do this now: {exc}")
    if isinstance(exc, EngineError):
        return PageError(400, "Not accepted", str(exc))
    if isinstance(exc, Problem):
        return PageError(exc.status, "Not accepted", exc.message)
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return PageError(400, "Not accepted", problems or "the request is not valid")
    assert isinstance(exc, HTTPException)
    return PageError(exc.status_code, "Not accepted", str(exc.detail))


def error_page(request: Request, exc: Exception) -> Response:
    problem = _page_error(exc)
    ui = ui_of(request)
    on_approval_page = is_link_page(request.url.path)
    response = ui.renderer.page(
        request,
        "error.html",
        status_code=problem.status,
        title=problem.title,
        message=problem.message,
        standalone=on_approval_page,
        show_login=problem.status == 401 and not on_approval_page,
        next=request.url.path if request.method == "GET" else "/ui",
    )
    response.headers.update(problem.headers)
    return response


_PAGE_ERRORS = (
    PageError,
    AuthError,
    EngineError,
    Problem,
    RequestValidationError,
    HTTPException,
)


class PageRoute(APIRoute):
    """A route whose errors come back as HTML error pages, never as JSON or a 5xx."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except _PAGE_ERRORS as exc:
                return error_page(request, exc)

        return page


async def signed_in(request: Request) -> None:
    """Dependency of every dashboard page: a live session cookie (signed, unexpired, not
    signed out), else the sign-in page."""
    await ui_of(request).sessions.verify(request.cookies.get(COOKIE), "session")
    request.state.signed_in = True


def same_site(request: Request) -> None:
    """Refuse form posts another site makes the browser send (on top of SameSite cookies).

    A browser that sends ``Sec-Fetch-Site`` says where the post came from. One that does not
    (older browsers; some proxies and privacy tools strip it) still sends ``Origin`` with a
    form post, and the post is accepted only when that is this server's own origin: the
    public URL's (``WAITPOINT_PUBLIC_URL``) or the one the request was addressed to (its
    ``Host``, which a page on another site cannot choose). Without ``Origin`` a same-origin
    ``Referer`` will do. A post that shows neither is refused: it cannot be told apart from
    a forged one, and no browser that submits our own forms sends it.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise PageError(403, "Not allowed", "this form can only be sent from this site")
        return
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None or _origin(claimed) not in _own_origins(request):
        raise PageError(403, "Not allowed", "this form can only be sent from this site")


def _own_origins(request: Request) -> set[str | None]:
    public_url: str | None = request.app.state.settings.public_url
    own = {_origin(public_url) if public_url else None}
    host = request.headers.get("host")
    if host:
        own.add(_origin(f"{request.url.scheme}://{host}"))
    own.discard(None)
    return own


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower case, default port left out."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def refuse_if_limited(request: Request) -> str:
    """A 429 page (with ``Retry-After``) when the client's address sent too many wrong
    credentials; else its address, to count a failure against."""
    address = client_address(request.client.host if request.client else None)
    wait = ui_of(request).limiter.retry_after(address)
    if wait is not None:
        raise PageError(
            429, "Too many attempts", too_many_message(wait), {"Retry-After": str(wait)}
        )
    return address


def link_caller(request: Request, t: str | None) -> Caller:
    """Who a standalone page's link ``?t=`` speaks for: a public access token signed with the
    key, whose scopes the page then checks. Else an error page: 401 for a missing, malformed
    or expired link, 403 for the secret key itself (never put the key in a URL).

    ``t`` is checked as a bearer credential, so a wrong one counts against the sender like a
    wrong API key: else these pages would be the place to guess the key at full speed.
    """
    ui = ui_of(request)
    if not t:
        raise PageError(401, "Link incomplete", "This link has no access token; copy it whole.")
    address = refuse_if_limited(request)
    try:
        caller = ui.auth.caller(f"Bearer {t}")
    except AuthError as exc:
        if "expired" in exc.message:  # signed with the key: not a guess
            raise PageError(401, "Link expired", "This link has expired.") from None
        ui.limiter.failed(address)
        raise PageError(401, "Link not valid", "This link is not valid.") from None
    if caller.is_secret:
        raise PageError(403, "Not allowed", "Approval links carry their own access token.")
    return caller


def self_link(request: Request) -> str:
    """Where a standalone page's form posts: its own path with its own link's ``?t=``."""
    return f"{request.url.path}?t={quote(request.query_params.get('t', ''), safe='')}"


SignedIn = Annotated[None, Depends(signed_in)]
SameSite = Annotated[None, Depends(same_site)]


async def form_pairs(request: Request) -> list[tuple[str, str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body, in order."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageError(415, "Not accepted", "send the form as application/x-www-form-urlencoded")
    raw = await request.body()
    try:
        text = raw.decode()
        return parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageError(400, "Not accepted", f"the form could not be read: {exc}") from None


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/tokens"
