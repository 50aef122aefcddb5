"""Runs and tasks: trigger a task, retrieve, list and cancel runs (Trigger.dev's paths);
retry, replay, fork, migrate, pause and resume runs, pause and resume tasks, and cancel or
retry many runs by filter (replay in Trigger.dev's shape, the others ours)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ValidationError
from ..ids import new_ulid
from ..options import (
    MAX_BATCH_ITEMS,
    MAX_DEBOUNCE_KEY_LENGTH,
    BatchItem,
    Debounce,
    TriggerOptions,
)
from ..signing import message_subject
from ..validation import clean_topic, clean_version
from .body import JSONGuardRoute, parse_json, too_many_digits
from .deps import (
    AnyCaller,
    EngineDep,
    SecretCaller,
    auth_of,
    claims_header,
    once_per_request,
    public_url_of,
    remember,
    replayed,
)
from .problems import Problem, query_error
from .queries import ListWindow, comma_list, deadline, run_statuses
from .wire import page_json, run_json

router = APIRouter(tags=["runs"])
router.route_class = JSONGuardRoute

_NOT_YET = ("queue",)


class WireDebounce(BaseModel):
    """Trigger.dev's ``options.debounce``: without ``mode``, its default, ``leading``."""

    model_config = ConfigDict(extra="ignore")

    key: str = Field(min_length=1, max_length=MAX_DEBOUNCE_KEY_LENGTH)
    delay: str = Field(description="A duration (5s, 1m): how long the triggers must pause")
    mode: Literal["leading", "trailing"] | None = Field(
        default=None, description="Whose data the run keeps: the first trigger's (leading)"
    )
    maxDelay: str | None = Field(
        default=None, description="How long after the first trigger the run may be pushed"
    )

    def debounce(self) -> Debounce:
        return Debounce(self.key, self.delay, self.mode or "leading", self.maxDelay)


class WireTriggerOptions(BaseModel):
    """Trigger options as the SDK sends them; unknown ones (``machine``, ``region``...) are
    ignored. ``options`` gives the engine's ``TriggerOptions``."""

    model_config = ConfigDict(extra="allow")

    payloadType: str | None = None
    idempotencyKey: str | None = None
    idempotencyKeyTTL: str | None = None
    tags: list[str] | str | None = None
    maxAttempts: int | None = None
    delay: str | None = Field(default=None, description="A duration (10m) or an ISO date")
    ttl: str | int | None = Field(default=None, description="A duration (1h) or seconds")
    metadata: dict[str, Any] | None = None
    maxDuration: int | None = Field(default=None, ge=1, description="Seconds of executing time")
    concurrencyKey: str | None = Field(
        default=None, description="Its own copy of the task queue's concurrency limit"
    )
    debounce: WireDebounce | None = Field(
        default=None, description="Collapse the triggers with this key into one run"
    )
    priority: int | None = Field(
        default=None,
        description="Seconds: claimed as if queued that much earlier (0 to 2,073,600)",
    )
    rateLimitKey: str | None = Field(
        default=None, description="Its own bucket of the task queue's rate limit (ours)"
    )

    def options(self) -> TriggerOptions:
        return TriggerOptions(
            idempotency_key=self.idempotencyKey,
            idempotency_key_ttl=self.idempotencyKeyTTL,
            tags=self.tags,
            max_attempts=self.maxAttempts,
            delay=deadline(self.delay) if self.delay else None,
            ttl=f"{self.ttl}s" if isinstance(self.ttl, int) else self.ttl,
            metadata=self.metadata,
            max_duration=None if self.maxDuration is None else f"{self.maxDuration}s",
            concurrency_key=self.concurrencyKey,
            debounce=None if self.debounce is None else self.debounce.debounce(),
            priority=self.priority,
            rate_limit_key=self.rateLimitKey,
        )

    def refuse_unsupported(self) -> None:
        """422 for an option the SDK may send that this engine does not do yet."""
        unsupported = [name for name in _NOT_YET if (self.model_extra or {}).get(name)]
        if unsupported:
            raise Problem(422, f"options not supported yet: {', '.join(unsupported)}")


class TriggerBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    payload: Any = None
    options: WireTriggerOptions | None = None


def decode_payload(payload: Any, payload_type: str | None) -> Any:
    """The payload as JSON, whatever encoding the client chose (superjson from the SDK)."""
    if payload_type in (None, "application/json"):
        if isinstance(payload, str) and payload_type == "application/json":
            return _json_text(payload)
        return payload
    if payload_type == "application/super+json":
        if not isinstance(payload, str):
            raise Problem(422, "payload: application/super+json payloads are JSON text")
        decoded = _json_text(payload)
        return decoded.get("json") if isinstance(decoded, dict) else decoded
    if payload_type == "text/plain":
        return payload
    if payload_type == "application/store":
        raise Problem(422, "payload: offloaded payloads (application/store) are not supported")
    raise Problem(422, f"options.payloadType: unsupported payload type {payload_type!r}")


def _json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(422, f"payload: not valid JSON text: {exc}") from None
    except ValueError:
        raise Problem(422, f"payload: not acceptable JSON text: {too_many_digits()}") from None


@router.post("/api/v1/tasks/{task_id}/trigger", summary="Trigger a run of a task")
async def trigger(
    task_id: str,
    request: Request,
    response: Response,
    engine: EngineDep,
    _: SecretCaller,
    body: TriggerBody | None = None,
) -> dict[str, Any]:
    reply = await replayed(request, f"trigger:{task_id}")
    if reply is None:
        body = body or TriggerBody()
        options = body.options or WireTriggerOptions()
        options.refuse_unsupported()
        payload = decode_payload(body.payload, options.payloadType)
        run = await engine.trigger(task_id, payload, **options.options())
        reply = {"id": run.id, "isCached": run.is_cached}
        await remember(request, f"trigger:{task_id}", reply)
    response.headers["x-trigger-jwt"] = auth_of(request).public_token(
        [f"read:runs:{reply['id']}"], expires_in=3600
    )
    response.headers["x-trigger-jwt-claims"] = claims_header()
    return reply


class BatchItemBody(BaseModel):
    """An item of Trigger.dev's ``POST /api/v1/tasks/batch`` (its v3 SDK's ``batchTrigger``)."""

    model_config = ConfigDict(extra="ignore")

    task: str = Field(min_length=1, description="The task's id")
    payload: Any = None
    options: WireTriggerOptions | None = None


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: list[BatchItemBody] = Field(max_length=MAX_BATCH_ITEMS)


@router.post(
    "/api/v1/tasks/batch",
    summary="Trigger a run per item, all in one transaction (Trigger.dev's batch trigger)",
)
async def batch_trigger(
    request: Request, body: BatchBody, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    """Every item is checked before any run is made (a bad one: 422 naming its index, and
    nothing made); then all the runs are made in one transaction. The answer is Trigger.dev's
    (``id`` names this batch, which is not kept), each run in it with its fields as
    ``GET /api/v3/runs/{id}`` has them besides ``isCached``."""
    reply = await replayed(request, "batch")
    if reply is None:
        items: list[BatchItem] = []
        for index, item in enumerate(body.items):
            options = item.options or WireTriggerOptions()
            try:
                options.refuse_unsupported()
                payload = decode_payload(item.payload, options.payloadType)
                items.append({"task": item.task, "payload": payload, "options": options.options()})
            except Problem as exc:
                raise Problem(exc.status, f"item {index}: {exc.message}", **exc.extra) from None
            except ValidationError as exc:
                raise Problem(422, f"item {index}: {exc}") from None
        runs = await engine.batch_trigger(None, items)
        reply = {
            "id": f"batch_{new_ulid()}",
            "isCached": False,
            "runs": [
                {**run.model_dump(mode="json", by_alias=True), "isCached": run.is_cached}
                for run in runs
            ],
        }
        await remember(request, "batch", reply)
    return reply


@router.get("/api/v3/runs/{run_id}", summary="Retrieve a run")
async def retrieve_run(
    run_id: str, request: Request, engine: EngineDep, who: AnyCaller
) -> dict[str, Any]:
    auth_of(request).require(who, f"read:runs:{run_id}")
    return run_json(await engine.runs.retrieve(run_id))


@router.get("/api/v1/runs/{run_id}/timeline", summary="What a run did (ours): the audit trail")
async def run_timeline(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    entries = await engine.runs.timeline(run_id)
    return {"data": [entry.model_dump(mode="json", by_alias=True) for entry in entries]}


@router.get(
    "/api/v1/runs/{run_id}/rate-limit",
    summary="Whether a queued run waits for its queue's rate limit (ours)",
)
async def run_rate_limit(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    """``waiting``: the run's empty bucket (its queue, key, limit and when it has a token
    again) while a QUEUED run that is due waits for it, else null; ``reason`` in one line."""
    wait = await engine.runs.rate_limit_wait(run_id)
    if wait is None:
        return {"waiting": None, "reason": None}
    return {"waiting": wait.model_dump(mode="json", by_alias=True), "reason": wait.reason}


@router.post("/api/v2/runs/{run_id}/cancel", summary="Cancel a run (a finished run is unchanged)")
async def cancel_run(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    run = await engine.runs.cancel(run_id)
    return {"id": run.id}


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = None


@router.post(
    "/api/v1/runs/{run_id}/messages/{topic}",
    summary="Send a message to a run's receive(topic) (ours)",
)
async def send_message(
    run_id: str,
    topic: str,
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    body: MessageBody | None = None,
) -> dict[str, Any]:
    """Kept until the run receives it; a repeat of the same request (the same
    ``x-trigger-request-idempotency-key``) sends nothing twice."""

    async def send() -> dict[str, Any]:
        number = await engine.runs.send(run_id, topic, None if body is None else body.data)
        return {"runId": run_id, "topic": topic, "n": number}

    return await once_per_request(request, f"message:{run_id}:{topic}", send)


@router.get(
    "/api/v1/runs/{run_id}/messages/{topic}/url",
    summary="A signed URL that sends its body to the run's receive(topic), no key (ours)",
)
async def message_url(
    run_id: str, topic: str, request: Request, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    """On this server's public address, as approval links are."""
    await engine.runs.retrieve(run_id)  # 404 for an unknown run
    signed = engine.signer.message_url(run_id, clean_topic(topic), public_url_of(request))
    return {"url": signed}


@router.post(
    "/api/v1/runs/{run_id}/messages/{topic}/{signature}",
    summary="Send a message through the run's signed URL: the whole body is the data (ours)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {}}}, "required": False}
    },
)
async def send_signed_message(
    run_id: str, topic: str, signature: str, request: Request, engine: EngineDep
) -> dict[str, Any]:
    """Checked like a token's callback: the signature first, then a body of a known length."""
    if "content-length" not in request.headers or "transfer-encoding" in request.headers:
        raise Problem(
            411, "send the message body with a Content-Length header and no Transfer-Encoding"
        )
    if not engine.signer.verify(message_subject(run_id, topic), signature):
        raise Problem(401, "invalid message signature")
    raw = await request.body()
    data = parse_json(raw, request.app.state.settings.max_json_depth) if raw.strip() else None
    number = await engine.runs.send(run_id, topic, data)
    return {"runId": run_id, "topic": topic, "n": number}


class ReplayBody(BaseModel):
    """Optional: without a ``payload`` the replay takes the original's."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = None


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fromStep: str = Field(
        min_length=1,
        max_length=500,
        description="A step's name (its first call) or a journal key (step:notify#1)",
    )


_BULK_ACTIONS = {
    "cancel": lambda engine: engine.runs.cancel_matching,
    "retry": lambda engine: engine.runs.retry_matching,
}


@router.post(
    "/api/v1/runs/bulk/{action}",
    summary="Cancel or retry every run the list filters match (ours)",
)
async def act_on_runs(
    action: str,
    engine: EngineDep,
    _: SecretCaller,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    task: Annotated[str | None, Query(alias="filter[taskIdentifier]")] = None,
    tag: Annotated[str | None, Query(alias="filter[tag]")] = None,
    dry_run: Annotated[bool, Query(alias="dryRun")] = False,
    *,
    listing: ListWindow,
) -> dict[str, Any]:
    """The filters of ``GET /api/v1/runs`` (no paging): ``cancel`` acts on the unfinished
    runs among them, ``retry`` on the failed ones; ``dryRun=true`` only counts. Declared
    before the routes of one run, which would take ``bulk`` for a run id."""
    if action not in _BULK_ACTIONS:
        raise Problem(404, f"no bulk action {action!r}: use one of {', '.join(_BULK_ACTIONS)}")
    if listing.after or listing.before:
        raise query_error("page[after] and page[before] do not apply to a bulk action")
    wanted = run_statuses(status)
    if wanted == []:  # only statuses this engine never gives a run
        return {"matched": 0, "changed": 0, "dryRun": dry_run}
    act = _BULK_ACTIONS[action](engine)
    done = await act(
        status=wanted,
        task=comma_list(task),
        tags=comma_list(tag),
        created_after=listing.created_after,
        created_before=listing.created_before,
        dry_run=dry_run,
    )
    return {"matched": done.matched, "changed": done.changed, "dryRun": done.dry_run}


@router.post(
    "/api/v1/runs/{run_id}/retry",
    summary="Retry a FAILED, CRASHED or TIMED_OUT run from its journal (ours)",
)
async def retry_run(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    run = await engine.runs.retry(run_id)
    return {"id": run.id}


@router.post("/api/v1/runs/{run_id}/replay", summary="Replay a run as a new run")
async def replay_run(
    run_id: str,
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    body: ReplayBody | None = None,
) -> dict[str, Any]:
    async def replay() -> dict[str, Any]:
        return {"id": (await engine.runs.replay(run_id, None if body is None else body.payload)).id}

    return await once_per_request(request, f"replay:{run_id}", replay)


@router.post(
    "/api/v1/runs/{run_id}/fork",
    summary="A new run with the run's journal up to a step, going on anew from there (ours)",
)
async def fork_run(
    run_id: str, request: Request, body: ForkBody, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    async def fork() -> dict[str, Any]:
        return {"id": (await engine.runs.fork(run_id, from_step=body.fromStep)).id}

    return await once_per_request(request, f"fork:{run_id}", fork)


@router.post(
    "/api/v1/runs/{run_id}/pause",
    summary="Pause a run: no worker claims it until it is resumed (ours)",
)
async def pause_run(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return run_json(await engine.runs.pause(run_id))


@router.post("/api/v1/runs/{run_id}/resume", summary="Resume a paused run (ours)")
async def resume_run(run_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return run_json(await engine.runs.resume(run_id))


@router.post(
    "/api/v1/tasks/{task_id}/pause",
    summary="Pause a task: no worker claims its runs until it is resumed (ours)",
)
async def pause_task(task_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    state = await engine.tasks.pause(task_id)
    return state.model_dump(mode="json", by_alias=True)


@router.post("/api/v1/tasks/{task_id}/resume", summary="Resume a paused task (ours)")
async def resume_task(task_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    state = await engine.tasks.resume(task_id)
    return state.model_dump(mode="json", by_alias=True)


@router.get("/api/v1/tasks/paused", summary="The tasks paused now (ours)")
async def paused_tasks(engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return {"data": [t.model_dump(mode="json", by_alias=True) for t in await engine.tasks.paused()]}


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The version to move the run to (v42, 2024-06-01)")


@router.post(
    "/api/v1/runs/{run_id}/migrate",
    summary="Move an unfinished run to another version of its task (ours)",
)
async def migrate_run(
    run_id: str, body: MigrateBody, engine: EngineDep, _: SecretCaller
) -> dict[str, Any]:
    """Only workers serving that version claim the run from then on; a finished run is 409."""
    return run_json(await engine.runs.migrate(run_id, to=body.version))


@router.get("/api/v1/runs", summary="List runs, newest first")
async def list_runs(
    engine: EngineDep,
    _: SecretCaller,
    status: Annotated[str | None, Query(alias="filter[status]")] = None,
    task: Annotated[str | None, Query(alias="filter[taskIdentifier]")] = None,
    tag: Annotated[str | None, Query(alias="filter[tag]")] = None,
    version: Annotated[
        str | None, Query(alias="filter[version]", description="Runs of this version (ours)")
    ] = None,
    *,
    listing: ListWindow,
) -> dict[str, Any]:
    wanted = run_statuses(status)
    if wanted == []:  # only statuses this engine never gives a run
        return {"data": [], "pagination": {}}
    if version is not None:
        try:
            clean_version(version)
        except ValidationError as exc:
            raise query_error(f"filter[version]={version!r}: {exc}") from None
    page = await engine.runs.list(
        status=wanted,
        task=comma_list(task),
        tags=comma_list(tag),
        version=version,
        **listing.as_options(),
    )
    return page_json(page, [run_json(r) for r in page.data])
