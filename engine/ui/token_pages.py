"""The approval inbox: waiting tokens first (soonest expiry on top), then recently closed
ones; a token's page completes it (a form from its schema), cancels it (with an optional
reason), or shares it as an approval link; a closed one's page offers its signed receipt as
a download. Every page here needs a signed-in session."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..api.deps import public_url_of
from ..client import Engine
from ..errors import ValidationError
from ..models import CompletionSource, Page, Token, WaitpointStatus
from .charts import Expiring, expiring
from .completion import prepare, submit
from .forms import Reading
from .links import DEFAULT_EXPIRES_IN, approval_url
from .render import PAGE_HEADERS
from .routing import PageRoute, SameSite, SignedIn, engine_of, form_pairs, ui_of

router = APIRouter(prefix="/ui/tokens", route_class=PageRoute, include_in_schema=False)

_CLOSED = [WaitpointStatus.COMPLETED, WaitpointStatus.TIMED_OUT, WaitpointStatus.CANCELLED]
_FAR = datetime.max.replace(tzinfo=UTC)
WAITING_SHOWN = 100
CLOSED_SHOWN = 25
EXPIRY_PAGES = 10
"""Pages of 100 waiting tokens read to count those expiring soon: past 1,000, "at least"."""


def stream_url(status: str, tag: str) -> str:
    query = {k: v for k, v in (("filter[status]", status), ("filter[tags]", tag)) if v}
    return "/api/v1/waitpoints/tokens/stream" + (f"?{urlencode(query)}" if query else "")


@router.get("")
async def inbox(
    request: Request,
    _: SignedIn,
    status: str = "",
    tag: str = "",
    after: str | None = None,
) -> Response:
    engine = engine_of(request)
    tags = [tag] if tag else None
    context: dict[str, Any] = {
        "status": status.upper(),
        "tag": tag,
        "statuses": [s.value for s in WaitpointStatus],
        "stream": stream_url(status.upper(), tag),
    }
    if status:
        context["page"] = await engine.tokens.list(status=status, tags=tags, limit=50, after=after)
    else:
        waiting = await engine.tokens.list(status="WAITING", tags=tags, limit=WAITING_SHOWN)
        closed = await engine.tokens.list(status=_CLOSED, tags=tags, limit=CLOSED_SHOWN)
        context["waiting"] = sorted(waiting.data, key=lambda t: t.expires_at or _FAR)
        context["expiring"] = await _expiring(engine, tags, waiting)
        context["more_waiting"] = waiting.next_cursor is not None
        context["closed"] = closed.data
    return ui_of(request).renderer.page(request, "tokens.html", **context)


async def _expiring(engine: Engine, tags: list[str] | None, first: Page[Token]) -> Expiring:
    """How many waiting tokens (with ``tags``) expire within the hour and the day: the list
    is newest first, not by expiry, so it is read to its end (``EXPIRY_PAGES`` at most)."""
    tokens, after = list(first.data), first.next_cursor
    for _ in range(EXPIRY_PAGES - 1):
        if after is None:
            break
        page = await engine.tokens.list(status="WAITING", tags=tags, limit=100, after=after)
        tokens += page.data
        after = page.next_cursor
    return expiring(tokens, datetime.now(UTC), complete=after is None)


def _token_page(
    request: Request, token: Token, *, status_code: int = 200, **extra: Any
) -> Response:
    extra.setdefault("reading", Reading())
    extra.setdefault("link", None)
    extra.setdefault("cancel_error", None)
    extra.setdefault("cancel_reason", "")
    return ui_of(request).renderer.page(
        request,
        "token.html",
        status_code=status_code,
        token=token,
        form=prepare(token),
        stream=stream_url("", "") if token.is_waiting else None,
        **extra,
    )


@router.get("/{token_id}")
async def token_page(request: Request, token_id: str, _: SignedIn) -> Response:
    return _token_page(request, await engine_of(request).tokens.retrieve(token_id))


@router.post("/{token_id}/complete")
async def complete(request: Request, token_id: str, _: SignedIn, __: SameSite) -> Response:
    engine = engine_of(request)
    token = await engine.tokens.retrieve(token_id)
    done = await submit(engine, token, await form_pairs(request), CompletionSource.UI)
    if done.result is None:
        return _token_page(request, token, status_code=422, reading=done.reading)
    return RedirectResponse(f"/ui/tokens/{token_id}", status_code=303, headers=PAGE_HEADERS)


@router.post("/{token_id}/cancel")
async def cancel(request: Request, token_id: str, _: SignedIn, __: SameSite) -> Response:
    engine = engine_of(request)
    typed = await _reason_typed(request)
    # a field left blank is no reason; a browser sends a textarea's line breaks as CRLF
    reason = typed.replace("\r\n", "\n") if typed.strip() else None
    try:
        await engine.tokens.cancel(token_id, reason, source=CompletionSource.UI)
    except ValidationError as exc:  # the reason: shown by its field, the token left WAITING
        token = await engine.tokens.retrieve(token_id)
        return _token_page(
            request, token, status_code=422, cancel_error=str(exc), cancel_reason=typed
        )
    return RedirectResponse(f"/ui/tokens/{token_id}", status_code=303, headers=PAGE_HEADERS)


async def _reason_typed(request: Request) -> str:
    """The cancel form's ``reason`` field as typed ("" when the post has no body: a cancel
    button without the field, as before reasons)."""
    if not (await request.body()).strip():
        return ""
    return dict(await form_pairs(request)).get("reason", "")


@router.post("/{token_id}/link")
async def share(request: Request, token_id: str, _: SignedIn, __: SameSite) -> Response:
    token = await engine_of(request).tokens.retrieve(token_id)
    expires_in = dict(await form_pairs(request)).get("expires_in") or DEFAULT_EXPIRES_IN
    link = approval_url(public_url_of(request), ui_of(request).auth, token_id, expires_in)
    return _token_page(request, token, link=link)


@router.get("/{token_id}/receipt")
async def download_receipt(request: Request, token_id: str, _: SignedIn) -> Response:
    """The closed token's signed receipt as a file to keep (``engine.receipts``)."""
    receipt = await engine_of(request).tokens.receipt(token_id)
    name = f"receipt-{receipt['tokenId']}.json"  # a real id: unknown ones were refused above
    return Response(
        json.dumps(receipt, indent=2, ensure_ascii=False) + "\n",
        media_type="application/json",
        headers={**PAGE_HEADERS, "Content-Disposition": f"attachment; filename={name}"},
    )
