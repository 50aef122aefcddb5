"""Decision receipts (``engine.receipts``): get a closed token's receipt, check one.

    GET  /api/v1/waitpoints/tokens/{id}/receipt   the signed receipt; 404 unknown, 409 waiting
    POST /api/v1/waitpoints/receipts/verify       {"valid": true}, or 422 saying what is wrong

Both take the secret key only: the server signs with a key derived from it, and whoever
checks a receipt here learns whether this server signed it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller

router = APIRouter(tags=["receipts"])
router.route_class = JSONGuardRoute


@router.get(
    "/api/v1/waitpoints/tokens/{token_id}/receipt",
    summary="The signed decision receipt of a closed token (ours)",
)
async def token_receipt(token_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return await engine.tokens.receipt(token_id)


@router.post(
    "/api/v1/waitpoints/receipts/verify",
    summary="Check a decision receipt: signed by this server and unchanged (ours)",
)
async def verify_receipt(
    receipt: Annotated[
        dict[str, Any],
        Body(description="A receipt as GET /api/v1/waitpoints/tokens/{id}/receipt gave it"),
    ],
    engine: EngineDep,
    _: SecretCaller,
) -> dict[str, Any]:
    await engine.tokens.verify_receipt(receipt)
    return {"valid": True}
