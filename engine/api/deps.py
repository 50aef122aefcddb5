"""What routes need from a request: the engine, the caller, replay of retried requests."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..client import Engine
from .auth import Auth, Caller

REQUEST_KEY_HEADER = "x-trigger-request-idempotency-key"

_bearer = HTTPBearer(auto_error=False, description="The secret key, or a public access token")


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Anyone with the secret key or a valid public access token (scopes checked later)."""
    header = f"Bearer {credentials.credentials}" if credentials else None
    return auth_of(request).caller(header)


def secret_caller(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Only the secret key: public access tokens are refused with 403."""
    auth_of(request).require_secret(who)
    return who


AnyCaller = Annotated[Caller, Depends(caller)]
SecretCaller = Annotated[Caller, Depends(secret_caller)]
EngineDep = Annotated[Engine, Depends(engine_of)]


async def replayed(request: Request, route: str) -> dict[str, Any] | None:
    """The reply already given to this request (same idempotency header), if any."""
    key = request.headers.get(REQUEST_KEY_HEADER)
    if not key:
        return None
    reply = await engine_of(request).storage.get_request_reply(key, route)
    return reply if isinstance(reply, dict) else None


async def remember(request: Request, route: str, reply: dict[str, Any]) -> None:
    key = request.headers.get(REQUEST_KEY_HEADER)
    if key:
        await engine_of(request).storage.save_request_reply(key, route, reply)


def claims_header() -> str:
    return json.dumps({"sub": "waitpoint", "pub": True})
