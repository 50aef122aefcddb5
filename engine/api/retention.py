"""``POST /api/v1/purge`` (ours): delete old finished runs and closed tokens, one batch a call.

One batch is one short transaction (``Engine.purge_batch``), so no request runs long however
much is due; ``Engine.purge`` over HTTP calls it until a batch comes back short. With
``dryRun`` it counts everything that would go now, and deletes nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..storage.retention import MAX_PURGE_BATCH, PURGE_BATCH
from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller
from .problems import Problem

router = APIRouter(tags=["retention"])
router.route_class = JSONGuardRoute


class PurgeBody(BaseModel):
    """Unknown fields are refused by the route, not ignored: a misspelt ``dryRun`` must
    not delete what it was meant to count."""

    model_config = ConfigDict(extra="allow")

    olderThan: str = Field(description="A duration: 30d, 12h, 90m")
    dryRun: bool = Field(default=False, description="Only count what would be deleted")
    limit: int = Field(
        default=PURGE_BATCH,
        ge=1,
        le=MAX_PURGE_BATCH,
        description="At most this many runs, and this many tokens, in this batch",
    )


@router.post(
    "/api/v1/purge",
    summary="Delete finished runs and closed tokens older than a duration, one batch (ours)",
)
async def purge(body: PurgeBody, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    unknown = sorted(body.model_extra or {})
    if unknown:
        known = ", ".join(PurgeBody.model_fields)
        raise Problem(422, f"unknown field {unknown[0]!r} (the fields are {known})")
    if body.dryRun:
        done = await engine.purge(body.olderThan, dry_run=True)
    else:
        done = await engine.purge_batch(body.olderThan, limit=body.limit)
    return {"runs": done.runs, "tokens": done.tokens, "dryRun": done.dry_run}
