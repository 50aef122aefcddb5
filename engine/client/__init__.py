"""``Engine``: the one facade for code outside runs (scripts, the CLI, the REST API).

    async with Engine() as engine:
        run = await engine.trigger("approve-refund", {"order_id": 42})
        token = await engine.tokens.create(timeout="1h")
        await engine.tokens.complete(token.id, {"approved": True})
        run = await engine.wait_for_run(run.id, timeout=30)

An Engine picks its transport once, at construction: a database URL gives the local one
(``client.local``, over a ``Storage`` in this process), an ``http(s)://`` URL the REST API
(``client.http``, over httpx, imported only then). Both implement ``client.interfaces``
(``Runs``, ``Tokens``, ``Workers``, ``Connection``). Every method delegates to that
``Connection``; what is the same for both (``wait_for_run``) is written here, once.

Entering an Engine also makes it the current one (``engine.current``), so the module-level
``create_token`` and ``complete_token`` work in that block without passing it around.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from typing_extensions import Unpack

from .. import current
from ..clock import Clock
from ..current import current_engine
from ..durations import to_timedelta
from ..errors import RunFailedError, RunWaitTimeoutError
from ..keys import SecretKey
from ..models import PurgeCount, Run, RunStatus, StatsSnapshot, TaskInfo
from ..options import TRIGGER_OPTION_NAMES, BatchItem, TriggerOptions, check_names
from ..registry import REGISTRY
from ..requests import batch_items
from ..settings import Settings
from ..signing import CallbackSigner
from ..storage import Storage
from ..storage.retention import PURGE_BATCH
from .interfaces import Approvals, Connection, Runs, Schedules, Tasks, Tokens, Workers
from .local import (
    FOLLOW_MIN_GAP_SECONDS,
    FOLLOW_RECHECK_SECONDS,
    NO_PUBLIC_URL,
    LocalConnection,
    follow,
)

__all__ = [
    "FOLLOW_MIN_GAP_SECONDS",
    "FOLLOW_RECHECK_SECONDS",
    "NO_PUBLIC_URL",
    "Approvals",
    "Connection",
    "Engine",
    "Runs",
    "Schedules",
    "Tasks",
    "Tokens",
    "Workers",
    "current_engine",
    "follow",
    "is_api_url",
]


def is_api_url(url: str | None) -> bool:
    return url is not None and url.startswith(("http://", "https://"))


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
        self.settings = settings or Settings()
        target = database_url or self.settings.api_url
        self._entered: list[contextvars.Token[Engine]] = []
        self._connection: Connection
        if is_api_url(target):
            from .http import HttpConnection  # here: a local engine never needs httpx

            self._connection = HttpConnection(str(target), api_key or self.settings.secret_key)
        else:
            if target is not None:
                self.settings = self.settings.model_copy(update={"database_url": target})
            self._connection = LocalConnection(self.settings, clock)
        self.runs: Runs = self._connection.runs
        self.tokens: Tokens = self._connection.tokens
        self.workers: Workers = self._connection.workers
        self.tasks: Tasks = self._connection.tasks
        self.schedules: Schedules = self._connection.schedules
        self.approvals: Approvals = self._connection.approvals

    @classmethod
    def over(cls, storage: Storage, signer: CallbackSigner) -> Engine:
        """An Engine on an already open storage, which it does not close, presenting tokens
        with ``signer``."""
        engine = cls(settings=Settings(api_url=None))  # local mode, whatever the environment
        engine._connection = LocalConnection(engine.settings, storage=storage, signer=signer)
        engine.runs = engine._connection.runs
        engine.tokens = engine._connection.tokens
        engine.workers = engine._connection.workers
        engine.tasks = engine._connection.tasks
        engine.schedules = engine._connection.schedules
        engine.approvals = engine._connection.approvals
        return engine

    @property
    def secret_key(self) -> SecretKey | None:
        """The key this engine's callback URLs are signed with a secret derived from (known
        once open, on a database; None with ``WAITPOINT_SIGNING_SECRET`` or over HTTP)."""
        return self._connection.secret_key

    async def open(self) -> Self:
        await self._connection.open()
        return self

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Self:
        await self.open()
        self._entered.append(current.enter(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            current.leave(self._entered.pop())
        await self.close()

    @property
    def storage(self) -> Storage:
        """The open storage; a ``ConfigurationError`` over HTTP or before ``open``."""
        return self._connection.storage

    @property
    def signer(self) -> CallbackSigner:
        """What signs the callback URLs of the tokens this engine presents (a
        ``ConfigurationError`` over HTTP or before ``open``)."""
        return self._connection.signer

    async def known_tasks(self) -> dict[str, TaskInfo]:
        """Tasks this process imported plus every task a worker registered in the database."""
        known = {info.id: info for info in await self.storage.list_tasks()}
        known.update({task_id: d.info for task_id, d in REGISTRY.items()})
        return known

    async def trigger(
        self, task_id: str, payload: Any = None, **options: Unpack[TriggerOptions]
    ) -> Run:
        """Queue a run of ``task_id``; with an idempotency key, a repeat returns the same run.

        The options (``engine.options.TriggerOptions``): ``idempotency_key`` and
        ``idempotency_key_ttl``; ``tags``; ``max_attempts``; ``delay`` ("10m", a timedelta or
        an aware datetime) keeps the run DELAYED until then; ``ttl`` makes it EXPIRED if no
        worker started it within that long after it was due; ``metadata`` is a JSON object
        kept on the run; ``max_duration`` bounds its executing time (over the task's own
        limit); ``concurrency_key`` gives this key (a tenant) its own copy of the task
        queue's concurrency limit; ``debounce`` (``Debounce("user-42", "5s")``) collapses
        the triggers with its key into one run, which starts once they pause for its delay;
        ``priority`` (seconds) has the run claimed as if it had been queued that much earlier;
        ``rate_limit_key`` gives this key its own bucket of the task queue's rate limit.
        """
        check_names(dict(options), TRIGGER_OPTION_NAMES, "trigger")
        return await self._connection.trigger(task_id, payload, options)

    async def batch_trigger(self, task_id: str | None, items: Sequence[BatchItem]) -> list[Run]:
        """Queue a run of ``task_id`` per item, all in one transaction: all of them or none.

        An item is Trigger.dev's ``{"payload": ..., "options": {...}}`` (``BatchItem``; the
        options are ``trigger``'s); ``"task"`` makes it a run of another task (``task_id``
        may then be None, as in Trigger.dev's ``batch.trigger``). At most 1,000 items, every
        one validated before any run is made; the message of a bad one names its index
        (``item 3: ...``). The runs come back in the order of the items; an item whose
        idempotency key (or debounce key) finds a run, one made earlier in the batch too,
        returns that one (``is_cached``).
        """
        checked = batch_items(task_id, items)
        if not checked:
            return []
        return await self._connection.batch_trigger(checked)

    async def wait_for_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        """Wait until the run is COMPLETED and return it; raise ``RunFailedError`` if it
        finished otherwise, ``RunWaitTimeoutError`` (saying why, when no worker serves its
        task) if ``timeout`` seconds pass first."""
        run: Run | None = None
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(self.runs.changes(run_id)) as changes:
                    async for run in changes:
                        if run.is_finished:
                            break
        except TimeoutError:
            run = await self.runs.retrieve(run_id)  # a last look: it may have just finished
            if not run.is_finished:
                reason = await self.workers.unserved(run)
                if reason is None and run.status is RunStatus.QUEUED:
                    limited = await self.runs.rate_limit_wait(run_id)
                    reason = None if limited is None else limited.reason
                raise RunWaitTimeoutError(
                    f"run {run_id} is still {run.status.value} after {timeout} seconds"
                    + (f": {reason}" if reason else "")
                ) from None
        assert run is not None  # changes yields before it ends
        if run.status is not RunStatus.COMPLETED:
            raise RunFailedError(
                run.id, run.status.value, run.error.model_dump() if run.error else None
            )
        return run

    async def purge(
        self,
        older_than: str | timedelta,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> PurgeCount:
        """Delete the finished runs (with their journals, events and waits) and the closed
        tokens older than ``older_than`` ("30d", a timedelta), ``PURGE_BATCH`` of each per
        transaction (``purge_batch``); ``progress(done, matched)`` is called after each batch,
        runs and tokens counted together. ``dry_run`` only counts.

        Kept however old, since someone may still read them: a run whose parent or child has
        not finished, or that an unfinished run waits on; a token an unfinished run waits on
        or made (``engine.storage.retention``). What matches is counted first, and the batches
        stop once as many were deleted, or at a batch that was not full: rows that reach the
        age meanwhile are the next purge's, so a purge ends under a steady load too.
        """
        age = to_timedelta(older_than)
        matched = await self._connection.purgeable(age)
        if dry_run:
            return matched
        total = matched.runs + matched.tokens
        runs = tokens = 0
        while runs + tokens < total:
            batch = await self._connection.purge(age, PURGE_BATCH)
            runs, tokens = runs + batch.runs, tokens + batch.tokens
            if progress is not None:
                progress(runs + tokens, max(total, runs + tokens))
            if PURGE_BATCH not in (batch.runs, batch.tokens):
                break
        return PurgeCount(runs=runs, tokens=tokens)

    async def purge_batch(
        self, older_than: str | timedelta, *, limit: int = PURGE_BATCH
    ) -> PurgeCount:
        """One transaction of ``purge``: at most ``limit`` finished runs and ``limit`` closed
        tokens older than ``older_than``, the oldest first. Fewer than ``limit`` of both:
        nothing more was due. (``POST /api/v1/purge`` is one batch, so no request runs long.)"""
        return await self._connection.purge(to_timedelta(older_than), limit)

    async def stats(self) -> StatsSnapshot:
        """What the database holds now: runs by task and status, each queue's depth and the
        age of its oldest due run, waiting tokens (and those expiring within the hour),
        waiting approvals, live workers. Read at each call (``GET /api/v1/stats`` over HTTP),
        so every process of a database gives the same figures; ``GET /metrics`` shows them
        to Prometheus (``WAITPOINT_METRICS=1``)."""
        return await self._connection.stats()
