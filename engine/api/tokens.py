"""``/api/v1/waitpoints/tokens``: create, list, retrieve, complete, cancel (with an optional
``{"reason": ...}``), and the callback.

Every completion records how it arrived (``api`` with the secret key, ``public-token``,
``callback``). One that arrives after the token timed out or was cancelled is refused with
410 on every route, the callback included, and kept on the token as a late attempt.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..client.local import verify_callback
from ..faults import crash_point
from ..models import CompletionSource, WaitpointStatus
from ..options import TokenOptions
from .auth import Caller
from .body import JSONGuardRoute, parse_json
from .deps import (
    EngineDep,
    SecretCaller,
    TokenWriter,
    auth_of,
    claims_header,
    remember,
    replayed,
)
from .problems import Problem
from .queries import ListWindow, comma_list, deadline, statuses
from .wire import SDK_VERSION_HEADER, page_json, token_json

router = APIRouter(prefix="/api/v1/waitpoints/tokens", tags=["waitpoint tokens"])
router.route_class = JSONGuardRoute


class CreateTokenBody(BaseModel):
    """Options for a new token; ``{}`` makes one that never times out."""

    model_config = ConfigDict(extra="ignore")

    timeout: str | None = Field(
        default=None, description="A duration such as 1h or 7d, or a future ISO 8601 date"
    )
    idempotencyKey: str | None = None
    idempotencyKeyTTL: str | None = None
    tags: list[str] | str | None = None
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="Ours: a JSON Schema that completion data must match (else 422)",
    )
    title: str | None = Field(
        default=None,
        description="Ours: what the reviewer is asked, at most 200 characters (else 422)",
    )
    description: str | None = Field(
        default=None,
        description="Ours: more about it, plain text, at most 4,000 characters (else 422)",
    )
    context: dict[str, Any] | None = Field(
        default=None,
        description="Ours: facts the reviewer decides on, a JSON object of at most 16 KiB"
        " (else 422); the approval page lists its names and values",
    )

    def options(self) -> TokenOptions:
        return TokenOptions(
            timeout=deadline(self.timeout) if self.timeout else None,
            idempotency_key=self.idempotencyKey,
            idempotency_key_ttl=self.idempotencyKeyTTL,
            tags=self.tags,
            schema=self.schema_,
            title=self.title,
            description=self.description,
            context=self.context,
        )


class CompleteBody(BaseModel):
    """The completion: ``data`` is what the waiting run receives (absent: null)."""

    model_config = ConfigDict(extra="forbid")

    data: Any = None


class CancelBody(BaseModel):
    """Why the token is cancelled (optional: a POST without a body cancels without one)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        default=None,
        description="Ours: why, as plain text of 1 to 1,000 characters once stripped, no"
        " control characters but line breaks and tabs (else 422); kept on the token"
        " (cancelReason) and given to the waiting runs",
    )


def _for_sdk(request: Request) -> bool:
    return SDK_VERSION_HEADER in request.headers


@router.post("", summary="Create a waitpoint token")
async def create_token(
    request: Request,
    response: Response,
    engine: EngineDep,
    _: SecretCaller,
    body: CreateTokenBody | None = None,
) -> dict[str, Any]:
    reply = await replayed(request, "create-token")
    if reply is None:
        token = await engine.tokens.create(**(body or CreateTokenBody()).options())
        reply = {"id": token.id, "isCached": token.is_cached, "url": token.url}
        await remember(request, "create-token", reply)
    response.headers["x-trigger-jwt"] = auth_of(request).public_token(
        [f"write:waitpoints:{reply['id']}"]
    )
    response.headers["x-trigger-jwt-claims"] = claims_header()
    return reply


@router.get("", summary="List waitpoint tokens, newest first")
async def list_tokens(
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    idempotency_key: Annotated[str | None, Query(alias="filter[idempotencyKey]")] = None,
    tags: Annotated[str | None, Query(alias="filter[tags]")] = None,
    *,
    listing: ListWindow,
) -> dict[str, Any]:
    wanted = statuses(status, WaitpointStatus)
    if _for_sdk(request) and WaitpointStatus.TIMED_OUT in wanted:
        wanted.append(WaitpointStatus.CANCELLED)  # the SDK sees cancelled tokens as TIMED_OUT
    page = await engine.tokens.list(
        status=wanted,
        tags=comma_list(tags),
        idempotency_key=idempotency_key,
        **listing.as_options(),
    )
    sdk = _for_sdk(request)
    return page_json(page, [token_json(t, for_sdk=sdk) for t in page.data])


@router.get("/{token_id}", summary="Retrieve a waitpoint token")
async def retrieve_token(
    token_id: str, request: Request, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    token = await engine.tokens.retrieve(token_id)
    return token_json(token, for_sdk=_for_sdk(request))


@router.post("/{token_id}/complete", summary="Complete a waitpoint token")
async def complete_token(
    token_id: str,
    request: Request,
    engine: EngineDep,
    who: TokenWriter,
    body: CompleteBody | None = None,
) -> dict[str, Any]:
    source = _source(who)
    result = await engine.tokens.complete(token_id, (body or CompleteBody()).data, source=source)
    crash_point("api.complete.before_response")
    return {"success": True, "applied": result.applied}


@router.post(
    "/{token_id}/callback/{signature}",
    summary="Complete a token through its signed callback URL (the whole body is the data)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {}}}, "required": False}
    },
)
async def callback(
    token_id: str, signature: str, request: Request, engine: EngineDep
) -> dict[str, Any]:
    if "content-length" not in request.headers or "transfer-encoding" in request.headers:
        raise Problem(
            411, "send the callback body with a Content-Length header and no Transfer-Encoding"
        )
    if not await verify_callback(engine.signer, engine.storage, token_id, signature):
        raise Problem(401, "invalid callback signature")
    raw = await request.body()
    data = parse_json(raw, request.app.state.settings.max_json_depth) if raw.strip() else None
    result = await engine.tokens.complete(token_id, data, source=CompletionSource.CALLBACK)
    return {"success": True, "applied": result.applied}


@router.post("/{token_id}/cancel", summary="Cancel a waitpoint token (waiting runs resume)")
async def cancel_token(
    token_id: str,
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    body: CancelBody | None = None,
) -> dict[str, Any]:
    reason = (body or CancelBody()).reason
    result = await engine.tokens.cancel(token_id, reason, source=CompletionSource.API)
    return token_json(result.token, for_sdk=_for_sdk(request))


def _source(who: Caller) -> CompletionSource:
    return CompletionSource.API if who.is_secret else CompletionSource.PUBLIC_TOKEN
