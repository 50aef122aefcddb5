"""The local transport: ``engine.runs``, ``engine.tokens``, ``engine.workers``,
``engine.tasks`` and ``engine.schedules`` over a ``Storage`` this process opened (a SQLite
file or a PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from typing_extensions import Unpack

from .. import completion
from ..clock import Clock, from_ms
from ..cron import timezones
from ..durations import duration_ms
from ..errors import ConfigurationError, TaskNotFoundError, ValidationError
from ..keys import SecretKey, signing_secrets
from ..logs import get_logger
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
    TaskInfo,
    TaskState,
    TaskWorkers,
    TimelineEntry,
    Token,
    WorkerInfo,
)
from ..options import TokenOptions, TriggerOptions
from ..receipts import approval_receipts, make_receipt, verify_receipt
from ..registry import REGISTRY
from ..requests import run_request, timeline, token_request, waited_on
from ..settings import Settings
from ..signing import (
    UNKNOWN_PUBLIC_URL,
    CallbackSigner,
    PublicTokens,
    approval_url,
    inbox_url,
    local_secret_key,
    vote_url,
)
from ..storage import (
    DataToCheck,
    NewSchedule,
    NewVote,
    PageRequest,
    RunFilter,
    ScheduleChange,
    Storage,
    TokenFilter,
    open_storage,
)
from ..validation import clean_reason, validate_against_schema
from .interfaces import Approvals, Connection, Runs, Schedules, Tasks, Tokens, Workers

log = get_logger("engine.client")

T = TypeVar("T")
PayloadCheck = Callable[[Any], Awaitable[Any]]
"""A task's payload validated into the payload as stored (``LocalConnection.payload_check``)."""
NO_PUBLIC_URL = (
    "no public URL is known for this database: start `waitpoint dev` or `waitpoint serve` on"
    " it (the server records the address it listens on), or set WAITPOINT_PUBLIC_URL"
)
FOLLOW_RECHECK_SECONDS = 5.0
FOLLOW_MIN_GAP_SECONDS = 0.05
RUN_RECHECK_SECONDS = 1.0
"""``changes`` re-reads a run at least this often: PostgreSQL does not tell a claim."""


class LocalConnection(Connection):
    """A storage opened from ``settings`` (closed with the connection), or one already open
    that it does not close (``storage=``, with the ``signer`` its tokens are presented with).

    The tokens it hands out are presented here: storage returns them without a callback URL,
    and ``signer`` signs one on the configured public URL, else on the address the API server
    recorded in the database (read at open; a worker follows it as it changes).
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        storage: Storage | None = None,
        signer: CallbackSigner | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._storage = storage
        self._signer = signer
        self._owns_storage = storage is None
        self._secret_key: SecretKey | None = None
        self.runs = LocalRuns(self)
        self.tokens = LocalTokens(self)
        self.workers = LocalWorkers(self)
        self.tasks = LocalTasks(self)
        self.schedules = LocalSchedules(self)
        self.approvals = LocalApprovals(self)

    async def open(self) -> None:
        if self._storage is not None:
            return
        signing, self._secret_key = signing_secrets(self.settings)
        signer = CallbackSigner(self.settings.public_url, signing.current, signing.previous)
        storage = open_storage(
            self.settings.database_url,
            signing_secret=signing.current,
            previous_signing_secret=signing.previous,
            synchronous=self.settings.sqlite_synchronous,
            pool_size=self.settings.postgres_pool_size,
            clock=self._clock,
            listen_url=self.settings.listen_url,
        )
        await storage.open()
        try:
            await follow_public_url(signer, storage)
        except BaseException:
            await storage.close()
            raise
        self._storage, self._signer = storage, signer

    async def close(self) -> None:
        if self._storage is not None and self._owns_storage:
            await self._storage.close()
            self._storage = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise ConfigurationError("the Engine is not open: use `async with Engine() as engine:`")
        return self._storage

    @property
    def signer(self) -> CallbackSigner:
        if self._signer is None:
            raise ConfigurationError("the Engine is not open: use `async with Engine() as engine:`")
        return self._signer

    @property
    def secret_key(self) -> SecretKey | None:
        return self._secret_key

    async def trigger(self, task_id: str, payload: Any, options: TriggerOptions) -> Run:
        payload, queue = await self.checked_payload(task_id, payload)
        new = run_request(task_id, payload, self.storage.now_ms(), queue=queue, **options)
        run = await self.storage.create_run(new)
        log.info("run.triggered", run_id=run.id, task=task_id, cached=run.is_cached)
        return run

    async def batch_trigger(
        self, items: builtins.list[tuple[str, Any, TriggerOptions]]
    ) -> builtins.list[Run]:
        """Every item validated (each task looked up once), then all made in one transaction."""
        now = self.storage.now_ms()
        checks: dict[str, tuple[PayloadCheck, str | None]] = {}
        news = []
        for index, (task_id, payload, options) in enumerate(items):
            if task_id not in checks:
                checks[task_id] = await self.payload_check(task_id)
            check, queue = checks[task_id]
            try:
                news.append(run_request(task_id, await check(payload), now, queue=queue, **options))
            except ValidationError as exc:
                raise ValidationError(f"item {index}: {exc}") from None
        runs = await self.storage.create_runs(news)
        log.info("runs.batch_triggered", runs=len(runs), cached=sum(r.is_cached for r in runs))
        return runs

    async def purge(self, older_than: timedelta, limit: int) -> PurgeCount:
        return await self.storage.purge(duration_ms(older_than), limit)

    async def purgeable(self, older_than: timedelta) -> PurgeCount:
        return await self.storage.purgeable(duration_ms(older_than))

    async def stats(self) -> StatsSnapshot:
        return await self.storage.stats()

    async def checked_payload(self, task_id: str, payload: Any) -> tuple[Any, str | None]:
        """The payload as stored, validated by the task's model or schema, and its queue."""
        check, queue = await self.payload_check(task_id)
        return await check(payload), queue

    async def payload_check(self, task_id: str) -> tuple[PayloadCheck, str | None]:
        """What validates a payload of the task (its model or schema) into the payload as
        stored, and the task's queue; ``TaskNotFoundError`` for a task nobody registered."""
        local = REGISTRY.get(task_id)
        if local is not None:

            async def by_model(payload: Any) -> Any:
                return local.validate_payload(payload)

            return by_model, local.queue_name
        info = await self.registered_task(task_id)
        schema = info.payload_schema

        async def by_schema(payload: Any) -> Any:
            if schema is None:
                return payload
            return await validate_against_schema(schema, payload, f"the payload of {task_id!r}")

        return by_schema, info.queue

    async def link_signing(self) -> tuple[PublicTokens, str]:
        """What signs links here (the API's secret key: ``WAITPOINT_SECRET_KEY``, or the one
        kept beside the database) and the public URL they start with
        (``WAITPOINT_PUBLIC_URL``, else the address the API server recorded in the database;
        with neither, a ``ConfigurationError`` says so)."""
        known = self.secret_key
        tokens = PublicTokens(known.value if known else local_secret_key(self.settings))
        public_url = await follow_public_url(self.signer, self.storage)
        if public_url is None:
            raise ConfigurationError(NO_PUBLIC_URL)
        return tokens, public_url

    async def registered_task(self, task_id: str) -> TaskInfo:
        """The task as a worker registered it (``TaskNotFoundError`` naming the known ones)."""
        registered = {info.id: info for info in await self.storage.list_tasks()}
        if task_id not in registered:  # registered a moment ago? ask the database itself
            registered = {info.id: info for info in await self.storage.list_tasks(fresh=True)}
        info = registered.get(task_id)
        if info is None:
            raise TaskNotFoundError(task_id, sorted({*registered, *REGISTRY}))
        return info


async def follow_public_url(signer: CallbackSigner, storage: Storage) -> str | None:
    """Sign on the address the API server recorded, unless a public URL is configured; the
    base URLs are made on now (None: unknown, they point at ``UNKNOWN_PUBLIC_URL``)."""
    if not signer.configured:
        signer.public_url = await storage.load_public_url()
    return signer.public_url


async def verify_callback(
    signer: CallbackSigner, storage: Storage, token_id: str, signature: str
) -> bool:
    """Whether ``signature`` opens the callback URL of ``token_id``: signed with the current
    or the previous signing secret, or the one a token made before migration 4 was handed out
    with (the database keeps its hash)."""
    return signer.verify(token_id, signature) or await storage.legacy_signature_matches(
        token_id, signature
    )


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


class LocalRuns(Runs):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def retrieve(self, run_id: str) -> Run:
        return await self._connection.storage.get_run(run_id)

    async def _list(self, filter: RunFilter, page: PageRequest) -> Page[Run]:
        return await self._connection.storage.list_runs(filter, page)

    async def rate_limit_wait(self, run_id: str) -> RateLimitWait | None:
        storage = self._connection.storage
        wait = await storage.rate_limit_wait(run_id)
        if wait is None:
            await storage.get_run(run_id)  # RunNotFoundError for a run that is not there
        return wait

    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        storage, signer = self._connection.storage, self._connection.signer
        entries, events = await storage.get_journal(run_id), await storage.get_events(run_id)
        targets = await storage.describe_waitpoints(waited_on(events))
        return [
            entry.model_copy(update={"token": signer.present(entry.token)})
            if entry.token
            else entry
            for entry in timeline(entries, events, {target.id: target for target in targets})
        ]

    async def cancel(self, run_id: str) -> Run:
        return await self._connection.storage.cancel_run(run_id)

    async def _message_url(self, run_id: str, topic: str) -> str:
        await self.retrieve(run_id)  # RunNotFoundError for an unknown id
        connection = self._connection
        if await follow_public_url(connection.signer, connection.storage) is None:
            raise ConfigurationError(NO_PUBLIC_URL)
        return connection.signer.message_url(run_id, topic)

    async def _send(self, run_id: str, topic: str, data: Any) -> int:
        storage = self._connection.storage
        number = await storage.send_message(run_id, topic, data)
        if isinstance(number, DataToCheck):  # a receive of the topic declared a schema
            what = f"the message on {topic!r} for run {run_id}"
            data = await validate_against_schema(number.json_schema, data, what)
            number = await storage.send_message(run_id, topic, data, checked=number.schema)
            if isinstance(number, DataToCheck):  # a receive declared another one meanwhile
                raise ValidationError(f"{what}: the run's receive changed its schema; send again")
        log.info("run.message_sent", run_id=run_id, topic=topic, n=number)
        return number

    async def retry(self, run_id: str) -> Run:
        run = await self._connection.storage.retry_finished_run(run_id)
        log.info("run.retried_by_hand", run_id=run_id)
        return run

    async def replay(self, run_id: str, payload: Any = None) -> Run:
        storage = self._connection.storage
        if payload is None:
            run = await storage.replay_run(run_id)
        else:
            task_id = (await storage.get_run(run_id)).task_identifier
            checked, _ = await self._connection.checked_payload(task_id, payload)
            run = await storage.replay_run(run_id, checked, new_payload=True)
        log.info("run.replayed", run_id=run_id, new_run_id=run.id)
        return run

    async def fork(self, run_id: str, *, from_step: str) -> Run:
        run = await self._connection.storage.fork_run(run_id, from_step)
        log.info("run.forked", run_id=run_id, new_run_id=run.id, from_step=from_step)
        return run

    async def pause(self, run_id: str) -> Run:
        run = await self._connection.storage.pause_run(run_id)
        log.info("run.paused", run_id=run_id)
        return run

    async def resume(self, run_id: str) -> Run:
        run = await self._connection.storage.resume_run(run_id)
        log.info("run.resumed", run_id=run_id)
        return run

    async def _migrate(self, run_id: str, version: str) -> Run:
        run = await self._connection.storage.migrate_run(run_id, version)
        log.info("run.migrated", run_id=run_id, version=version)
        return run

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        storage = self._connection.storage
        changes = follow(
            storage,
            lambda: storage.get_run(run_id),
            key=lambda run: run.model_dump_json(),
            done=lambda run: run.is_finished,
        )
        async for run in changes:
            if run is not None:
                yield run

    async def changes(self, run_id: str) -> AsyncGenerator[Run, None]:
        """Woken by the commits that may have changed the run's status (the event is taken
        before each read, so none is missed), and at least every second."""
        storage = self._connection.storage
        while True:
            changed = storage.run_event(run_id)
            yield await storage.get_run(run_id)
            try:
                await asyncio.wait_for(changed.wait(), RUN_RECHECK_SECONDS)
            except TimeoutError:
                pass


class LocalTokens(Tokens):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def create(self, **options: Unpack[TokenOptions]) -> Token:
        storage = self._connection.storage
        made = await storage.create_token(token_request(storage.now_ms(), **options))
        token = self._connection.signer.present(made)
        log.info("token.created", token_id=token.id, cached=token.is_cached)
        schema = options.get("schema")
        if isinstance(schema, type):
            token._data_model = schema
        return token

    async def retrieve(self, token_id: str) -> Token:
        return self._connection.signer.present(await self._connection.storage.get_token(token_id))

    async def _list(self, filter: TokenFilter, page: PageRequest) -> Page[Token]:
        page_of = await self._connection.storage.list_tokens(filter, page)
        present = self._connection.signer.present
        return page_of.model_copy(update={"data": [present(token) for token in page_of.data]})

    async def complete(
        self, token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.PYTHON
    ) -> CompletionResult:
        connection = self._connection
        return await completion.complete(
            connection.storage, connection.signer, token_id, data, source
        )

    async def cancel(
        self,
        token_id: str,
        reason: str | None = None,
        *,
        source: CompletionSource = CompletionSource.PYTHON,
    ) -> CompletionResult:
        why = clean_reason(reason)
        result = await self._connection.storage.cancel_token(token_id, source, why)
        log.info(
            "token.cancelled",
            token_id=token_id,
            applied=result.applied,
            via=source.value,
            reason=why is not None,
        )
        return replace(result, token=self._connection.signer.present(result.token))

    async def approval_link(self, token_id: str, expires_in: str | timedelta = "24h") -> str:
        """Signed here with the API's secret key (``WAITPOINT_SECRET_KEY``, or the one kept
        beside the database). The public URL is ``WAITPOINT_PUBLIC_URL``, else the address the
        API server recorded in the database; with neither, a ``ConfigurationError`` says so."""
        await self.retrieve(token_id)
        tokens, public_url = await self._connection.link_signing()
        return approval_url(public_url, tokens, token_id, expires_in)

    async def receipt(self, token_id: str) -> dict[str, Any]:
        """Signed here, with the signing secret's receipt key (``engine.receipts``)."""
        connection = self._connection
        token = await connection.storage.get_token(token_id)
        now = from_ms(connection.storage.now_ms())
        receipt = make_receipt(token, connection.signer.secrets, now)
        log.info("token.receipt_issued", token_id=token_id, key_id=receipt["keyId"])
        return receipt

    async def verify_receipt(self, receipt: Mapping[str, Any]) -> None:
        verify_receipt(receipt, self._connection.signer.secrets)

    async def unreachable_urls(self) -> str | None:
        if self._connection.signer.public_url is not None:
            return None
        return f"{NO_PUBLIC_URL}; until then callback URLs point at {UNKNOWN_PUBLIC_URL}"


class LocalWorkers(Workers):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def list(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        return await self._connection.storage.list_workers(include_gone=include_gone)

    async def for_task(self, task_id: str) -> TaskWorkers:
        return await self._connection.storage.task_workers(task_id)


class LocalTasks(Tasks):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def pause(self, task_id: str) -> TaskState:
        state = await self._connection.storage.pause_task(task_id)
        log.info("task.paused", task=task_id)
        return state

    async def resume(self, task_id: str) -> TaskState:
        state = await self._connection.storage.resume_task(task_id)
        log.info("task.resumed", task=task_id)
        return state

    async def paused(self) -> builtins.list[TaskState]:
        return await self._connection.storage.paused_tasks()


class LocalSchedules(Schedules):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def _known(self, task_id: str) -> None:
        """A schedule's task must be one this process imported or a worker registered."""
        if task_id not in REGISTRY:
            await self._connection.registered_task(task_id)

    async def _create(self, new: NewSchedule) -> Schedule:
        await self._known(new.task_id)
        schedule = await self._connection.storage.create_schedule(new)
        log.info("schedule.created", schedule_id=schedule.id, task=new.task_id)
        return schedule

    async def retrieve(self, schedule_id: str) -> Schedule:
        return await self._connection.storage.get_schedule(schedule_id)

    async def _list(self, task: str | None, page: int, per_page: int) -> SchedulePage:
        return await self._connection.storage.list_schedules(task, page, per_page)

    async def _update(self, schedule_id: str, change: ScheduleChange) -> Schedule:
        if change.task_id is not None:
            await self._known(change.task_id)
        schedule = await self._connection.storage.update_schedule(schedule_id, change)
        log.info("schedule.updated", schedule_id=schedule_id)
        return schedule

    async def delete(self, schedule_id: str) -> None:
        await self._connection.storage.delete_schedule(schedule_id)
        log.info("schedule.deleted", schedule_id=schedule_id)

    async def activate(self, schedule_id: str) -> Schedule:
        schedule = await self._connection.storage.set_schedule_active(schedule_id, True)
        log.info("schedule.activated", schedule_id=schedule_id)
        return schedule

    async def deactivate(self, schedule_id: str) -> Schedule:
        schedule = await self._connection.storage.set_schedule_active(schedule_id, False)
        log.info("schedule.deactivated", schedule_id=schedule_id)
        return schedule

    async def timezones(self) -> builtins.list[str]:
        return timezones()


class LocalApprovals(Approvals):
    def __init__(self, connection: LocalConnection) -> None:
        self._connection = connection

    async def retrieve(self, approval_id: str) -> Approval:
        return await self._connection.storage.get_approval(approval_id)

    async def _list(
        self, approver: str | None, run_id: str | None, status: str | None, limit: int
    ) -> builtins.list[Approval]:
        storage = self._connection.storage
        return await storage.list_approvals(
            approver=approver, run_id=run_id, status=status, limit=limit
        )

    async def _vote(self, vote: NewVote) -> Approval:
        storage = self._connection.storage
        schema = (await storage.get_approval(vote.approval_id)).data_schema
        if schema is not None and (vote.approve or vote.data is not None):  # a "no" needs none
            what = f"the vote of {vote.approver} on approval {vote.approval_id}"
            await validate_against_schema(schema, vote.data, what)
        changed, approval = await storage.vote(vote)
        log.info(
            "approval.voted",
            approval_id=approval.id,
            approver=vote.approver,
            approve=vote.approve,
            changed=changed,
            status=approval.status.value,
        )
        return approval

    async def inbox_link(self, approver: str, *, expires_in: str | timedelta = "7d") -> str:
        tokens, public_url = await self._connection.link_signing()
        return inbox_url(public_url, tokens, approver, expires_in)

    async def receipts(self, approval_id: str) -> builtins.list[dict[str, Any]]:
        connection = self._connection
        approval = await self.retrieve(approval_id)
        now = from_ms(connection.storage.now_ms())
        return approval_receipts(approval, connection.signer.secrets, now)

    async def links(
        self, approval_id: str, *, expires_in: str | timedelta = "7d"
    ) -> dict[str, str]:
        approval = await self.retrieve(approval_id)
        tokens, public_url = await self._connection.link_signing()
        return {
            a.approver: vote_url(public_url, tokens, approval.id, a.approver, expires_in)
            for a in approval.approvers
        }
