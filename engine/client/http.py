"""The HTTP transport: ``engine.runs``, ``engine.tokens``, ``engine.workers``,
``engine.tasks`` and ``engine.schedules`` over the REST API, with httpx, for scripts that
have no database access.

    async with Engine("http://waitpoint.internal:8030", api_key=key) as engine:
        await engine.tokens.complete(token_id, {"approved": True})

Every method maps to one documented route (plus a retrieve where the route answers with
less than the object); HTTP errors come back as the same ``EngineError`` subclasses the
local engine raises.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from typing_extensions import Unpack

from ..clock import from_ms
from ..durations import Timeout, format_duration, to_timedelta
from ..errors import (
    ApprovalClosedError,
    ApprovalNotFoundError,
    ConfigurationError,
    NotFoundError,
    RunNotFoundError,
    RunStateError,
    ScheduleNotFoundError,
    StorageError,
    TaskNotFoundError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    VoteRefusedError,
)
from ..keys import SecretKey
from ..models import (
    Approval,
    CompletionResult,
    CompletionSource,
    Page,
    PurgeCount,
    RateLimitWait,
    Run,
    Schedule,
    SchedulePage,
    StatsSnapshot,
    TaskState,
    TaskWorkers,
    TimelineEntry,
    Token,
    WaitpointStatus,
    WorkerInfo,
)
from ..options import (
    TOKEN_OPTION_NAMES,
    Debounce,
    TokenOptions,
    TriggerOptions,
    check_names,
)
from ..signing import CallbackSigner
from ..storage import (
    NewSchedule,
    NewVote,
    PageRequest,
    RunFilter,
    ScheduleChange,
    Storage,
    TokenFilter,
)
from ..validation import clean_reason
from .interfaces import Approvals, Connection, Runs, Schedules, Tasks, Tokens, Workers

STREAM_READ_SECONDS = 60.0
"""Longer than the server's keep-alive interval (15 s): a silent stream is a dead one."""
STREAM_RECONNECTS = 5


class HttpAPI:
    """One HTTP client to a Waitpoint server, with errors mapped to engine errors."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 30.0) -> None:
        if not api_key:
            raise ConfigurationError(
                f"an API key is needed for {base_url}: pass api_key= or set WAITPOINT_SECRET_KEY"
            )
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        try:
            response = await self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot reach the Waitpoint API at {self.base_url}: {exc}") from exc
        if response.is_success:
            return response.json()
        raise _error_of(response, path)

    async def events(self, path: str) -> AsyncIterator[tuple[str, str]]:
        """``(event, data)`` pairs of a server-sent event stream, until the server closes it."""
        timeout = httpx.Timeout(30.0, read=STREAM_READ_SECONDS)
        try:
            async with self._client.stream("GET", path, timeout=timeout) as response:
                if not response.is_success:
                    await response.aread()
                    raise _error_of(response, path)
                event, data = "message", list[str]()
                async for line in response.aiter_lines():
                    if not line:
                        if data:
                            yield event, "\n".join(data)
                        event, data = "message", []
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
        except httpx.HTTPError as exc:
            message = f"lost the stream from the Waitpoint API at {self.base_url}: {exc}"
            raise StorageError(message) from exc


class HttpConnection(Connection):
    """The REST API at ``base_url``, for scripts that have no database access."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.api = HttpAPI(base_url, api_key)
        self.runs = HttpRuns(self.api)
        self.tokens = HttpTokens(self.api)
        self.workers = HttpWorkers(self.api)
        self.tasks = HttpTasks(self.api)
        self.schedules = HttpSchedules(self.api)
        self.approvals = HttpApprovals(self.api)

    async def open(self) -> None:
        """Nothing to open: httpx connects at the first call."""

    async def close(self) -> None:
        await self.api.close()

    @property
    def storage(self) -> Storage:
        raise ConfigurationError(
            f"this Engine talks to the API at {self.api.base_url}; workers and storage "
            "need a database URL"
        )

    @property
    def signer(self) -> CallbackSigner:
        raise ConfigurationError(
            f"this Engine talks to the API at {self.api.base_url}, which signs its tokens' URLs"
        )

    @property
    def secret_key(self) -> SecretKey | None:
        return None

    async def trigger(self, task_id: str, payload: Any, options: TriggerOptions) -> Run:
        reply = await self.api.call(
            "POST",
            f"/api/v1/tasks/{task_id}/trigger",
            json={"payload": payload, "options": _wire_options(options)},
        )
        run = await self.runs.retrieve(reply["id"])
        return run.model_copy(update={"is_cached": bool(reply.get("isCached"))})

    async def batch_trigger(
        self, items: builtins.list[tuple[str, Any, TriggerOptions]]
    ) -> builtins.list[Run]:
        """``POST /api/v1/tasks/batch``, which answers with each run as it was made."""
        body = {
            "items": [
                {"task": task_id, "payload": payload, "options": _wire_options(options)}
                for task_id, payload, options in items
            ]
        }
        reply = await self.api.call("POST", "/api/v1/tasks/batch", json=body)
        return [
            Run.model_validate(run).model_copy(update={"is_cached": bool(run.get("isCached"))})
            for run in reply["runs"]
        ]

    async def purge(self, older_than: timedelta, limit: int) -> PurgeCount:
        body = {"olderThan": format_duration(older_than), "limit": limit}
        reply = await self.api.call("POST", "/api/v1/purge", json=body)
        return PurgeCount(runs=int(reply["runs"]), tokens=int(reply["tokens"]))

    async def purgeable(self, older_than: timedelta) -> PurgeCount:
        body = {"olderThan": format_duration(older_than), "dryRun": True}
        reply = await self.api.call("POST", "/api/v1/purge", json=body)
        return PurgeCount(runs=int(reply["runs"]), tokens=int(reply["tokens"]), dry_run=True)

    async def stats(self) -> StatsSnapshot:
        return StatsSnapshot.model_validate(await self.api.call("GET", "/api/v1/stats"))


class HttpRuns(Runs):
    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def retrieve(self, run_id: str) -> Run:
        return Run.model_validate(await self._api.call("GET", f"/api/v3/runs/{run_id}"))

    async def _list(self, filter: RunFilter, page: PageRequest) -> Page[Run]:
        params = _list_params(filter, page)
        if filter.tags:
            params["filter[tag]"] = ",".join(filter.tags)
        if filter.task_id:
            params["filter[taskIdentifier]"] = ",".join(filter.task_id)
        if filter.version is not None:
            params["filter[version]"] = filter.version
        reply = await self._api.call("GET", "/api/v1/runs", params=params)
        return _page(reply, Run)

    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        reply = await self._api.call("GET", f"/api/v1/runs/{run_id}/timeline")
        return [TimelineEntry.model_validate(item) for item in reply["data"]]

    async def rate_limit_wait(self, run_id: str) -> RateLimitWait | None:
        reply = await self._api.call("GET", f"/api/v1/runs/{run_id}/rate-limit")
        wait = reply.get("waiting")
        return None if wait is None else RateLimitWait.model_validate(wait)

    async def cancel(self, run_id: str) -> Run:
        await self._api.call("POST", f"/api/v2/runs/{run_id}/cancel")
        return await self.retrieve(run_id)

    async def _message_url(self, run_id: str, topic: str) -> str:
        """Asks the server, which signs the URL and knows its own public URL."""
        path = f"/api/v1/runs/{run_id}/messages/{quote(topic, safe='')}/url"
        return str((await self._api.call("GET", path))["url"])

    async def _send(self, run_id: str, topic: str, data: Any) -> int:
        path = f"/api/v1/runs/{run_id}/messages/{quote(topic, safe='')}"
        reply = await self._api.call("POST", path, json={"data": data})
        return int(reply["n"])

    async def retry(self, run_id: str) -> Run:
        await self._api.call("POST", f"/api/v1/runs/{run_id}/retry")
        return await self.retrieve(run_id)

    async def replay(self, run_id: str, payload: Any = None) -> Run:
        body = None if payload is None else {"payload": payload}
        reply = await self._api.call("POST", f"/api/v1/runs/{run_id}/replay", json=body)
        return await self.retrieve(reply["id"])

    async def fork(self, run_id: str, *, from_step: str) -> Run:
        body = {"fromStep": from_step}
        reply = await self._api.call("POST", f"/api/v1/runs/{run_id}/fork", json=body)
        return await self.retrieve(reply["id"])

    async def pause(self, run_id: str) -> Run:
        return Run.model_validate(await self._api.call("POST", f"/api/v1/runs/{run_id}/pause"))

    async def resume(self, run_id: str) -> Run:
        return Run.model_validate(await self._api.call("POST", f"/api/v1/runs/{run_id}/resume"))

    async def _migrate(self, run_id: str, version: str) -> Run:
        reply = await self._api.call(
            "POST", f"/api/v1/runs/{run_id}/migrate", json={"version": version}
        )
        return Run.model_validate(reply)

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        """Follow ``GET /api/v1/runs/{id}/stream``; reconnects when the connection drops."""
        last: str | None = None
        failures = 0
        while True:
            try:
                async for event, data in self._api.events(f"/api/v1/runs/{run_id}/stream"):
                    failures = 0
                    if event != "run" or data == last:
                        continue
                    last = data
                    run = Run.model_validate_json(data)
                    yield run
                    if run.is_finished:
                        return
            except StorageError:
                failures += 1
                if failures > STREAM_RECONNECTS:
                    raise
            await asyncio.sleep(min(0.25 * 2**failures, 5.0))

    async def changes(self, run_id: str) -> AsyncGenerator[Run, None]:
        """Polled: at once, then after 50 ms, doubling up to a second between reads."""
        pause = 0.05
        while True:
            yield await self.retrieve(run_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


class HttpTokens(Tokens):
    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def create(self, **options: Unpack[TokenOptions]) -> Token:
        check_names(dict(options), TOKEN_OPTION_NAMES, "create")
        schema = options.get("schema")
        body: dict[str, Any] = {}
        for name, value in (
            ("timeout", _deadline(options.get("timeout"))),
            ("idempotencyKey", options.get("idempotency_key")),
            ("idempotencyKeyTTL", _duration(options.get("idempotency_key_ttl"))),
            ("tags", options.get("tags")),
            ("schema", _json_schema(schema)),
            ("title", options.get("title")),
            ("description", options.get("description")),
            ("context", options.get("context")),
        ):
            if value is not None:
                body[name] = value
        reply = await self._api.call("POST", "/api/v1/waitpoints/tokens", json=body)
        token = await self.retrieve(reply["id"])
        token = token.model_copy(update={"is_cached": bool(reply.get("isCached"))})
        if isinstance(schema, type):
            token._data_model = schema
        return token

    async def retrieve(self, token_id: str) -> Token:
        return Token.model_validate(
            await self._api.call("GET", f"/api/v1/waitpoints/tokens/{token_id}")
        )

    async def _list(self, filter: TokenFilter, page: PageRequest) -> Page[Token]:
        params = _list_params(filter, page)
        if filter.tags:
            params["filter[tags]"] = ",".join(filter.tags)
        if filter.idempotency_key is not None:
            params["filter[idempotencyKey]"] = filter.idempotency_key
        reply = await self._api.call("GET", "/api/v1/waitpoints/tokens", params=params)
        return _page(reply, Token)

    async def complete(
        self, token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.API
    ) -> CompletionResult:
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        reply = await self._api.call(
            "POST", f"/api/v1/waitpoints/tokens/{token_id}/complete", json={"data": payload}
        )
        return CompletionResult(bool(reply.get("applied", True)), await self.retrieve(token_id))

    async def cancel(
        self,
        token_id: str,
        reason: str | None = None,
        *,
        source: CompletionSource = CompletionSource.API,
    ) -> CompletionResult:
        why = clean_reason(reason)  # refused here as locally, before anything is sent
        before = await self.retrieve(token_id)
        body = None if why is None else {"reason": why}  # without a reason: no body at all
        reply = await self._api.call(
            "POST", f"/api/v1/waitpoints/tokens/{token_id}/cancel", json=body
        )
        token = Token.model_validate(reply)
        return CompletionResult(
            before.is_waiting and token.status is WaitpointStatus.CANCELLED, token
        )

    async def receipt(self, token_id: str) -> dict[str, Any]:
        """Asks the server, which holds the key receipts are signed with."""
        path = f"/api/v1/waitpoints/tokens/{quote(token_id, safe='')}/receipt"
        reply: dict[str, Any] = await self._api.call("GET", path)
        return reply

    async def verify_receipt(self, receipt: Mapping[str, Any]) -> None:
        """Asks the server: 200 if valid, else 422 with the reason (``ValidationError``)."""
        body = dict(receipt) if isinstance(receipt, Mapping) else receipt  # the server says why
        await self._api.call("POST", "/api/v1/waitpoints/receipts/verify", json=body)

    async def approval_link(self, token_id: str, expires_in: str | timedelta = "24h") -> str:
        """Asks the server, which signs the link and knows its own public URL."""
        body = {"expiresIn": _duration(expires_in)}
        reply = await self._api.call(
            "POST", f"/api/v1/waitpoints/tokens/{token_id}/approval-link", json=body
        )
        return str(reply["url"])

    async def unreachable_urls(self) -> str | None:
        """The server makes the URLs, on the public URL it knows."""
        return None


class HttpWorkers(Workers):
    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def list(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        params = {"all": "true"} if include_gone else None
        reply = await self._api.call("GET", "/api/v1/workers", params=params)
        return [WorkerInfo.model_validate(item) for item in reply["data"]]

    async def for_task(self, task_id: str) -> TaskWorkers:
        reply = await self._api.call("GET", f"/api/v1/tasks/{quote(task_id, safe='')}/workers")
        return TaskWorkers.model_validate(reply)


class HttpTasks(Tasks):
    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def pause(self, task_id: str) -> TaskState:
        path = f"/api/v1/tasks/{quote(task_id, safe='')}/pause"
        return TaskState.model_validate(await self._api.call("POST", path))

    async def resume(self, task_id: str) -> TaskState:
        path = f"/api/v1/tasks/{quote(task_id, safe='')}/resume"
        return TaskState.model_validate(await self._api.call("POST", path))

    async def paused(self) -> builtins.list[TaskState]:
        reply = await self._api.call("GET", "/api/v1/tasks/paused")
        return [TaskState.model_validate(item) for item in reply["data"]]


class HttpSchedules(Schedules):
    """``/api/v1/schedules`` (Trigger.dev's routes; ``payload`` and ``catchUp`` are ours)."""

    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def _create(self, new: NewSchedule) -> Schedule:
        body: dict[str, Any] = {
            "task": new.task_id,
            "cron": new.cron.expression,
            "timezone": new.cron.timezone,
            "catchUp": new.catch_up.value,
        }
        for name, value in (
            ("externalId", new.external_id),
            ("deduplicationKey", new.deduplication_key),
            ("payload", new.payload),
        ):
            if value is not None:
                body[name] = value
        return Schedule.model_validate(await self._api.call("POST", "/api/v1/schedules", json=body))

    async def retrieve(self, schedule_id: str) -> Schedule:
        return Schedule.model_validate(await self._api.call("GET", _schedule(schedule_id)))

    async def _list(self, task: str | None, page: int, per_page: int) -> SchedulePage:
        params = {"page": str(page), "perPage": str(per_page)}
        if task is not None:
            params["task"] = task
        reply = await self._api.call("GET", "/api/v1/schedules", params=params)
        return SchedulePage.model_validate(reply)

    async def _update(self, schedule_id: str, change: ScheduleChange) -> Schedule:
        body: dict[str, Any] = {}
        for name, value in (
            ("task", change.task_id),
            ("cron", change.cron),
            ("timezone", change.timezone),
            ("payload", change.payload),
            ("externalId", change.external_id),
            ("catchUp", None if change.catch_up is None else change.catch_up.value),
        ):
            if value is not None:
                body[name] = value
        reply = await self._api.call("PUT", _schedule(schedule_id), json=body)
        return Schedule.model_validate(reply)

    async def delete(self, schedule_id: str) -> None:
        await self._api.call("DELETE", _schedule(schedule_id))

    async def activate(self, schedule_id: str) -> Schedule:
        reply = await self._api.call("POST", f"{_schedule(schedule_id)}/activate")
        return Schedule.model_validate(reply)

    async def deactivate(self, schedule_id: str) -> Schedule:
        reply = await self._api.call("POST", f"{_schedule(schedule_id)}/deactivate")
        return Schedule.model_validate(reply)

    async def timezones(self) -> builtins.list[str]:
        reply = await self._api.call("GET", "/api/v1/timezones")
        return [str(name) for name in reply["timezones"]]


class HttpApprovals(Approvals):
    """``/api/v1/approvals`` (ours)."""

    def __init__(self, api: HttpAPI) -> None:
        self._api = api

    async def retrieve(self, approval_id: str) -> Approval:
        return Approval.model_validate(await self._api.call("GET", _approval(approval_id)))

    async def _list(
        self, approver: str | None, run_id: str | None, status: str | None, limit: int
    ) -> builtins.list[Approval]:
        params = {"limit": str(limit)}
        for name, value in (("approver", approver), ("runId", run_id), ("status", status)):
            if value is not None:
                params[name] = value
        reply = await self._api.call("GET", "/api/v1/approvals", params=params)
        return [Approval.model_validate(item) for item in reply["data"]]

    async def _vote(self, vote: NewVote) -> Approval:
        body = {
            "approver": vote.approver,
            "approve": vote.approve,
            "data": vote.data,
            "reason": vote.reason,
        }
        reply = await self._api.call("POST", f"{_approval(vote.approval_id)}/votes", json=body)
        return Approval.model_validate(reply["approval"])

    async def inbox_link(self, approver: str, *, expires_in: str | timedelta = "7d") -> str:
        body = {"approver": approver, "expiresIn": _duration(expires_in)}
        reply = await self._api.call("POST", "/api/v1/approvals/inbox-link", json=body)
        return str(reply["url"])

    async def receipts(self, approval_id: str) -> builtins.list[dict[str, Any]]:
        reply = await self._api.call("GET", f"{_approval(approval_id)}/receipts")
        return [dict(item) for item in reply["data"]]

    async def links(
        self, approval_id: str, *, expires_in: str | timedelta = "7d"
    ) -> dict[str, str]:
        body = {"expiresIn": _duration(expires_in)}
        reply = await self._api.call("POST", f"{_approval(approval_id)}/links", json=body)
        return {str(k): str(v) for k, v in reply["links"].items()}


def _approval(approval_id: str) -> str:
    return f"/api/v1/approvals/{quote(approval_id, safe='')}"


def _schedule(schedule_id: str) -> str:
    return f"/api/v1/schedules/{quote(schedule_id, safe='')}"


def _error_of(response: httpx.Response, path: str) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("error", response.text)) if isinstance(body, dict) else response.text
    status = response.status_code
    if path.startswith("/api/v1/approvals/"):
        approval_id = path.split("/")[4]
        if status == 404:
            return ApprovalNotFoundError(message)
        if status == 410:
            return ApprovalClosedError(approval_id, str(body.get("status")), body.get("approved"))
        if status == 409 and path.endswith("/votes"):
            return VoteRefusedError(message)
    if status == 404:
        if message == "Waitpoint not found":
            return TokenNotFoundError(f"no waitpoint token at {path}")
        if message == "Run not found":
            return RunNotFoundError(f"no run at {path}")
        if message == "Schedule not found":
            return ScheduleNotFoundError(str(body.get("detail", f"no schedule at {path}")))
        if message == "Task not found":
            task_id = path.split("/")[4] if path.startswith("/api/v1/tasks/") else path
            return TaskNotFoundError(task_id, list(body.get("knownTasks", [])))
        return NotFoundError(message)
    if status == 410:
        closed = body.get("closedAt")
        when = datetime.fromisoformat(closed.replace("Z", "+00:00")) if closed else None
        return TokenNotWaitingError(path.split("/")[5], str(body.get("status")), when)
    if status == 409:
        return RunStateError(message)
    if status in (401, 403):
        return ConfigurationError(f"the API refused the request ({status}): {message}")
    if status < 500:
        return ValidationError(message)
    return StorageError(f"the API failed ({status}): {message}")


def _wire_options(options: TriggerOptions) -> dict[str, Any]:
    """Trigger options as the REST API (and Trigger.dev's SDK) sends them."""
    wire: dict[str, Any] = {"payloadType": "application/json"}
    debounce = options.get("debounce")
    for name, value in (
        ("idempotencyKey", options.get("idempotency_key")),
        ("idempotencyKeyTTL", _duration(options.get("idempotency_key_ttl"))),
        ("tags", options.get("tags")),
        ("maxAttempts", options.get("max_attempts")),
        ("delay", _deadline(options.get("delay"))),
        ("ttl", _duration(options.get("ttl"))),
        ("metadata", options.get("metadata")),
        ("maxDuration", _seconds(options.get("max_duration"))),
        ("concurrencyKey", options.get("concurrency_key")),
        ("debounce", None if debounce is None else _wire_debounce(debounce)),
        ("priority", options.get("priority")),
        ("rateLimitKey", options.get("rate_limit_key")),
    ):
        if value is not None:
            wire[name] = value
    return wire


def _wire_debounce(debounce: Debounce) -> dict[str, Any]:
    if not isinstance(debounce, Debounce):  # as the local engine refuses it
        raise ValidationError("debounce must be a Debounce(key, delay, mode, max_delay)")
    wire = {"key": debounce.key, "delay": _duration(debounce.delay), "mode": debounce.mode}
    if debounce.max_delay is not None:
        wire["maxDelay"] = _duration(debounce.max_delay)
    return wire


def _deadline(timeout: Timeout | None) -> str | None:
    if timeout is None or isinstance(timeout, str):
        return timeout
    if isinstance(timeout, timedelta):
        return format_duration(timeout)
    if timeout.tzinfo is None:
        raise ValidationError(f"timeout datetime {timeout.isoformat()} has no timezone")
    return timeout.isoformat()


def _json_schema(schema: type[BaseModel] | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    return schema


def _seconds(value: str | timedelta | None) -> int | None:
    """Trigger.dev's ``maxDuration`` is a number of seconds."""
    if value is None:
        return None
    return int(to_timedelta(value).total_seconds())


def _duration(value: str | timedelta | None) -> str | None:
    return format_duration(value) if isinstance(value, timedelta) else value


def _list_params(filter: RunFilter | TokenFilter, page: PageRequest) -> dict[str, str]:
    """The query both list routes share (the tags parameter's name differs: the caller's)."""
    params = {"page[size]": str(page.limit)}
    for name, value in (
        ("filter[status]", ",".join(s.value for s in filter.status) or None),
        ("filter[createdAt][from]", _iso(filter.created_from_ms)),
        ("filter[createdAt][to]", _iso(filter.created_to_ms)),
        ("page[after]", page.after),
        ("page[before]", page.before),
    ):
        if value is not None:
            params[name] = value
    return params


def _iso(ms: int | None) -> str | None:
    return None if ms is None else from_ms(ms).isoformat()


def _page(reply: dict[str, Any], model: type[Any]) -> Page[Any]:
    pagination = reply.get("pagination", {})
    return Page(
        data=[model.model_validate(item) for item in reply.get("data", [])],
        next_cursor=pagination.get("next"),
        previous_cursor=pagination.get("previous"),
    )
