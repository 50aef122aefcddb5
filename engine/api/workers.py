"""``/api/v1/workers`` (ours): the workers serving this database, and whom a task has.

A worker records a heartbeat with its lease renewals; it is live while that heartbeat is
younger than three of its lease periods and it has not stopped (``WorkerInfo``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller

router = APIRouter(tags=["workers"])
router.route_class = JSONGuardRoute


@router.get("/api/v1/workers", summary="List the live workers (ours)")
async def list_workers(
    engine: EngineDep,
    _: SecretCaller,
    include_gone: Annotated[
        bool, Query(alias="all", description="Also workers that stopped or fell silent")
    ] = False,
) -> dict[str, Any]:
    workers = await engine.workers.list(include_gone=include_gone)
    return {"data": [w.model_dump(mode="json", by_alias=True) for w in workers]}


@router.get(
    "/api/v1/tasks/{task_id}/workers",
    summary="Which live workers serve a task, and when one was last seen (ours)",
)
async def task_workers(task_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    found = await engine.workers.for_task(task_id)
    body: dict[str, Any] = found.model_dump(mode="json", by_alias=True)
    if found.unserved is not None:
        body["unserved"] = found.unserved
    return body
