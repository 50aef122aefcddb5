"""The engine's objects and their JSON shapes.

Field names are snake_case in Python and camelCase on the wire (the aliases), matching the
waitpoint token seed schema and Trigger.dev's run JSON. Optional string fields that are unset
are left out of the JSON rather than sent as ``null``: the Trigger.dev SDK and the seed schema
both read ``null`` in those places as a type error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.alias_generators import to_camel

from .durations import format_duration
from .errors import (
    ChildRunError,
    WaitpointCancelledError,
    WaitpointError,
    WaitpointTimeoutError,
)

T = TypeVar("T")


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"
    """The run spent longer than its ``max_duration`` executing."""
    DELAYED = "DELAYED"
    """Triggered with a ``delay``: QUEUED once it has passed."""
    EXPIRED = "EXPIRED"
    """Not started within its ``ttl``."""
    CRASHED = "CRASHED"
    """Its worker died (or stalled past the lease) too many times while running it."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RUN

    @property
    def is_failure(self) -> bool:
        """It ended by failing: what ``runs.retry`` takes."""
        return self in _FAILED_RUN


_TERMINAL_RUN = {
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELED,
    RunStatus.TIMED_OUT,
    RunStatus.EXPIRED,
    RunStatus.CRASHED,
}

_FAILED_RUN = {RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED}


class WaitpointStatus(StrEnum):
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


class CompletionSource(StrEnum):
    """How a completion arrived: kept on the token for the audit trail."""

    PYTHON = "python"
    CLI = "cli"
    API = "api"
    CALLBACK = "callback"
    PUBLIC_TOKEN = "public-token"
    UI = "ui"
    TIMEOUT = "timeout"


class WireModel(BaseModel):
    """camelCase on the wire; fields named in ``omit_when_none`` vanish instead of being null."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, defer_build=True
    )
    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _omitted_keys(type(self)):
            if key in data and data[key] is None:
                del data[key]
        return data


@cache
def _omitted_keys(model: type[WireModel]) -> tuple[str, ...]:
    """The names and aliases of ``model``'s ``omit_when_none`` fields (looked up once: at
    every dump they cost a fifth of a token's serialisation)."""
    keys: list[str] = []
    for name in sorted(model.omit_when_none):
        alias = model.model_fields[name].alias
        keys += [name] if alias in (None, name) else [name, alias]
    return tuple(keys)


class Token(WireModel):
    """A waitpoint token: a run may wait on it until someone completes it or it times out."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {
            "idempotency_key",
            "ttl",
            "completed_via",
            "idempotency_key_expires_at",
            "late_completions",
            "late_completion_count",
            "title",
            "description",
            "context",
            "cancel_reason",
        }
    )

    id: str
    status: WaitpointStatus
    url: str = ""
    """The signed callback URL that completes it. Made by the layer that presents the token
    (``engine.signing.CallbackSigner.present``: the facade, the runtime); storage leaves it
    empty, since it holds nothing that signs."""
    tags: list[str] = Field(default_factory=list)
    title: str | None = None
    """What the reviewer is asked, in a line ("Refund order 42"); shown by the approval page."""
    description: str | None = None
    """More about it, as plain text (never markup)."""
    context: dict[str, Any] | None = None
    """Facts the reviewer decides on (``{"amount": 19.99}``), shown as a list of names and
    values."""
    idempotency_key: str | None = None
    idempotency_key_expires_at: datetime | None = None
    ttl: str | None = None
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    created_at: datetime
    data: Any = None
    completed_via: CompletionSource | None = None
    cancel_reason: str | None = None
    """Why it was cancelled, as the canceller wrote it (plain text, at most 1,000 characters);
    None unless it was cancelled with a reason. The waiting run sees it as
    ``WaitpointCancelledError.reason``."""
    late_completions: list[LateCompletion] | None = None
    """The last completions (at most 10, oldest first) that arrived after the token closed
    (shown on a single token's retrieve). Only the last ones are kept: anyone holding the
    callback URL may post to it as often as they like."""
    late_completion_count: int | None = None
    """How many completions arrived after the token closed, all of them (with
    ``late_completions``)."""
    is_cached: bool = Field(default=False, exclude=True)
    """True when ``create`` returned an existing token for its idempotency key."""
    data_schema: dict[str, Any] | None = Field(default=None, exclude=True)
    """The JSON Schema completion data must satisfy (from ``create_token(schema=Model)``)."""
    completed_trace: str | None = Field(default=None, exclude=True)
    """The W3C ``traceparent`` of the request that completed it (``engine.tracing``)."""
    _data_model: type[BaseModel] | None = PrivateAttr(default=None)
    """The model ``wait_for_token`` parses the data into (kept in memory, not stored)."""

    @property
    def is_waiting(self) -> bool:
        return self.status is WaitpointStatus.WAITING


class LateCompletion(WireModel):
    """A completion refused because the token had already timed out or been cancelled."""

    via: CompletionSource
    at: datetime


class ApprovalVote(WireModel):
    """One approver's vote on an approval (``request_approval``): kept for the receipt."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"reason", "link_id"})

    approver: str
    """Who voted: the identity their link was made for (an e-mail address, a user name)."""
    approve: bool
    data: Any = None
    """What they filled in (the approval's ``schema``)."""
    reason: str | None = None
    """Why, for a rejection (the waiting run sees it)."""
    at: datetime
    via: CompletionSource
    link_id: str | None = None
    """The id of the per-approver link the vote came through (None from Python or the CLI)."""


class Approver(WireModel):
    """Someone an approval asks: from the request, or added by an escalation."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"url"})

    approver: str
    added_at: datetime
    escalation: int = 0
    """0 for those the request named; n for those the n-th escalation added."""
    url: str | None = None
    """Their own voting link (made by the facade that presents the approval)."""


class ApprovalNotice(WireModel):
    """A notice to an approver (requested, reminder, escalated) and what became of it."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"delivered_at", "ok", "channel", "error"})

    approver: str
    reason: str
    due_at: datetime
    attempts: int
    """Deliveries tried so far (each with the notifier's own retries)."""
    delivered_at: datetime | None = None
    """When it was settled: sent (``ok``), or given up on; None while it is pending."""
    ok: bool | None = None
    channel: str | None = None
    error: str | None = None


class Approval(WireModel):
    """A decision a run waits for: ``quorum`` of its approvers approve, or the rejection
    rule (``reject_on``) is met, or ``expires_at`` passes. Its id is its waitpoint's."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"description", "context", "expires_at", "completed_at", "approved"}
    )

    id: str
    run_id: str
    status: WaitpointStatus
    title: str
    description: str | None = None
    context: dict[str, Any] | None = None
    quorum: int
    reject_on: Literal["any", "majority"]
    allow_change: bool = False
    """Whether an approver may change their vote while the approval is open."""
    approvers: list[Approver]
    votes: list[ApprovalVote]
    approved: bool | None = None
    """Once closed: True (quorum reached), False (rejected or timed out)."""
    created_at: datetime
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    show_votes: bool = True
    """Whether the approval page shows the votes so far to the approvers."""
    notices: list[ApprovalNotice] = Field(default_factory=list)
    """What approvers were told, and whether it reached them (the workers' notifier)."""
    data_schema: dict[str, Any] | None = Field(default=None, exclude=True)
    """The JSON Schema a vote's data must satisfy (``request_approval(schema=)``)."""


class RunError(WireModel):
    name: str
    message: str
    stack_trace: str = ""


class Run(WireModel):
    """One execution of a task, from trigger to a terminal status."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {
            "output",
            "error",
            "idempotency_key",
            "started_at",
            "finished_at",
            "delayed_until",
            "ttl",
            "metadata",
            "parent_run_id",
            "version",
            "paused_at",
            "origin_run_id",
            "origin",
            "priority",
        }
    )

    id: str
    task_identifier: str
    status: RunStatus
    payload: Any = None
    output: Any = None
    error: RunError | None = None
    tags: list[str] = Field(default_factory=list)
    idempotency_key: str | None = None
    attempt_count: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    delayed_until: datetime | None = None
    ttl: str | None = None
    metadata: dict[str, Any] | None = None
    parent_run_id: str | None = None
    depth: int = 0
    """0 for a run triggered from outside, parent's depth + 1 for a child run."""
    children: list[str] = Field(default_factory=list)
    """Ids of the child runs it started (filled by ``runs.retrieve``)."""
    waiting_on: list[str] = Field(default_factory=list)
    """Ids of the waitpoints the run is blocked on while WAITING."""
    version: str | None = None
    """The version of the code the run started on (``@task(version=)``, ``--version``),
    recorded by its first claim; only workers of that version resume it, until it is
    migrated (``runs.migrate``) to another."""
    paused_at: datetime | None = None
    """When the run was paused (``runs.pause``): no worker claims it until it is resumed."""
    origin_run_id: str | None = None
    """The run this one replays or was forked from (``origin`` says which)."""
    origin: str | None = None
    """``"replay"`` or ``"fork"`` when ``origin_run_id`` is set."""
    priority: int | None = None
    """The ``priority`` it was triggered with, in seconds (None: none): it is claimed as if
    it had been queued that much earlier."""
    is_cached: bool = Field(default=False, exclude=True)
    """True when ``trigger`` returned an existing run for its idempotency key."""

    @property
    def is_finished(self) -> bool:
        return self.status.is_terminal


class TimelineEntry(WireModel):
    """One thing a run did or went through: the run's audit trail.

    Durable calls carry their journal ``key``; for ``create_token`` and ``wait_for_token`` the
    token is the one recorded then (for a wait: how it closed, when, and how the completion
    arrived, ``completedVia``). Lifecycle events (``created``, ``attempt_started``,
    ``waiting``, ``retrying``, ``finished``, ``canceled``...) have no key and a ``detail``.
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"key", "error", "token", "value", "duration_ms", "detail", "waiting_on"}
    )

    kind: str
    name: str
    attempt: int
    at: datetime
    ok: bool
    duration_ms: int | None = None
    value: Any = None
    error: RunError | None = None
    token: Token | None = None
    detail: dict[str, Any] | None = None
    key: str | None = None
    """The durable call's journal key; None for lifecycle events."""
    waiting_on: list[WaitTarget] | None = None
    """For a ``waiting`` event: what each waitpoint of ``detail["on"]`` is."""


class WaitTarget(WireModel):
    """A waitpoint a run waited on, as its timeline names it.

    ``kind`` is ``token`` (someone completes it; ``until`` is its timeout), ``run`` (it closes
    when the child run ``run_id`` ends), ``sleep`` (a ``sleep`` or ``sleep_until`` that ends
    at ``until``), ``deadline`` (the timeout of a ``wait_for_tokens`` group, at ``until``) or
    ``message`` (a ``receive``: the next message on its topic, or its timeout at ``until``).
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"run_id", "until"})

    id: str
    kind: str
    status: WaitpointStatus
    created_at: datetime
    run_id: str | None = None
    until: datetime | None = None


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``after`` to get the next one."""

    model_config = ConfigDict(defer_build=True)

    data: list[T]
    next_cursor: str | None = None
    previous_cursor: str | None = None
    """Pass as ``before`` to get the page of newer items (None on the first page)."""


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action by filter (``engine.runs.cancel_matching``, ``retry_matching``)
    did: how many runs the filters matched among those it can act on, and how many of them
    this call changed (none with ``dry_run``)."""

    matched: int
    changed: int
    dry_run: bool = False


@dataclass(frozen=True)
class PurgeCount:
    """What a purge deleted (``dry_run``: what it would delete now): finished runs, each with
    its journal, events and waits, and closed tokens, older than the retention asked for."""

    runs: int
    tokens: int
    dry_run: bool = False


@dataclass(frozen=True)
class CompletionResult:
    """What ``complete_token`` did: ``applied`` is True only for the call that won."""

    applied: bool
    token: Token


@dataclass(frozen=True)
class WaitResult(Generic[T]):
    """How a wait ended: ``ok`` with ``output``, or not ok with a ``WaitpointError``."""

    ok: bool
    output: T | None = None
    error: WaitpointError | None = None
    token_id: str = ""

    @property
    def timed_out(self) -> bool:
        """The wait ran out of time (a token's timeout, a ``receive`` timeout)."""
        return isinstance(self.error, WaitpointTimeoutError)

    def unwrap(self) -> T:
        """The output, or raise the wait's error (``WaitpointTimeoutError``, ...)."""
        if not self.ok:
            assert self.error is not None
            raise self.error
        return self.output  # type: ignore[return-value]

    @classmethod
    def from_token(cls, token: Token, parse: Any = None) -> WaitResult[Any]:
        if token.status is WaitpointStatus.COMPLETED:
            output = parse(token.data) if parse is not None else token.data
            return WaitResult(ok=True, output=output, token_id=token.id)
        message = ""
        if isinstance(token.data, dict):
            message = str(token.data.get("message", ""))
        error: WaitpointError
        if token.status is WaitpointStatus.CANCELLED:
            reason = token.cancel_reason
            if not message:
                message = f"token {token.id} was cancelled" + (f": {reason}" if reason else "")
            error = WaitpointCancelledError(message, reason=reason)
        else:
            error = WaitpointTimeoutError(message or f"token {token.id} timed out")
        return WaitResult(ok=False, error=error, token_id=token.id)


@dataclass(frozen=True)
class RunResult:
    """How a child run ended: ``ok`` with its ``output``, or a ``ChildRunError``."""

    ok: bool
    run_id: str
    status: RunStatus
    output: Any = None
    error: ChildRunError | None = None

    def unwrap(self) -> Any:
        """The child's output, or raise its ``ChildRunError``."""
        if not self.ok:
            assert self.error is not None
            raise self.error
        return self.output

    @classmethod
    def from_waitpoint(cls, waitpoint: Token) -> RunResult:
        data = waitpoint.data if isinstance(waitpoint.data, dict) else {}
        run_id = str(data.get("runId", ""))
        status = RunStatus(str(data.get("status", RunStatus.FAILED.value)))
        if status is RunStatus.COMPLETED:
            return cls(ok=True, run_id=run_id, status=status, output=data.get("output"))
        error = ChildRunError(run_id, status.value, data.get("error"))
        return cls(ok=False, run_id=run_id, status=status, error=error)


@dataclass(frozen=True)
class GroupResult:
    """A snapshot of a group taken when it closed (``wait_for_tokens``, ``wait_for_any``).

    ``items`` holds each member's result in the order they were given, None for one still
    open: a token's and a message's ``WaitResult``, a run's ``RunResult``. ``results`` is
    the same by key (a token's id, a message's topic, a run's id); ``index`` is the place of
    the member that closed first, ``first`` its key; ``timed_out`` says the group's own
    timeout hit.
    """

    ok: bool
    results: dict[str, WaitResult[Any] | RunResult | None]
    first: str | None
    timed_out: bool
    items: list[WaitResult[Any] | RunResult | None] = field(default_factory=list)
    index: int | None = None


class WorkerInfo(WireModel):
    """A worker process as the database knows it: what it serves, and its last heartbeat.

    A worker writes its heartbeat with its lease renewals (every third of its lease, 10 s by
    default); it is ``live`` while that heartbeat is younger than ``LIVE_LEASES`` of its lease
    periods and it has not stopped. A worker that stops cleanly says so (``stopped_at``); a
    killed one falls silent and stops being live.
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"stopped_at"})

    id: str
    """``host:pid:random``, as in its log lines and the runs it leases."""
    tasks: list[str]
    concurrency: int
    """How many attempts it runs at once at most."""
    running: int
    """The attempts it is executing now (runs it holds EXECUTING)."""
    lease_ms: int
    started_at: datetime
    heartbeat_at: datetime
    live: bool
    stopped_at: datetime | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    """The version it serves each versioned task at (``@task(version=)``, ``--version``);
    the tasks left out it serves with none."""


class TaskWorkers(WireModel):
    """Which live workers serve a task, and when one was last seen if none does."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"last_seen_at"})

    task_id: str
    live_workers: list[str]
    """Ids of the live workers that serve the task."""
    last_seen_at: datetime | None = None
    """The last heartbeat of any worker that served the task (or when one registered it)."""
    checked_at: datetime
    """The database's time when this was read."""
    live_versions: dict[str, str] = Field(default_factory=dict)
    """The version each live worker serves the task at (workers serving it with no version
    are left out)."""

    @property
    def unserved(self) -> str | None:
        """Why no run of the task will start now, in one line; None while a live worker
        serves it."""
        if self.live_workers:
            return None
        if self.last_seen_at is None:
            return f"no worker has ever served task {self.task_id!r}"
        seconds = (self.checked_at - self.last_seen_at).total_seconds()
        return f"no live worker serves task {self.task_id!r} (last seen {ago(seconds)} ago)"

    def unserved_at(self, version: str | None) -> str | None:
        """Why a QUEUED run of the task that recorded ``version`` does not start, in one line;
        None while a live worker serves the task at that version (any live worker, for a run
        that recorded none: every worker claims those)."""
        if version is None or self.unserved is not None:
            return self.unserved
        served = {self.live_versions.get(worker) for worker in self.live_workers}
        if version in served:
            return None
        named = sorted(v for v in served if v is not None)
        if None in served:
            named.append("no version")
        return (
            f"waiting for a worker of version {version}"
            f" (the live workers of task {self.task_id!r} serve {', '.join(named)})"
        )


class RateLimitWait(WireModel):
    """Why a QUEUED run that is due does not start: its queue's rate limit bucket (of its
    ``rate_limit_key``, if it has one) holds less than one token until ``next_token_at``."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"rate_limit_key"})

    queue: str
    rate_limit_key: str | None = None
    limit: int
    period_ms: int
    next_token_at: datetime
    """When the bucket holds a token again (runs ahead in the queue take it first)."""

    @property
    def reason(self) -> str:
        """``waiting for queue 'emails' rate limit (100 per 1m)``, and the key if any."""
        key = "" if self.rate_limit_key is None else f", key {self.rate_limit_key!r}"
        return (
            f"waiting for queue {self.queue!r} rate limit"
            f" ({self.limit} per {describe_period(self.period_ms)}{key})"
        )


def describe_period(period_ms: int) -> str:
    """A rate limit's period as it is written: ``1m``, ``1h30m``, ``250ms``."""
    if period_ms % 1000:
        return f"{period_ms}ms"
    return format_duration(timedelta(milliseconds=period_ms))


class TaskState(WireModel):
    """Whether a task is paused (``engine.tasks.pause``): while it is, no worker claims a run
    of it, on any machine; its runs keep being triggered, queued and completed meanwhile."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"paused_at"})

    task_id: str
    paused_at: datetime | None = None
    """Since when (None: not paused)."""


EXPIRING_SOON = timedelta(hours=1)
"""How far ahead ``StatsSnapshot.tokens_expiring_soon`` looks."""


class RunCount(WireModel):
    """How many runs of a task are in a status (``StatsSnapshot.runs``)."""

    task_id: str
    status: RunStatus
    count: int


class QueueDepth(WireModel):
    """The QUEUED runs of a task in one of its queues (``StatsSnapshot.queues``)."""

    task_id: str
    queue: str
    depth: int
    """Every QUEUED run, due or not (a retry waits QUEUED for its delay)."""
    due: int
    """Those a worker may claim now: a queue whose ``due`` stays up has too few workers, a
    paused task, or a concurrency or rate limit holding it back."""
    oldest_age_seconds: float
    """How long the oldest due run has waited to start (0 with none due): the figure to
    alert on, since a deep queue that moves is fine and a shallow one that does not is not."""


class StatsSnapshot(WireModel):
    """What the database holds now, in a few aggregate figures (``engine.stats()``,
    ``GET /api/v1/stats``, ``waitpoint stats``, the gauges of ``GET /metrics``).

    Every process of a database reads the same figures, so any one of them may be scraped.
    """

    at: datetime
    """The database's time when they were read."""
    runs: list[RunCount]
    """By task and status (statuses with no run left out), finished runs too: with a
    retention (``WAITPOINT_RETENTION``) those are the ones not purged yet."""
    queues: list[QueueDepth]
    tokens_waiting: int
    tokens_expiring_soon: int
    """WAITING tokens whose timeout falls within ``EXPIRING_SOON`` (an hour) from ``at``."""
    approvals_waiting: int
    live_workers: int
    """Workers whose heartbeat is recent and that have not stopped (``WorkerInfo.live``)."""


class ScheduleType(StrEnum):
    """Where a schedule comes from (Trigger.dev's names)."""

    DECLARATIVE = "DECLARATIVE"
    """Declared in code: ``@task(cron=...)``, kept in step by the workers serving the task."""
    IMPERATIVE = "IMPERATIVE"
    """Made at run time: ``engine.schedules.create``, the CLI or ``POST /api/v1/schedules``."""


class CatchUp(StrEnum):
    """What a schedule runs for the ticks it missed while no worker of its task was up."""

    LAST = "last"
    """One run, for the last missed tick (the default)."""
    ALL = "all"
    """One run per missed tick, oldest first (at most 100 per schedule at a time)."""


class CronGenerator(WireModel):
    """What makes a schedule tick (Trigger.dev's ``generator``): a cron expression."""

    type: str = "CRON"
    expression: str
    description: str = ""
    """The expression in English (``At 09:00 on Monday through Friday``), in local time."""


class Schedule(WireModel):
    """A cron schedule of a task: each tick makes one run of it (``engine.schedules``).

    The wire shape is Trigger.dev's schedule object; ``payload``, ``catch_up``,
    ``last_run``, ``upcoming`` and the times of creation and change are ours.
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"deduplication_key", "external_id", "next_run", "last_run", "payload"}
    )

    id: str
    task: str
    type: ScheduleType
    active: bool
    generator: CronGenerator
    timezone: str
    """The IANA time zone the expression is read in (``Europe/Berlin``)."""
    deduplication_key: str | None = None
    external_id: str | None = None
    """Yours: a user or tenant id, passed on to each run (``ScheduledPayload.external_id``)."""
    next_run: datetime | None = None
    """The next tick (None while inactive, or when the expression matches no later time)."""
    last_run: datetime | None = None
    """The last tick that made a run."""
    upcoming: list[datetime] = Field(default_factory=list)
    """The next five ticks, from ``next_run`` on (none while inactive)."""
    catch_up: CatchUp = CatchUp.LAST
    payload: Any = None
    """Given to each run as ``ScheduledPayload.payload``."""
    created_at: datetime
    updated_at: datetime

    @property
    def cron(self) -> str:
        return self.generator.expression


class SchedulePagination(WireModel):
    current_page: int
    total_pages: int
    count: int
    """How many schedules match, on all pages."""


class SchedulePage(WireModel):
    """One page of ``engine.schedules.list`` (Trigger.dev's page-numbered shape)."""

    data: list[Schedule]
    pagination: SchedulePagination


class ScheduledPayload(WireModel):
    """What a run made by a schedule receives (Trigger.dev's scheduled task payload): type a
    task's payload with it to read it as an object.

        @task(cron="0 9 * * MON-FRI", timezone="Europe/Berlin")
        async def morning_report(payload: ScheduledPayload) -> None:
            print(payload.timestamp, payload.upcoming[0])
    """

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"last_timestamp", "external_id", "payload"}
    )

    type: ScheduleType
    timestamp: datetime
    """The tick this run is for (not when it started: that may be later)."""
    last_timestamp: datetime | None = None
    """The tick before, that made a run; None for the schedule's first run."""
    timezone: str
    schedule_id: str
    external_id: str | None = None
    upcoming: list[datetime] = Field(default_factory=list)
    """The next five ticks after ``timestamp``."""
    payload: Any = None
    """The schedule's own payload, if it was given one."""


def ago(seconds: float) -> str:
    """A span of time as people say it: ``45 s``, ``3 min``, ``5 h``, ``2 days``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


@dataclass(frozen=True)
class TaskInfo:
    """A task id as workers registered it: its payload's JSON Schema when typed, its queue."""

    id: str
    payload_schema: dict[str, Any] | None = None
    queue: str | None = None
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    """At most this many runs of the queue start per ``rate_period_ms`` (``RateLimit``)."""
    rate_period_ms: int | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One durable call's recorded outcome. ``position`` is the call's order in the run."""

    key: str
    attempt: int
    position: int
    is_error: bool
    value: Any
    recorded_ms: int = 0
    duration_ms: int | None = None
    seq: int = 0
    rerun: bool = False
    """A step error that failed its attempt: the next attempt runs the step again."""


@dataclass(frozen=True)
class RunEvent:
    """A lifecycle event of a run: created, attempt_started, waiting, retrying, finished..."""

    kind: str
    attempt: int
    recorded_ms: int
    seq: int
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds a lease on; every write it makes carries ``epoch``."""

    id: str
    task_id: str
    payload: Any
    attempt: int
    epoch: int
    max_attempts: int | None = None
    executed_ms: int = 0
    """Time earlier attempts and resumes of this run spent executing (waits excluded)."""
    max_duration_ms: int | None = None
    """This run's own limit (a trigger option), before the task's."""
    metadata: dict[str, Any] | None = None
    journal: list[JournalEntry] = field(default_factory=list)
    attempt_base: int = 0
    """The attempts it had before it was retried by hand: its retry policy counts from here."""
    created_ms: int = 0
    trace_context: str | None = None
    """The W3C ``traceparent`` it was triggered in (``engine.tracing``)."""
    trace_attempts: list[str] = field(default_factory=list)
    """The ``traceparent`` of each earlier traced attempt (its span links to them)."""
    closed_tokens: dict[str, Token] = field(default_factory=dict)
    """The tokens it was parked on that closed since, by id, as its claim found them: its
    resumed wait journals one without reading it again."""
