"""The one-link approval page: ``/ui/approve/{token_id}?t=<public access token>``.

A standalone page (no navigation, no session) for the one token the link's public access
token may complete. Without a valid link it shows an error page and no form: 401 for a
missing, malformed or expired link, 403 for a link to another token, 404 for an unknown
token. A closed token gets a page that says how it closed: 410 when it timed out or was
cancelled, 200 when it was answered (a reviewer coming back sees the answer).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ..models import CompletionSource, Token, WaitpointStatus
from .completion import prepare, submit
from .forms import Reading
from .routing import (
    PageError,
    PageRoute,
    engine_of,
    form_pairs,
    link_caller,
    same_site,
    self_link,
    ui_of,
)

router = APIRouter(prefix="/ui/approve", route_class=PageRoute, include_in_schema=False)

_CLOSED = (WaitpointStatus.TIMED_OUT, WaitpointStatus.CANCELLED)


async def _token(request: Request, token_id: str, t: str | None) -> Token:
    """The token, once the link proved it may complete exactly this one."""
    caller = link_caller(request, t)
    if not caller.may(f"write:waitpoints:{token_id}"):
        raise PageError(403, "Not allowed", "This link is for another request.")
    return await engine_of(request).tokens.retrieve(token_id)


def _show(
    request: Request,
    token: Token,
    *,
    reading: Reading | None = None,
    status_code: int | None = None,
    **extra: Any,
) -> Response:
    if status_code is None:
        status_code = 410 if token.status in _CLOSED else 200
    return ui_of(request).renderer.page(
        request,
        "approve.html",
        status_code=status_code,
        standalone=True,
        token=token,
        form=prepare(token),
        reading=reading or Reading(),
        action=self_link(request),
        result=None,
        **extra,
    )


@router.get("/{token_id}")
async def approval_page(request: Request, token_id: str, t: str | None = None) -> Response:
    return _show(request, await _token(request, token_id, t))


@router.post("/{token_id}")
async def approve(request: Request, token_id: str, t: str | None = None) -> Response:
    token = await _token(request, token_id, t)
    same_site(request)  # after the link: without one the answer stays 401, whoever sent it
    if not token.is_waiting:
        return _show(request, token)
    pairs = await form_pairs(request)
    done = await submit(engine_of(request), token, pairs, CompletionSource.PUBLIC_TOKEN)
    if done.result is None:
        return _show(request, token, reading=done.reading, status_code=422)
    return ui_of(request).renderer.page(
        request,
        "approve.html",
        standalone=True,
        token=done.result.token,
        result=done.result,
    )
