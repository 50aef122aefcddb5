"""What ``engine.runs``, ``engine.tokens``, ``engine.workers``, ``engine.tasks`` and
``engine.schedules`` promise, whatever the transport.

Each is an abstract class with two implementations side by side: ``local`` (over a
``Storage``, in this process) and ``http`` (over the REST API, with httpx). ``Connection``
bundles one transport's four and what the facade needs besides (opening, closing,
triggering), so ``Engine`` picks a connection once, at construction, and never asks which
kind it has. What both transports do alike is written here, once: the arguments of the list
calls are validated into a filter and a page before either transport sees them, and
``Workers.unserved`` reads ``for_task``.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta
from typing import Any

from typing_extensions import Unpack

from ..cron import Cron, clean_catch_up, clean_cron, clean_timezone
from ..errors import RunStateError, ValidationError, VoteRefusedError
from ..keys import SecretKey
from ..models import (
    Approval,
    BulkResult,
    CatchUp,
    CompletionResult,
    CompletionSource,
    Page,
    PurgeCount,
    RateLimitWait,
    Run,
    RunStatus,
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
from ..options import RunQuery, TokenOptions, TriggerOptions
from ..requests import moment_ms, page_request
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
from ..validation import (
    MAX_PAGE_SIZE,
    clean_approver,
    clean_limit,
    clean_optional_text,
    clean_reason,
    clean_statuses,
    clean_tags,
    clean_topic,
    clean_version,
)

BULK_BATCH = 50
"""Runs a bulk action (``cancel_matching``, ``retry_matching``) acts on at once."""


class Runs(ABC):
    """``engine.runs``: look runs up, list them, follow them, cancel them."""

    @abstractmethod
    async def retrieve(self, run_id: str) -> Run: ...

    async def list(
        self,
        *,
        limit: int = 25,
        after: str | None = None,
        before: str | None = None,
        **query: Unpack[RunQuery],
    ) -> Page[Run]:
        """Newest first; pass ``page.next_cursor`` as ``after`` for the next (older) page,
        ``page.previous_cursor`` as ``before`` for the previous one. ``query``: ``status``,
        ``task``, ``tags``, ``created_after``, ``created_before``, ``version``
        (``options.RunQuery``)."""
        task = query.get("task")
        version = query.get("version")
        filter = RunFilter(
            status=clean_statuses(query.get("status"), RunStatus),
            task_id=[task] if isinstance(task, str) else builtins.list(task or []),
            tags=clean_tags(query.get("tags")),
            created_from_ms=moment_ms(query.get("created_after"), "created_after"),
            created_to_ms=moment_ms(query.get("created_before"), "created_before"),
            version=None if version is None else clean_version(version),
        )
        return await self._list(filter, page_request(limit, after, before))

    @abstractmethod
    async def _list(self, filter: RunFilter, page: PageRequest) -> Page[Run]: ...

    async def ids(self, **query: Unpack[RunQuery]) -> builtins.list[str]:
        """The ids of every run the query matches, newest first, read a page at a time."""
        found: builtins.list[str] = []
        after = None
        while True:
            page = await self.list(limit=100, after=after, **query)
            found += [run.id for run in page.data]
            if page.next_cursor is None:
                return found
            after = page.next_cursor

    async def cancel_matching(
        self,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        **query: Unpack[RunQuery],
    ) -> BulkResult:
        """Cancel every unfinished run the query matches (all of them without one).

        The matching runs are listed first, then canceled ``BULK_BATCH`` at a time;
        ``progress(done, matched)`` is called after each batch. A run that finished meanwhile
        is left as it is and not counted. Finished runs never match, so running the same call
        again cancels nothing more. ``dry_run`` only counts.
        """
        unfinished = [s for s in RunStatus if not s.is_terminal]

        async def cancel(run_id: str) -> bool:
            return (await self.cancel(run_id)).status is RunStatus.CANCELED

        return await self._act_matching("canceled", unfinished, cancel, dry_run, progress, query)

    async def retry_matching(
        self,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        **query: Unpack[RunQuery],
    ) -> BulkResult:
        """Retry every FAILED, CRASHED and TIMED_OUT run the query matches (``retry``).

        In batches like ``cancel_matching``; a run retried meanwhile (it no longer failed) is
        skipped and not counted, so running the same call again retries only the runs that
        failed since.
        """
        failed = [s for s in RunStatus if s.is_failure]

        async def retry(run_id: str) -> bool:
            try:
                await self.retry(run_id)
            except RunStateError:  # retried (or replaced) by someone else meanwhile
                return False
            return True

        return await self._act_matching("retried", failed, retry, dry_run, progress, query)

    async def _act_matching(
        self,
        done: str,
        eligible: builtins.list[RunStatus],
        act: Callable[[str], Awaitable[bool]],
        dry_run: bool,
        progress: Callable[[int, int], None] | None,
        query: RunQuery,
    ) -> BulkResult:
        """List the runs ``query`` matches among the ``eligible`` statuses, then ``act`` on
        them ``BULK_BATCH`` at a time (``act`` says whether it changed the run)."""
        wanted = clean_statuses(query.get("status"), RunStatus) or eligible
        narrowed_statuses = [s for s in wanted if s in eligible]
        if not narrowed_statuses:
            raise ValidationError(
                f"only runs that are {', '.join(s.value for s in eligible)} can be {done}"
            )
        narrowed: RunQuery = {**query, "status": narrowed_statuses}
        ids = await self.ids(**narrowed)
        if dry_run:
            return BulkResult(matched=len(ids), changed=0, dry_run=True)
        changed = 0
        for start in range(0, len(ids), BULK_BATCH):
            batch = ids[start : start + BULK_BATCH]
            changed += sum(await asyncio.gather(*(act(run_id) for run_id in batch)))
            if progress is not None:
                progress(start + len(batch), len(ids))
        return BulkResult(matched=len(ids), changed=changed)

    @abstractmethod
    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        """What the run did, oldest first: steps, tokens created, waits and how they ended."""

    @abstractmethod
    async def cancel(self, run_id: str) -> Run:
        """Cancel a run that has not finished; a finished run is returned unchanged."""

    async def send(self, run_id: str, topic: str, data: Any = None) -> int:
        """Send ``data`` (JSON) to the run's ``receive(topic)``; returns the message's number
        on its topic (1, 2, ...). Kept until the run receives it: messages are delivered in
        the order they were sent, each once. A run waiting on the topic resumes; a finished
        run is refused (``RunStateError``)."""
        return await self._send(run_id, clean_topic(topic), data)

    @abstractmethod
    async def _send(self, run_id: str, topic: str, data: Any) -> int: ...

    async def message_url(self, run_id: str, topic: str) -> str:
        """A signed URL that sends its POST's whole body as a message on ``topic`` to the
        run, with no key (for a partner's webhook, like a token's callback URL). It opens
        this run and topic only, and lasts as long as the secret key."""
        return await self._message_url(run_id, clean_topic(topic))

    @abstractmethod
    async def _message_url(self, run_id: str, topic: str) -> str: ...

    @abstractmethod
    async def rate_limit_wait(self, run_id: str) -> RateLimitWait | None:
        """Whether a QUEUED run that is due waits for its queue's rate limit (its bucket
        holds less than a token now; ``reason`` says so in one line, ``next_token_at`` when
        the bucket has one again), or None. An unknown run raises ``RunNotFoundError``."""

    async def migrate(self, run_id: str, *, to: str) -> Run:
        """Move an unfinished run to version ``to``: from now on only workers serving ``to``
        for its task claim it, and its next attempt replays its journal on that code (so
        changes to durable calls since the version it started on need ``patched()``); an
        attempt executing now goes on where it runs. Its timeline records a ``migrated``
        event (from, to); a run already of that version is left as it is. A finished run
        is refused (``RunStateError``), unchanged."""
        return await self._migrate(run_id, clean_version(to, "to"))

    @abstractmethod
    async def _migrate(self, run_id: str, version: str) -> Run: ...

    @abstractmethod
    async def retry(self, run_id: str) -> Run:
        """A new attempt of a FAILED, CRASHED or TIMED_OUT run, from its journal.

        Its journaled calls replay (the steps that succeeded do not run again); the step
        that failed it runs again. Its retry policy counts afresh and it gets its whole
        ``max_duration`` again. Any other status: ``RunStateError`` (``replay`` makes a new
        run of any run).
        """

    @abstractmethod
    async def replay(self, run_id: str, payload: Any = None) -> Run:
        """A new run of the same task, with the same payload (or ``payload``, validated as a
        trigger's is), tags and trigger options, and an empty journal: everything runs again.
        The new run's ``origin_run_id`` is the original; both timelines say so."""

    @abstractmethod
    async def fork(self, run_id: str, *, from_step: str) -> Run:
        """A new run whose journal is the original's up to (not including) the first call of
        step ``from_step`` (or the call with that journal key, ``step:notify#1``): what came
        before replays, and the run goes on anew from there. Pinned to the original's
        version, whose code wrote that journal."""

    @abstractmethod
    async def pause(self, run_id: str) -> Run:
        """Keep workers from claiming the run until ``resume`` (``paused_at`` says since when).

        An attempt executing now is not interrupted: the run is held once it parks, retries or
        is handed back. A WAITING run still records the completions of what it waits on and
        goes back to the queue, but starts again only once resumed. Pausing a paused run
        changes nothing; a finished run raises ``RunStateError``.
        """

    @abstractmethod
    async def resume(self, run_id: str) -> Run:
        """Let workers claim a paused run again (a QUEUED one at once); a run that is not
        paused is returned unchanged, a finished one raises ``RunStateError``."""

    @abstractmethod
    def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        """The run now and after every change, ending with its final state.

            async for run in engine.runs.subscribe(run.id):
                print(run.status, run.metadata)

        An unknown id raises ``RunNotFoundError`` before anything is yielded.
        """

    @abstractmethod
    def changes(self, run_id: str) -> AsyncGenerator[Run, None]:
        """The run now, then again whenever it may have changed, without end (and without
        dropping repeats): what ``Engine.wait_for_run`` watches."""


class Tokens(ABC):
    """``engine.tokens``: create, look up, list, complete and cancel waitpoint tokens."""

    @abstractmethod
    async def create(self, **options: Unpack[TokenOptions]) -> Token:
        """A new WAITING token (or the live one with the same idempotency key).

        ``title``, ``description`` (plain text) and ``context`` (a JSON object) tell the
        reviewer what they approve; the approval page and the inbox show them.
        """

    @abstractmethod
    async def retrieve(self, token_id: str) -> Token: ...

    async def list(
        self,
        *,
        status: WaitpointStatus | str | Sequence[WaitpointStatus | str] | None = None,
        tags: builtins.list[str] | str | None = None,
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
        return await self._list(filter, page_request(limit, after, before))

    @abstractmethod
    async def _list(self, filter: TokenFilter, page: PageRequest) -> Page[Token]: ...

    @abstractmethod
    async def complete(
        self, token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.PYTHON
    ) -> CompletionResult:
        """Complete a WAITING token; ``applied`` says whether this call was the one that won.

        Data for a typed token must match its schema (``ValidationError`` otherwise, and the
        token stays WAITING). A timed-out or cancelled token raises ``TokenNotWaitingError``.
        Over HTTP the server records the completion as arriving by ``api``, whatever
        ``source`` says.
        """

    @abstractmethod
    async def cancel(
        self,
        token_id: str,
        reason: str | None = None,
        *,
        source: CompletionSource = CompletionSource.PYTHON,
    ) -> CompletionResult:
        """Cancel a WAITING token: runs waiting on it resume with ``WaitpointCancelledError``.

        ``reason`` (plain text, 1 to 1,000 characters once stripped, no control characters
        but line breaks and tabs; else ``ValidationError`` and nothing changes) is kept on
        the token (``Token.cancel_reason``) and given to the waiting runs
        (``WaitpointCancelledError.reason``). Cancelling a cancelled token changes nothing
        (``applied`` False; its first reason stays); a completed or timed-out one raises
        ``TokenNotWaitingError``.
        """

    @abstractmethod
    async def approval_link(self, token_id: str, expires_in: str | timedelta = "24h") -> str:
        """``{public URL}/ui/approve/{id}?t=...``: a page that completes this token.

        Whoever opens the link can complete this one token (and nothing else) until it
        expires (at most 30 days); treat it like a password.
        """

    @abstractmethod
    async def receipt(self, token_id: str) -> dict[str, Any]:
        """The signed decision receipt of a closed token (``engine.receipts``): how it closed,
        when, by which route, the SHA-256 of its data, signed by the server.

        A token still WAITING has no decision yet: ``RunStateError``. Keep the receipt as it
        is (a JSON object): ``verify_receipt`` checks it later.
        """

    @abstractmethod
    async def verify_receipt(self, receipt: Mapping[str, Any]) -> None:
        """Return if ``receipt`` was signed by this server (with its secret key, or the
        previous one it still accepts) and is unchanged; else ``ValidationError`` saying what
        is wrong (a missing field, an unknown key, a bad signature)."""

    @abstractmethod
    async def unreachable_urls(self) -> str | None:
        """Why the callback URLs of tokens made here lead nowhere (no public URL is known),
        or None when they lead to a server."""


class Workers(ABC):
    """``engine.workers``: the worker processes serving this database, and whom a task has.

    A worker records a heartbeat with its lease renewals (every third of its lease); it is
    live while that heartbeat is younger than three lease periods (90 s by default) and it
    has not stopped.
    """

    @abstractmethod
    async def list(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        """The live workers, most recent heartbeat first (``include_gone``: also those that
        stopped or fell silent in the last week)."""

    @abstractmethod
    async def for_task(self, task_id: str) -> TaskWorkers:
        """The live workers serving ``task_id``, and when one was last seen."""

    async def unserved(self, run: Run) -> str | None:
        """Why a QUEUED run does not start (``no live worker serves task 'boom' (last seen 3
        min ago)``, ``waiting for a worker of version v41 ...``), or None: it is not QUEUED,
        or a live worker serves its task at the version the run recorded."""
        if run.status is not RunStatus.QUEUED:
            return None
        return (await self.for_task(run.task_identifier)).unserved_at(run.version)


class Tasks(ABC):
    """``engine.tasks``: switch a task's runs off on every worker at once, and on again."""

    @abstractmethod
    async def pause(self, task_id: str) -> TaskState:
        """Stop new claims of the task's runs on every worker (an incident switch) until
        ``resume``: attempts running now go on, and its runs are still triggered, queued and
        completed, but none starts. Pausing a paused task changes nothing; a task no worker
        registered raises ``TaskNotFoundError``."""

    @abstractmethod
    async def resume(self, task_id: str) -> TaskState:
        """Let workers claim the task's runs again, at once."""

    @abstractmethod
    async def paused(self) -> builtins.list[TaskState]:
        """The tasks paused now, by id."""


class Schedules(ABC):
    """``engine.schedules``: cron schedules of tasks made at run time (Trigger.dev's
    ``schedules`` API), and the declared ones (``@task(cron=...)``) to look at.

    Each tick of an active schedule makes one run of its task, however many workers serve
    it; its payload is a ``ScheduledPayload``. The arguments are checked here, so both
    transports refuse the same input with the same ``ValidationError`` before anything
    changes.
    """

    async def create(
        self,
        task_id: str,
        *,
        cron: str,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
        deduplication_key: str | None = None,
        catch_up: CatchUp | str = CatchUp.LAST,
    ) -> Schedule:
        """A new active schedule of ``task_id``: ``cron`` ("0 9 * * MON-FRI"; six fields
        for seconds, first) read in ``timezone`` (IANA, default UTC). ``payload`` reaches
        each run as ``ScheduledPayload.payload``, ``external_id`` (yours: a user, a tenant)
        as ``external_id``. With a ``deduplication_key`` that a schedule already has, that
        schedule is updated to these values instead (so creating it at every start is
        safe). ``catch_up``: the ticks missed while no worker of the task was up make one
        run (``"last"``) or one each (``"all"``). A task no worker registered raises
        ``TaskNotFoundError``."""
        new = NewSchedule(
            task_id=_task_id(task_id),
            cron=Cron.of(cron, timezone),
            payload=payload,
            external_id=clean_optional_text(external_id, "external_id"),
            deduplication_key=clean_optional_text(deduplication_key, "deduplication_key"),
            catch_up=clean_catch_up(catch_up),
        )
        return await self._create(new)

    @abstractmethod
    async def _create(self, new: NewSchedule) -> Schedule: ...

    @abstractmethod
    async def retrieve(self, schedule_id: str) -> Schedule:
        """The schedule, with its next five ticks (``ScheduleNotFoundError``)."""

    async def list(
        self, *, task: str | None = None, page: int = 1, per_page: int = 25
    ) -> SchedulePage:
        """Newest first, ``per_page`` (1-100) a page, ``page`` counting from 1; ``task``:
        only its schedules."""
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValidationError(f"page must be a whole number from 1 on, got {page!r}")
        whole = isinstance(per_page, int) and not isinstance(per_page, bool)
        if not (whole and 1 <= per_page <= MAX_PAGE_SIZE):
            raise ValidationError(f"per_page must be between 1 and {MAX_PAGE_SIZE}")
        return await self._list(None if task is None else _task_id(task), page, per_page)

    @abstractmethod
    async def _list(self, task: str | None, page: int, per_page: int) -> SchedulePage: ...

    async def update(
        self,
        schedule_id: str,
        *,
        task: str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
        catch_up: CatchUp | str | None = None,
    ) -> Schedule:
        """Change what is given (the rest stays); a new expression or time zone ticks from
        now on. A declared schedule is refused (``ValidationError``): change its code."""
        change = ScheduleChange(
            task_id=None if task is None else _task_id(task),
            cron=None if cron is None else clean_cron(cron),
            timezone=None if timezone is None else clean_timezone(timezone),
            payload=payload,
            external_id=clean_optional_text(external_id, "external_id"),
            catch_up=None if catch_up is None else clean_catch_up(catch_up),
        )
        return await self._update(schedule_id, change)

    @abstractmethod
    async def _update(self, schedule_id: str, change: ScheduleChange) -> Schedule: ...

    @abstractmethod
    async def delete(self, schedule_id: str) -> None:
        """Delete a schedule (its runs stay). A declared one comes back when a worker whose
        task still declares it starts: remove ``cron=`` from the task to end it for good;
        deleting is for one whose task is gone from the code (no worker deletes that)."""

    @abstractmethod
    async def activate(self, schedule_id: str) -> Schedule:
        """Tick again, from now on: the ticks missed while it was inactive make no run."""

    @abstractmethod
    async def deactivate(self, schedule_id: str) -> Schedule:
        """Stop ticking until ``activate`` (declared schedules too: it stays inactive when
        its workers restart)."""

    @abstractmethod
    async def timezones(self) -> builtins.list[str]:
        """The time zone names a schedule may use (IANA), sorted."""


class Approvals(ABC):
    """``engine.approvals``: the approvals runs wait for (``request_approval``), their
    approvers' links, and votes cast from Python (an approver's link casts theirs)."""

    @abstractmethod
    async def retrieve(self, approval_id: str) -> Approval:
        """The approval, whom it asks and their votes (``ApprovalNotFoundError``)."""

    async def list(
        self,
        *,
        approver: str | None = None,
        run_id: str | None = None,
        status: WaitpointStatus | str | None = None,
        limit: int = 100,
    ) -> builtins.list[Approval]:
        """Newest first: those asking ``approver``, of ``run_id``, in ``status``."""
        shown = None if status is None else clean_statuses([status], WaitpointStatus)[0].value
        person = None if approver is None else clean_approver(approver)
        return await self._list(person, run_id, shown, clean_limit(limit))

    @abstractmethod
    async def _list(
        self, approver: str | None, run_id: str | None, status: str | None, limit: int
    ) -> builtins.list[Approval]: ...

    async def vote(
        self,
        approval_id: str,
        approver: str,
        *,
        approve: bool = True,
        data: Any = None,
        reason: str | None = None,
        source: CompletionSource = CompletionSource.PYTHON,
        link_id: str | None = None,
    ) -> Approval:
        """Cast ``approver``'s vote; returns the approval as it is after it (closed, if the
        vote met its rule). Refused: ``ApprovalClosedError`` (410; kept as a late vote),
        ``VoteRefusedError`` (409: not asked, or voted already), ``ValidationError`` (data
        that does not match the approval's schema: an approval must fill it in, a rejection
        may leave it out). The same vote again changes nothing.
        ``source`` and ``link_id`` (``signing.link_id`` of the link it came through) are kept
        with the vote for its receipt."""
        if not isinstance(approve, bool):
            raise ValidationError("approve must be true or false")
        new = NewVote(
            approval_id=approval_id,
            approver=clean_approver(approver),
            approve=approve,
            via=source,
            data=data,
            reason=clean_reason(reason),
            link_id=link_id,
        )
        return await self._vote(new)

    @abstractmethod
    async def _vote(self, vote: NewVote) -> Approval: ...

    async def link(
        self, approval_id: str, approver: str, *, expires_in: str | timedelta = "7d"
    ) -> str:
        """``approver``'s own voting page (``VoteRefusedError`` if the approval does not ask
        them)."""
        links = await self.links(approval_id, expires_in=expires_in)
        person = clean_approver(approver)
        if person not in links:
            raise VoteRefusedError(f"{person!r} is not asked by approval {approval_id}")
        return links[person]

    @abstractmethod
    async def inbox_link(self, approver: str, *, expires_in: str | timedelta = "7d") -> str:
        """``approver``'s inbox (``{public URL}/ui/inbox?t=...``): the approvals that ask them,
        each with their voting link; whoever opens it reads and votes as them (30 days max)."""

    @abstractmethod
    async def receipts(self, approval_id: str) -> builtins.list[dict[str, Any]]:
        """The signed receipts of a closed approval (``engine.receipts.approval_receipts``):
        the decision's, then each counted vote's with its approver and link; each verifies
        with ``engine.tokens.verify_receipt`` (``RunStateError`` while it is open)."""

    @abstractmethod
    async def links(
        self, approval_id: str, *, expires_in: str | timedelta = "7d"
    ) -> dict[str, str]:
        """Each approver's own voting page (``{public URL}/ui/vote/{id}?t=...``): whoever
        opens it votes as that approver, so send it to them alone (at most 30 days)."""


def _task_id(task_id: Any) -> str:
    if not isinstance(task_id, str) or not task_id:
        raise ValidationError("a schedule's task must be a task id (a non-empty string)")
    return task_id


class Connection(ABC):
    """One transport's ``runs``, ``tokens``, ``workers``, ``tasks`` and ``schedules``, and what
    ``Engine`` needs besides."""

    runs: Runs
    tokens: Tokens
    workers: Workers
    tasks: Tasks
    schedules: Schedules
    approvals: Approvals

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @property
    @abstractmethod
    def storage(self) -> Storage:
        """The open storage (a ``ConfigurationError`` where there is none: over HTTP, or
        before ``open``)."""

    @property
    @abstractmethod
    def signer(self) -> CallbackSigner:
        """What presents this connection's tokens with their callback URLs and checks those
        URLs' signatures (a ``ConfigurationError`` where there is none: over HTTP, where the
        server presents them, or before ``open``)."""

    @property
    @abstractmethod
    def secret_key(self) -> SecretKey | None:
        """The key this connection's callback URLs are signed with a secret derived from
        (known once open, on a database; None with ``WAITPOINT_SIGNING_SECRET`` or over
        HTTP)."""

    @abstractmethod
    async def trigger(self, task_id: str, payload: Any, options: TriggerOptions) -> Run: ...

    @abstractmethod
    async def batch_trigger(
        self, items: builtins.list[tuple[str, Any, TriggerOptions]]
    ) -> builtins.list[Run]:
        """A run of each ``(task, payload, options)``, all made in one transaction or none
        (``Engine.batch_trigger``); the message of a bad item names its index."""

    @abstractmethod
    async def purge(self, older_than: timedelta, limit: int) -> PurgeCount:
        """One batch of ``Engine.purge``: at most ``limit`` finished runs and ``limit`` closed
        tokens older than ``older_than``, deleted in one transaction."""

    @abstractmethod
    async def purgeable(self, older_than: timedelta) -> PurgeCount:
        """What ``Engine.purge`` would delete now (its ``dry_run``)."""

    @abstractmethod
    async def stats(self) -> StatsSnapshot:
        """``Engine.stats``: the database's figures now (over HTTP, ``GET /api/v1/stats``)."""
