"""The ``Engine`` facade over the REST API, for scripts that have no database access.

    async with Engine("http://waitpoint.internal:8030", api_key=key) as engine:
        await engine.tokens.complete(token_id, {"approved": True})

Every method maps to one documented route (plus a retrieve where the route answers with
less than the object); HTTP errors come back as the same ``EngineError`` subclasses the
local engine raises.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from .client import Runs, Tokens, Workers
from .durations import Timeout, format_duration, to_timedelta
from .errors import (
    ConfigurationError,
    NotFoundError,
    RunFailedError,
    RunNotFoundError,
    RunWaitTimeoutError,
    StorageError,
    TaskNotFoundError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
)
from .models import (
    CompletionResult,
    CompletionSource,
    Page,
    Run,
    RunStatus,
    TaskWorkers,
    TimelineEntry,
    Token,
    WaitpointStatus,
    WorkerInfo,
)

STREAM_READ_SECONDS = 60.0
"""Longer than the server's keep-alive interval (15 s): a silent stream is a dead one."""
STREAM_RECONNECTS = 5


def is_api_url(url: str | None) -> bool:
    return url is not None and url.startswith(("http://", "https://"))


class RemoteAPI:
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

    async def trigger(
        self,
        task_id: str,
        payload: Any,
        *,
        idempotency_key: str | None,
        idempotency_key_ttl: str | timedelta | None,
        tags: list[str] | str | None,
        max_attempts: int | None,
        delay: Timeout | None,
        ttl: str | timedelta | None,
        metadata: dict[str, Any] | None,
        max_duration: str | timedelta | None,
        concurrency_key: str | None,
    ) -> Run:
        options: dict[str, Any] = {"payloadType": "application/json"}
        for name, value in (
            ("idempotencyKey", idempotency_key),
            ("idempotencyKeyTTL", _duration(idempotency_key_ttl)),
            ("tags", tags),
            ("maxAttempts", max_attempts),
            ("delay", _deadline(delay)),
            ("ttl", _duration(ttl)),
            ("metadata", metadata),
            ("maxDuration", _seconds(max_duration)),
            ("concurrencyKey", concurrency_key),
        ):
            if value is not None:
                options[name] = value
        reply = await self.call(
            "POST",
            f"/api/v1/tasks/{task_id}/trigger",
            json={"payload": payload, "options": options},
        )
        run = await self.retrieve_run(reply["id"])
        return run.model_copy(update={"is_cached": bool(reply.get("isCached"))})

    async def retrieve_run(self, run_id: str) -> Run:
        return Run.model_validate(await self.call("GET", f"/api/v3/runs/{run_id}"))

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

    async def wait_for_run(self, run_id: str, timeout: float | None) -> Run:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.05
        while True:
            run = await self.retrieve_run(run_id)
            if run.is_finished:
                if run.status is not RunStatus.COMPLETED:
                    error = run.error.model_dump() if run.error else None
                    raise RunFailedError(run.id, run.status.value, error)
                return run
            if deadline is not None and loop.time() + pause > deadline:
                reason = await RemoteWorkers(self).unserved(run)
                raise RunWaitTimeoutError(
                    f"run {run_id} is still {run.status.value} after {timeout} seconds"
                    + (f": {reason}" if reason else "")
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


class RemoteRuns(Runs):
    """``engine.runs`` over HTTP."""

    def __init__(self, api: RemoteAPI) -> None:
        self._api = api

    async def retrieve(self, run_id: str) -> Run:
        return await self._api.retrieve_run(run_id)

    async def list(
        self,
        *,
        status: RunStatus | str | Sequence[RunStatus | str] | None = None,
        task: str | list[str] | None = None,
        tags: list[str] | str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 25,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Run]:
        params = _list_params(status, tags, created_after, created_before, limit, after, before)
        params.pop("filter[tags]", None)
        if tags:
            params["filter[tag]"] = _commas(tags)
        if task:
            params["filter[taskIdentifier]"] = _commas(task)
        reply = await self._api.call("GET", "/api/v1/runs", params=params)
        return _page(reply, Run)

    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        reply = await self._api.call("GET", f"/api/v1/runs/{run_id}/timeline")
        return [TimelineEntry.model_validate(item) for item in reply["data"]]

    async def cancel(self, run_id: str) -> Run:
        await self._api.call("POST", f"/api/v2/runs/{run_id}/cancel")
        return await self.retrieve(run_id)

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


class RemoteTokens(Tokens):
    """``engine.tokens`` over HTTP."""

    def __init__(self, api: RemoteAPI) -> None:
        self._api = api

    async def create(
        self,
        *,
        timeout: Timeout | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | timedelta | None = None,
        tags: list[str] | str | None = None,
        schema: type[BaseModel] | dict[str, Any] | None = None,
        title: str | None = None,
        description: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> Token:
        body: dict[str, Any] = {}
        for name, value in (
            ("timeout", _deadline(timeout)),
            ("idempotencyKey", idempotency_key),
            ("idempotencyKeyTTL", _duration(idempotency_key_ttl)),
            ("tags", tags),
            ("schema", _json_schema(schema)),
            ("title", title),
            ("description", description),
            ("context", context),
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

    async def list(
        self,
        *,
        status: WaitpointStatus | str | Sequence[WaitpointStatus | str] | None = None,
        tags: list[str] | str | None = None,
        idempotency_key: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 25,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Token]:
        params = _list_params(status, tags, created_after, created_before, limit, after, before)
        if idempotency_key is not None:
            params["filter[idempotencyKey]"] = idempotency_key
        reply = await self._api.call("GET", "/api/v1/waitpoints/tokens", params=params)
        return _page(reply, Token)

    async def complete(
        self, token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.API
    ) -> CompletionResult:
        """Complete over HTTP; the server records the completion as arriving by ``api``."""
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        reply = await self._api.call(
            "POST", f"/api/v1/waitpoints/tokens/{token_id}/complete", json={"data": payload}
        )
        return CompletionResult(bool(reply.get("applied", True)), await self.retrieve(token_id))

    async def approval_link(self, token_id: str, expires_in: str | timedelta = "24h") -> str:
        """Asks the server, which signs the link and knows its own public URL."""
        body = {"expiresIn": _duration(expires_in)}
        reply = await self._api.call(
            "POST", f"/api/v1/waitpoints/tokens/{token_id}/approval-link", json=body
        )
        return str(reply["url"])

    async def cancel(
        self, token_id: str, *, source: CompletionSource = CompletionSource.API
    ) -> CompletionResult:
        before = await self.retrieve(token_id)
        reply = await self._api.call("POST", f"/api/v1/waitpoints/tokens/{token_id}/cancel")
        token = Token.model_validate(reply)
        return CompletionResult(
            before.is_waiting and token.status is WaitpointStatus.CANCELLED, token
        )


class RemoteWorkers(Workers):
    """``engine.workers`` over HTTP."""

    def __init__(self, api: RemoteAPI) -> None:
        self._api = api

    async def list(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        params = {"all": "true"} if include_gone else None
        reply = await self._api.call("GET", "/api/v1/workers", params=params)
        return [WorkerInfo.model_validate(item) for item in reply["data"]]

    async def for_task(self, task_id: str) -> TaskWorkers:
        reply = await self._api.call("GET", f"/api/v1/tasks/{quote(task_id, safe='')}/workers")
        return TaskWorkers.model_validate(reply)


def _error_of(response: httpx.Response, path: str) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("error", response.text)) if isinstance(body, dict) else response.text
    status = response.status_code
    if status == 404:
        if message == "Waitpoint not found":
            return TokenNotFoundError(f"no waitpoint token at {path}")
        if message == "Run not found":
            return RunNotFoundError(f"no run at {path}")
        if message == "Task not found":
            task_id = path.split("/")[4] if path.startswith("/api/v1/tasks/") else path
            return TaskNotFoundError(task_id, list(body.get("knownTasks", [])))
        return NotFoundError(message)
    if status == 410:
        closed = body.get("closedAt")
        when = datetime.fromisoformat(closed.replace("Z", "+00:00")) if closed else None
        return TokenNotWaitingError(path.split("/")[5], str(body.get("status")), when)
    if status in (401, 403):
        return ConfigurationError(f"the API refused the request ({status}): {message}")
    if status < 500:
        return ValidationError(message)
    return StorageError(f"the API failed ({status}): {message}")


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


def _commas(values: str | Sequence[str]) -> str:
    return values if isinstance(values, str) else ",".join(str(v) for v in values)


def _list_params(
    status: Any,
    tags: list[str] | str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    after: str | None,
    before: str | None,
) -> dict[str, str]:
    params = {"page[size]": str(limit)}
    for name, value in (
        ("filter[status]", _commas(status) if status else None),
        ("filter[tags]", _commas(tags) if tags else None),
        ("filter[createdAt][from]", created_after.isoformat() if created_after else None),
        ("filter[createdAt][to]", created_before.isoformat() if created_before else None),
        ("page[after]", after),
        ("page[before]", before),
    ):
        if value is not None:
            params[name] = value
    return params


def _page(reply: dict[str, Any], model: type[Any]) -> Page[Any]:
    pagination = reply.get("pagination", {})
    return Page(
        data=[model.model_validate(item) for item in reply.get("data", [])],
        next_cursor=pagination.get("next"),
        previous_cursor=pagination.get("previous"),
    )
