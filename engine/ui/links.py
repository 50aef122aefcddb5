"""One-link approvals: ``{public_url}/ui/approve/{token_id}?t=<public access token>``.

The ``t`` is the public access token the REST API already accepts to complete that one token
(an HS256 JWT scoped ``write:waitpoints:<id>``), so the link grants exactly what the token's
``x-trigger-jwt`` grants: completing that token, nothing else, until it expires.

``Engine.tokens.approval_link`` signs it locally when the engine has the secret key; over
HTTP it asks the server (``POST /api/v1/waitpoints/tokens/{id}/approval-link``), which knows
its own public URL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from .. import keys
from ..api.auth import Auth
from ..api.body import JSONGuardRoute
from ..api.deps import EngineDep, SecretCaller, auth_of, public_url_of
from ..durations import to_timedelta
from ..errors import ConfigurationError, ValidationError
from ..settings import Settings

DEFAULT_EXPIRES_IN = "24h"
LONGEST_LINK = timedelta(days=30)


def link_seconds(expires_in: str | timedelta) -> int:
    """Seconds a link stays valid: a positive duration of at most 30 days."""
    delta = to_timedelta(expires_in)
    if delta > LONGEST_LINK:
        raise ValidationError(f"expires_in {expires_in!r} is too long: at most 30d")
    return max(1, int(delta.total_seconds()))


def approval_url(public_url: str, auth: Auth, token_id: str, expires_in: str | timedelta) -> str:
    scope = f"write:waitpoints:{token_id}"
    ticket = auth.public_token([scope], expires_in=link_seconds(expires_in))
    return f"{public_url.rstrip('/')}/ui/approve/{quote(token_id, safe='')}?t={ticket}"


def local_secret_key(settings: Settings) -> str:
    """The key a local engine signs links with: configured, or the one ``waitpoint dev`` made."""
    key = keys.secret_key(settings, create=False)
    if key is not None:
        return key.value
    raise ConfigurationError(
        "approval links are signed with the API's secret key: set WAITPOINT_SECRET_KEY, or "
        f"start `waitpoint dev` once so that it creates {keys.key_file(settings)}"
    )


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expiresIn: str = DEFAULT_EXPIRES_IN


router = APIRouter(prefix="/api/v1/waitpoints/tokens", tags=["waitpoint tokens"])
router.route_class = JSONGuardRoute


@router.post(
    "/{token_id}/approval-link",
    summary="A one-link approval page URL for this token (ours)",
)
async def create_approval_link(
    token_id: str,
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    body: LinkBody | None = None,
) -> dict[str, Any]:
    await engine.tokens.retrieve(token_id)  # 404 for an unknown id
    expires_in = (body or LinkBody()).expiresIn
    return {"url": approval_url(public_url_of(request), auth_of(request), token_id, expires_in)}
