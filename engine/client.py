"""``Engine``: the one facade for code outside runs (scripts, the CLI, later the REST API).

    async with Engine() as engine:
        run = await engine.trigger("approve-refund", {"order_id": 42})
        token = await engine.tokens.create(timeout="1h")
        await engine.tokens.complete(token.id, {"approved": True})
        run = await engine.wait_for_run(run.id, timeout=30)

Entering an ``Engine`` also makes it the current one, so the module-level ``create_token`` and
``complete_token`` work in that block without passing it around.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from .clock import Clock
from .durations import Timeout
from .errors import (
    ConfigurationError,
    RunFailedError,
    RunWaitTimeoutError,
    StorageError,
    TaskNotFoundError,
)
from .keys import SecretKey, signing_secrets
from .logs import get_logger
from .models import (
    CompletionResult,
    CompletionSource,
    Page,
    Run,
    RunStatus,
    TaskInfo,
    TaskWorkers,
    TimelineEntry,
    Token,
    WaitpointStatus,
    WorkerInfo,
)
from .registry import REGISTRY
from .requests import moment_ms, page_request, run_request, timeline, token_request, waited_on
from .settings import Settings
from .storage import (
    DataToCheck,
    RunFilter,
    Storage,
    TokenFilter,
    open_storage,
)
from .validation import (
    clean_statuses,
    clean_tags,
    validate_against_schema,
)

log = get_logger("engine.client")

T = TypeVar("T")
NO_PUBLIC_URL = (
    "no public URL is known for this database: start `waitpoint dev` or `waitpoint serve` on"
    " it (the server records the address it listens on), or set WAITPOINT_PUBLIC_URL"
)
FOLLOW_RECHECK_SECONDS = 5.0
FOLLOW_MIN_GAP_SECONDS = 0.05

_current: contextvars.ContextVar[Engine] = contextvars.ContextVar("waitpoint_engine")


def current_engine() -> Engine:
    """The Engine entered most recently in this context (``async with Engine() ...``)."""
    try:
        return _current.get()
    except LookupError:
        raise ConfigurationError(
            "no Engine is open here: outside a run, use `async with Engine() as engine:` "
            "(or call engine.tokens.create / engine.tokens.complete directly)"
        ) from None


class Engine:
    """Trigger runs, inspect them, and create, complete or cancel tokens.

    ``Engine()`` opens the database of ``WAITPOINT_DATABASE_URL`` (default
    ``sqlite:///.waitpoint/engine.db``); ``Engine("http://host:8030", api_key=...)`` (or
    ``WAITPOINT_API_URL`` with ``WAITPOINT_SECRET_KEY``) gives the same facade over the REST
    API, for scripts without database access.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_key: str | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        from .remote import RemoteAPI, RemoteRuns, RemoteTokens, RemoteWorkers, is_api_url

        self.settings = settings or Settings()
        target = database_url or self.settings.api_url
        self._clock = clock
        self._storage: Storage | None = None
        self._owns_storage = True
        self._entered: list[contextvars.Token[Engine]] = []
        self._remote: RemoteAPI | None = None
        self.secret_key: SecretKey | None = None
        """The key this engine's callback URLs are signed with a secret derived from (known
        once open, on a database; None with ``WAITPOINT_SIGNING_SECRET`` or over HTTP)."""
        self.runs: Runs
        self.tokens: Tokens
        self.workers: Workers
        if is_api_url(target):
            assert target is not None
            self._remote = RemoteAPI(target, api_key or self.settings.secret_key)
            self.runs, self.tokens = RemoteRuns(self._remote), RemoteTokens(self._remote)
            self.workers = RemoteWorkers(self._remote)
            return
        if target is not None:
            self.settings = self.settings.model_copy(update={"database_url": target})
        self.runs, self.tokens, self.workers = Runs(self), Tokens(self), Workers(self)

    @classmethod
    def over(cls, storage: Storage) -> Engine:
        """An Engine on an already open storage, which it does not close."""
        engine = cls(settings=Settings(api_url=None))  # local mode, whatever the environment
        engine._storage = storage
        engine._owns_storage = False
        return engine

    async def open(self) -> Self:
        if self._storage is None and self._remote is None:
            signing, self.secret_key = signing_secrets(self.settings)
            storage = open_storage(
                self.settings.database_url,
                public_url=self.settings.public_url,
                signing_secret=signing.current,
                previous_signing_secret=signing.previous,
                synchronous=self.settings.sqlite_synchronous,
                pool_size=self.settings.postgres_pool_size,
                clock=self._clock,
                listen_url=self.settings.listen_url,
            )
            await storage.open()
            self._storage = storage
        return self

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()
        if self._storage is not None and self._owns_storage:
            await self._storage.close()
            self._storage = None

    async def __aenter__(self) -> Self:
        await self.open()
        self._entered.append(_current.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            _current.reset(self._entered.pop())
        await self.close()

    @property
    def storage(self) -> Storage:
        if self._remote is not None:
            raise ConfigurationError(
                f"this Engine talks to the API at {self._remote.base_url}; workers and storage "
                "need a database URL"
            )
        if self._storage is None:
            raise ConfigurationError("the Engine is not open: use `async with Engine() as engine:`")
        return self._storage

    async def known_tasks(self) -> dict[str, TaskInfo]:
        """Tasks this process imported plus every task a worker registered in the database."""
        known = {info.id: info for info in await self.storage.list_tasks()}
        known.update({task_id: d.info for task_id, d in REGISTRY.items()})
        return known

    async def trigger(
        self,
        task_id: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | timedelta | None = None,
        tags: list[str] | str | None = None,
        max_attempts: int | None = None,
        delay: Timeout | None = None,
        ttl: str | timedelta | None = None,
        metadata: dict[str, Any] | None = None,
        max_duration: str | timedelta | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        """Queue a run of ``task_id``; with an idempotency key, a repeat returns the same run.

        ``delay`` ("10m", a timedelta or an aware datetime) keeps the run DELAYED until then;
        ``ttl`` makes it EXPIRED if no worker started it within that long after it was due;
        ``metadata`` is a JSON object kept on the run; ``max_duration`` bounds its executing
        time (over the task's own limit); ``concurrency_key`` gives this key (a tenant) its
        own copy of the task queue's concurrency limit.
        """
        options: dict[str, Any] = {
            "idempotency_key": idempotency_key,
            "idempotency_key_ttl": idempotency_key_ttl,
            "tags": tags,
            "max_attempts": max_attempts,
            "delay": delay,
            "ttl": ttl,
            "metadata": metadata,
            "max_duration": max_duration,
            "concurrency_key": concurrency_key,
        }
        if self._remote is not None:
            return await self._remote.trigger(task_id, payload, **options)
        payload, queue = await self._checked_payload(task_id, payload)
        new = run_request(task_id, payload, self.storage.now_ms(), queue=queue, **options)
        run = await self.storage.create_run(new)
        log.info("run.triggered", run_id=run.id, task=task_id, cached=run.is_cached)
        return run

    async def _checked_payload(self, task_id: str, payload: Any) -> tuple[Any, str | None]:
        """The payload as stored, validated by the task's model or schema, and its queue."""
        local = REGISTRY.get(task_id)
        if local is not None:
            return local.validate_payload(payload), local.queue_name
        registered = {info.id: info for info in await self.storage.list_tasks()}
        if task_id not in registered:  # registered a moment ago? ask the database itself
            registered = {info.id: info for info in await self.storage.list_tasks(fresh=True)}
        info = registered.get(task_id)
        if info is None:
            raise TaskNotFoundError(task_id, sorted({*registered, *REGISTRY}))
        if info.payload_schema is not None:
            what = f"the payload of {task_id!r}"
            payload = await validate_against_schema(info.payload_schema, payload, what)
        return payload, info.queue

    async def wait_for_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        """Wait until the run is COMPLETED and return it; raise ``RunFailedError`` otherwise."""
        if self._remote is not None:
            return await self._remote.wait_for_run(run_id, timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            changed = self.storage.run_event(run_id)
            run = await self.storage.get_run(run_id)
            if run.is_finished:
                if run.status is not RunStatus.COMPLETED:
                    raise RunFailedError(
                        run.id, run.status.value, run.error.model_dump() if run.error else None
                    )
                return run
            wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
            if wait <= 0:
                reason = await self.workers.unserved(run)
                raise RunWaitTimeoutError(
                    f"run {run_id} is still {run.status.value} after {timeout} seconds"
                    + (f": {reason}" if reason else "")
                )
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                pass


async def follow(
    storage: Storage,
    read: Callable[[], Awaitable[T]],
    *,
    key: Callable[[T], object],
    done: Callable[[T], bool] = lambda _: False,
    idle: float | None = None,
) -> AsyncIterator[T | None]:
    """Yield ``read()`` now and again each time a commit changed it, until ``done`` says so.

    Waits on the storage's change event (taken before each read, so no commit is missed)
    and re-reads at least every few seconds; a burst of commits is read once. With ``idle``
    it yields None after that many seconds without a change (time for a keep-alive). Each
    call reads on its own: the API's streams share one reader per query instead
    (``engine.api.watchers``), with the same timing constants.
    """
    loop = asyncio.get_running_loop()
    last: object = object()
    quiet_since = loop.time()
    while True:
        changed = storage.change_event()
        value = await read()
        marker = key(value)
        if marker != last:
            last, quiet_since = marker, loop.time()
            yield value
            if done(value):
                return
        elif idle is not None and loop.time() - quiet_since >= idle:
            quiet_since = loop.time()
            yield None
        wait = FOLLOW_RECHECK_SECONDS
        if idle is not None:
            wait = max(0.0, min(wait, idle - (loop.time() - quiet_since)))
        try:
            await asyncio.wait_for(changed.wait(), wait)
        except TimeoutError:
            pass
        await asyncio.sleep(FOLLOW_MIN_GAP_SECONDS)


class Runs:
    """``engine.runs``: look runs up, list them, cancel them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def retrieve(self, run_id: str) -> Run:
        return await self._engine.storage.get_run(run_id)

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
        """Newest first; pass ``page.next_cursor`` as ``after`` for the next (older) page,
        ``page.previous_cursor`` as ``before`` for the previous one."""
        tasks = [task] if isinstance(task, str) else list(task or [])
        filter = RunFilter(
            status=clean_statuses(status, RunStatus),
            task_id=tasks,
            tags=clean_tags(tags),
            created_from_ms=moment_ms(created_after, "created_after"),
            created_to_ms=moment_ms(created_before, "created_before"),
        )
        return await self._engine.storage.list_runs(filter, page_request(limit, after, before))

    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        """What the run did, oldest first: steps, tokens created, waits and how they ended."""
        storage = self._engine.storage
        entries, events = await storage.get_journal(run_id), await storage.get_events(run_id)
        targets = await storage.describe_waitpoints(waited_on(events))
        return timeline(entries, events, {target.id: target for target in targets})

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run that has not finished; a finished run is returned unchanged."""
        return await self._engine.storage.cancel_run(run_id)

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        """The run now and after every change, ending with its final state.

            async for run in engine.runs.subscribe(run.id):
                print(run.status, run.metadata)

        An unknown id raises ``RunNotFoundError`` before anything is yielded.
        """
        storage = self._engine.storage
        changes = follow(
            storage,
            lambda: storage.get_run(run_id),
            key=lambda run: run.model_dump_json(),
            done=lambda run: run.is_finished,
        )
        async for run in changes:
            if run is not None:
                yield run


class Tokens:
    """``engine.tokens``: create, look up, list, complete and cancel waitpoint tokens."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

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
        """A new WAITING token (or the live one with the same idempotency key).

        ``title``, ``description`` (plain text) and ``context`` (a JSON object) tell the
        reviewer what they approve; the approval page and the inbox show them.
        """
        storage = self._engine.storage
        new = token_request(
            storage.now_ms(),
            timeout=timeout,
            idempotency_key=idempotency_key,
            idempotency_key_ttl=idempotency_key_ttl,
            tags=tags,
            schema=schema,
            title=title,
            description=description,
            context=context,
        )
        token = await storage.create_token(new)
        log.info("token.created", token_id=token.id, cached=token.is_cached)
        if isinstance(schema, type):
            token._data_model = schema
        return token

    async def retrieve(self, token_id: str) -> Token:
        return await self._engine.storage.get_token(token_id)

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
        """Newest first; ``tags`` matches tokens carrying any of them."""
        filter = TokenFilter(
            status=clean_statuses(status, WaitpointStatus),
            tags=clean_tags(tags),
            idempotency_key=idempotency_key,
            created_from_ms=moment_ms(created_after, "created_after"),
            created_to_ms=moment_ms(created_before, "created_before"),
        )
        return await self._engine.storage.list_tokens(filter, page_request(limit, after, before))

    async def complete(
        self, token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.PYTHON
    ) -> CompletionResult:
        """Complete a WAITING token; ``applied`` says whether this call was the one that won.

        Data for a typed token must match its schema (``ValidationError`` otherwise, and the
        token stays WAITING). A timed-out or cancelled token raises ``TokenNotWaitingError``.
        """
        storage = self._engine.storage
        result = await storage.complete_token(token_id, data, source)
        if isinstance(result, DataToCheck):  # a typed token: its data is checked outside
            what = f"completion data for {token_id}"
            data = await validate_against_schema(result.json_schema, data, what)
            result = await storage.complete_token(token_id, data, source, checked=result.schema)
            if isinstance(result, DataToCheck):  # pragma: no cover - a schema never changes
                raise StorageError(f"the data schema of {token_id} changed while checked")
        log.info("token.completed", token_id=token_id, applied=result.applied, via=source.value)
        return result

    async def cancel(
        self, token_id: str, *, source: CompletionSource = CompletionSource.PYTHON
    ) -> CompletionResult:
        """Cancel a WAITING token: runs waiting on it resume with ``WaitpointCancelledError``."""
        result = await self._engine.storage.cancel_token(token_id, source)
        log.info("token.cancelled", token_id=token_id, applied=result.applied, via=source.value)
        return result

    async def approval_link(self, token_id: str, expires_in: str | timedelta = "24h") -> str:
        """``{public URL}/ui/approve/{id}?t=...``: a page that completes this token.

        Whoever opens the link can complete this one token (and nothing else) until it
        expires (at most 30 days); treat it like a password. Signed with the API's secret key
        (``WAITPOINT_SECRET_KEY``, or the one kept beside the database). The public URL is
        ``WAITPOINT_PUBLIC_URL``, else the address the API server recorded in the database;
        with neither, a ``ConfigurationError`` says so.
        """
        from .api.auth import Auth
        from .ui.links import approval_url, local_secret_key

        await self.retrieve(token_id)
        known = self._engine.secret_key
        auth = Auth(known.value if known else local_secret_key(self._engine.settings))
        public_url = await self._engine.storage.load_public_url()
        if public_url is None:
            raise ConfigurationError(NO_PUBLIC_URL)
        return approval_url(public_url, auth, token_id, expires_in)


class Workers:
    """``engine.workers``: the worker processes serving this database, and whom a task has.

    A worker records a heartbeat with its lease renewals (every third of its lease); it is
    live while that heartbeat is younger than three lease periods (90 s by default) and it
    has not stopped.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def list(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        """The live workers, most recent heartbeat first (``include_gone``: also those that
        stopped or fell silent in the last week)."""
        return await self._engine.storage.list_workers(include_gone=include_gone)

    async def for_task(self, task_id: str) -> TaskWorkers:
        """The live workers serving ``task_id``, and when one was last seen."""
        return await self._engine.storage.task_workers(task_id)

    async def unserved(self, run: Run) -> str | None:
        """Why a QUEUED run does not start (``no live worker serves task 'boom' (last seen 3
        min ago)``), or None: it is not QUEUED, or a live worker serves its task."""
        if run.status is not RunStatus.QUEUED:
            return None
        return (await self.for_task(run.task_identifier)).unserved
