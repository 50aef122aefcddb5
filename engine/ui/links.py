"""One-link approvals: ``{public_url}/ui/approve/{token_id}?t=<public access token>``.

The ``t`` is the public access token the REST API already accepts to complete that one token
(an HS256 JWT scoped ``write:waitpoints:<id>``), so the link grants exactly what the token's
``x-trigger-jwt`` grants: completing that token, nothing else, until it expires.

The link is made by ``engine.signing.approval_url``; this module is the route.
``Engine.tokens.approval_link`` signs it locally when the engine has the secret key; over
HTTP it asks the server (``POST /api/v1/waitpoints/tokens/{id}/approval-link``), which knows
its own public URL.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ..api.body import JSONGuardRoute
from ..api.deps import EngineDep, SecretCaller, auth_of, public_url_of
from ..signing import DEFAULT_EXPIRES_IN, approval_url

__all__ = ["DEFAULT_EXPIRES_IN", "approval_url", "router"]


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
