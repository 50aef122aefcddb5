"""``/api/v1/schedules`` and ``/api/v1/timezones``: Trigger.dev's schedules routes.

List (``page``, ``perPage``; ``task`` is ours), create, retrieve, update (``PUT``: the
fields given change, the rest stays), delete, activate and deactivate; the bodies and
replies in Trigger.dev's shape (``generator``, ``nextRun``, ``environments``), plus ours:
``payload`` (given to each run), ``catchUp``, ``lastRun`` and ``upcoming`` (the next five
ticks). Bad input (an invalid cron, an unknown time zone, task or schedule, a misspelt field)
is a 4xx that names it, and changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..models import Schedule, SchedulePage
from ..validation import MAX_PAGE_SIZE
from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller
from .problems import Problem

router = APIRouter(tags=["schedules"])
router.route_class = JSONGuardRoute

ENVIRONMENTS = [{"id": "waitpoint", "type": "PRODUCTION"}]
"""Trigger.dev's schedules name the environments they run in; a database is one."""


class ScheduleBody(BaseModel):
    """Unknown fields are refused by the route, not ignored: a misspelt ``timezone`` must
    not leave a schedule ticking in UTC."""

    model_config = ConfigDict(extra="allow")

    task: str | None = Field(default=None, description="The task's id")
    cron: str | None = Field(default=None, description="0 9 * * MON-FRI (six fields: seconds)")
    timezone: str | None = Field(default=None, description="IANA, e.g. Europe/Berlin (UTC)")
    externalId: str | None = Field(default=None, description="Yours: passed to each run")
    deduplicationKey: str | None = Field(
        default=None, description="Create only: a schedule with this key is updated instead"
    )
    payload: Any = Field(default=None, description="Given to each run as payload (ours)")
    catchUp: str | None = Field(
        default=None, description="Missed ticks: 'last' (one run, default) or 'all' (ours)"
    )

    def refuse_unknown(self, fields: tuple[str, ...]) -> None:
        """A 422 naming the first field given that is not one of ``fields``."""
        unknown = sorted((self.model_fields_set | set(self.model_extra or {})) - set(fields))
        if unknown:
            raise Problem(422, f"unknown field {unknown[0]!r} (the fields are {', '.join(fields)})")


CREATE_FIELDS = tuple(ScheduleBody.model_fields)
UPDATE_FIELDS = tuple(name for name in CREATE_FIELDS if name != "deduplicationKey")
"""A deduplication key is for finding the schedule to update at creation; it never changes."""


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """A schedule as Trigger.dev's ``ScheduleObject`` (and our fields)."""
    body: dict[str, Any] = schedule.model_dump(mode="json", by_alias=True)
    body["environments"] = ENVIRONMENTS
    return body


def page_json(page: SchedulePage) -> dict[str, Any]:
    body: dict[str, Any] = page.model_dump(mode="json", by_alias=True)
    for item in body["data"]:
        item["environments"] = ENVIRONMENTS
    return body


@router.get("/api/v1/schedules", summary="List schedules, newest first")
async def list_schedules(
    engine: EngineDep,
    _: SecretCaller,
    page: Annotated[int, Query(ge=1, description="The page, from 1")] = 1,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=MAX_PAGE_SIZE)] = 25,
    task: Annotated[str | None, Query(description="Only this task's schedules (ours)")] = None,
) -> dict[str, Any]:
    return page_json(await engine.schedules.list(task=task, page=page, per_page=per_page))


@router.post("/api/v1/schedules", summary="Create a schedule (or update the deduplicated one)")
async def create_schedule(body: ScheduleBody, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    body.refuse_unknown(CREATE_FIELDS)
    missing = [name for name in ("task", "cron") if getattr(body, name) is None]
    if missing:
        raise Problem(422, f"{missing[0]}: required to create a schedule")
    assert body.task is not None and body.cron is not None
    schedule = await engine.schedules.create(
        body.task,
        cron=body.cron,
        timezone=body.timezone,
        payload=body.payload,
        external_id=body.externalId,
        deduplication_key=body.deduplicationKey,
        catch_up=body.catchUp or "last",
    )
    return schedule_json(schedule)


@router.get("/api/v1/timezones", summary="The time zones a schedule may use")
async def list_timezones(
    engine: EngineDep,
    _: SecretCaller,
    exclude_utc: Annotated[bool, Query(alias="excludeUtc")] = False,
) -> dict[str, Any]:
    names = await engine.schedules.timezones()
    return {"timezones": [n for n in names if not (exclude_utc and n == "UTC")]}


@router.get("/api/v1/schedules/{schedule_id}", summary="Retrieve a schedule")
async def retrieve_schedule(schedule_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return schedule_json(await engine.schedules.retrieve(schedule_id))


@router.put("/api/v1/schedules/{schedule_id}", summary="Update a schedule made at run time")
async def update_schedule(
    schedule_id: str, body: ScheduleBody, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    body.refuse_unknown(UPDATE_FIELDS)
    schedule = await engine.schedules.update(
        schedule_id,
        task=body.task,
        cron=body.cron,
        timezone=body.timezone,
        payload=body.payload,
        external_id=body.externalId,
        catch_up=body.catchUp,
    )
    return schedule_json(schedule)


@router.delete("/api/v1/schedules/{schedule_id}", summary="Delete a schedule")
async def delete_schedule(schedule_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    await engine.schedules.delete(schedule_id)
    return {"id": schedule_id}


@router.post("/api/v1/schedules/{schedule_id}/activate", summary="Activate a schedule")
async def activate_schedule(schedule_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return schedule_json(await engine.schedules.activate(schedule_id))


@router.post("/api/v1/schedules/{schedule_id}/deactivate", summary="Deactivate a schedule")
async def deactivate_schedule(
    schedule_id: str, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    return schedule_json(await engine.schedules.deactivate(schedule_id))
