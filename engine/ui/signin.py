"""Signing in to the dashboard: the key once (a form), or the one-click link ``dev`` prints.

The one-click link answers with a small page that moves on by itself instead of a redirect:
a ``SameSite=Strict`` cookie set on a navigation that began on another site (a chat, a
mail) is not sent on a redirect from it, but is on the next navigation this page starts.
The link signs in once (a copy of it in a terminal's scrollback or a shell history is spent);
signing out ends the session for good, copies of its cookie included (``sessions``).

Wrong keys on the form count against the sender's address like wrong API keys do
(``engine.api.limits``): past the limit the form answers 429 without looking at the key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..errors import AuthError
from .render import PAGE_HEADERS
from .routing import PageRoute, SameSite, form_pairs, refuse_if_limited, safe_next, ui_of
from .sessions import COOKIE, Sessions

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/tokens", status_code=303)


@router.get("/login")
async def login_page(request: Request, t: str | None = None, next: str | None = None) -> Response:
    ui = ui_of(request)
    target = safe_next(next)
    if t is None:
        return ui.renderer.page(request, "login.html", next=target)
    try:
        await ui.sessions.redeem(t)
    except AuthError as exc:
        return ui.renderer.page(
            request, "login.html", status_code=401, next=target, login_error=exc.message
        )
    response = ui.renderer.page(request, "signed_in.html", next=target)
    ui.sessions.start(request, response)
    return response


@router.post("/login")
async def login(request: Request, _: SameSite) -> Response:
    ui = ui_of(request)
    address = refuse_if_limited(request)  # before the body: a limited sender is not heard
    fields = dict(await form_pairs(request))
    target = safe_next(fields.get("next"))
    if not ui.sessions.is_secret_key(fields.get("key", "")):
        ui.limiter.failed(address)
        return ui.renderer.page(
            request,
            "login.html",
            status_code=401,
            next=target,
            login_error="That is not the secret key of this server.",
        )
    response = RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
    ui.sessions.start(request, response)
    return response


@router.post("/logout")
async def logout(request: Request, _: SameSite) -> Response:
    """Spend the session (every process refuses it from now on), then drop the cookie."""
    await ui_of(request).sessions.revoke(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", status_code=303, headers=PAGE_HEADERS)
    Sessions.end(response)
    return response
