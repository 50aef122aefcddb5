"""What routes need from a request: the engine, the caller, replay of retried requests."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from ..client import Engine
from ..errors import AuthError
from ..signing import voter_of
from .auth import Auth, Caller

REQUEST_KEY_HEADER = "x-trigger-request-idempotency-key"

_bearer = HTTPBearer(auto_error=False, description="The secret key, or a public access token")


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def public_url_of(request: Request) -> str:
    """The base of the links this server hands out: its public URL (``waitpoint dev`` and
    ``serve`` always have one: ``WAITPOINT_PUBLIC_URL``, else their own address), else, for
    an app served some other way, the address this request was sent to."""
    public_url: str | None = request.app.state.settings.public_url
    return public_url or str(request.base_url)


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def identify(request: Request) -> Caller:
    """The caller named by ``Authorization`` (secret key or public access token), else 401.

    Reads headers only, never the body, and once per request (the result is kept on it).
    """
    known = getattr(request.state, "caller", None)
    if isinstance(known, Caller):
        return known
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    header = f"Bearer {credentials}" if scheme.lower() == "bearer" and credentials else None
    who = auth_of(request).caller(header)
    request.state.caller = who
    return who


def may_call(request: Request) -> Caller:
    """Anyone with the secret key or a valid public access token, else 401."""
    return identify(request)


def may_call_with_secret(request: Request) -> Caller:
    """Only the secret key holder: 401 without credentials, 403 for a public access token."""
    who = identify(request)
    auth_of(request).require_secret(who)
    return who


def may_write_token(request: Request) -> Caller:
    """The secret key, or the public access token of the token in the path (403 otherwise)."""
    who = identify(request)
    auth_of(request).require(who, f"write:waitpoints:{request.path_params['token_id']}")
    return who


def may_vote(request: Request) -> Caller:
    """The secret key, or an approver's link to the approval in the path (403 otherwise)."""
    who = identify(request)
    if not who.is_secret:
        approver_of(who, request.path_params["approval_id"])
    return who


def approver_of(who: Caller, approval_id: str) -> str:
    """The approver a link votes as: its one ``vote:approvals:<id>:<approver>`` scope, read
    by ``signing.voter_of`` (403 for a public access token without one for this approval)."""
    found = [person for scope in who.scopes if (person := voter_of(scope, approval_id))]
    if len(found) != 1:
        raise AuthError(403, f"this public access token does not vote on approval {approval_id}")
    return found[0]


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Anyone with the secret key or a valid public access token (scopes checked later)."""
    return may_call(request)


def secret_caller(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Only the secret key: public access tokens are refused with 403.

    ``who`` keeps ``caller`` (and its bearer scheme, for /docs) in the dependency tree.
    """
    return may_call_with_secret(request)


def token_writer(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Whoever may complete the token in the path: the secret key or that token's own public
    access token (403 for another token's)."""
    return may_write_token(request)


def voter(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Whoever may vote on the approval in the path: the secret key (for any approver it
    names) or one approver's link (as that approver only)."""
    return may_vote(request)


CREDENTIAL_CHECKS: dict[Callable[..., Any], Callable[[Request], Caller]] = {
    caller: may_call,
    secret_caller: may_call_with_secret,
    token_writer: may_write_token,
    voter: may_vote,
}
"""Each credential dependency and the check it makes from the headers alone: routes that take
a body run these first (``body.JSONGuardRoute``), so no byte of the body is read for a caller
who may not send it."""

AnyCaller = Annotated[Caller, Depends(caller)]
SecretCaller = Annotated[Caller, Depends(secret_caller)]
TokenWriter = Annotated[Caller, Depends(token_writer)]
Voter = Annotated[Caller, Depends(voter)]
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


async def once_per_request(
    request: Request, route: str, make: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``make()``'s reply, made once per request idempotency key: a retry of the same request
    (the SDK's) gets the reply the first one got, and nothing is done twice."""
    reply = await replayed(request, route)
    if reply is None:
        reply = await make()
        await remember(request, route, reply)
    return reply


def claims_header() -> str:
    return json.dumps({"sub": "waitpoint", "pub": True})
