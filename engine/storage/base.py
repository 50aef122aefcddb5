"""The storage contract: domain operations, not SQL.

Each backend (``sqlite.py`` now, PostgreSQL later) owns its SQL and migrations and turns
driver errors into ``StorageError`` at its boundary. Every method that changes state is one
transaction; the ones that take a ``JournalWrite`` or an ``epoch`` are fenced by the run's
lease epoch and raise ``LeaseLostError`` when the caller no longer owns the run.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..cron import Cron
from ..durations import Deadline
from ..models import (
    Approval,
    CatchUp,
    ClaimedRun,
    CompletionResult,
    CompletionSource,
    JournalEntry,
    Page,
    PurgeCount,
    RateLimitWait,
    Run,
    RunError,
    RunEvent,
    RunStatus,
    Schedule,
    SchedulePage,
    StatsSnapshot,
    TaskInfo,
    TaskState,
    TaskWorkers,
    Token,
    WaitpointStatus,
    WaitTarget,
    WorkerInfo,
)

WorkQueued = Callable[[str | None, int | None], None]
"""Told that a run of a task (the ``str``) was queued, with its number (the ``int``: a hash
of the run's id, on PostgreSQL); or, with None for either, that some run may have been (SQLite,
which sees that the file changed and not what; a listener that was down)."""


class DeadlineEvent(asyncio.Event):
    """``StorageCore.deadline_event``: set when a deadline earlier than ``before`` is told;
    ``earliest`` is the earliest told so far (-inf: a commit that did not say which)."""

    def __init__(self, before: float) -> None:
        super().__init__()
        self.before = before
        self.earliest = math.inf

    def told(self, at_ms: float) -> bool:
        """A deadline was set at ``at_ms``; True if that wakes this event's loop."""
        self.earliest = min(self.earliest, at_ms)
        if at_ms < self.before:
            self.set()
            return True
        return False


@dataclass(frozen=True)
class NewDebounce:
    """A debounced trigger (``options.Debounce``, in milliseconds): the run it makes, or the
    DELAYED run of the same task and key it joins (``storage.triggers``)."""

    key: str
    delay_ms: int
    trailing: bool
    """A joining trigger's payload, tags, metadata, max_attempts and max_duration replace
    the run's (else the first trigger's stay)."""
    max_delay_ms: int | None = None
    """From the first trigger: a trigger that would push the run later makes a new run."""


@dataclass(frozen=True)
class NewRun:
    task_id: str
    payload: Any
    tags: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    idempotency_key_expires_ms: int | None = None
    max_attempts: int | None = None
    delayed_until_ms: int | None = None
    """DELAYED until then, QUEUED after."""
    ttl: str | None = None
    ttl_ms: int | None = None
    """EXPIRED if not started within this long after it became QUEUED."""
    metadata: dict[str, Any] | None = None
    max_duration_ms: int | None = None
    parent_run_id: str | None = None
    """Set by the storage when a run starts a child (with the journal key that made it)."""
    queue: str | None = None
    """The queue whose concurrency limit the run counts against (default: its task's id)."""
    concurrency_key: str | None = None
    """Runs with different keys get separate copies of the queue's limit (e.g. per tenant)."""
    priority: int = 0
    """Seconds: the run is claimed as if queued that much earlier (``requests.MAX_PRIORITY``)."""
    rate_limit_key: str | None = None
    """Runs with different keys take tokens from separate buckets of the queue's rate limit."""
    origin_run_id: str | None = None
    """The run a replay or fork copies (``origin`` says which: ``"replay"`` or ``"fork"``)."""
    origin: str | None = None
    version: str | None = None
    """Set for a fork only: its journal came from the original's code."""
    debounce: NewDebounce | None = None
    """Collapse triggers of the task with the same key (top-level triggers only)."""
    trace_context: str | None = None
    """The W3C ``traceparent`` it was triggered in, which its attempts continue (tracing)."""


@dataclass(frozen=True)
class NewToken:
    timeout_ms: int | None = None
    ttl: str | None = None
    tags: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    idempotency_key_expires_ms: int | None = None
    data_schema: dict[str, Any] | None = None
    title: str | None = None
    description: str | None = None
    context: dict[str, Any] | None = None
    """Shown to the reviewer (``requests.token_request`` bounds them)."""


@dataclass(frozen=True)
class NewWorker:
    """A worker starting: recorded with the tasks it registers (``register_tasks``)."""

    id: str
    tasks: list[str]
    concurrency: int
    lease_ms: int
    versions: Mapping[str, str] = field(default_factory=dict)
    """The version it serves each versioned task at (tasks left out: none), for saying
    which version a QUEUED run waits for (``task_workers``)."""


@dataclass(frozen=True)
class JournalWrite:
    """A journal entry to append for a run, fenced by the lease ``epoch`` of the writer."""

    run_id: str
    epoch: int
    attempt: int
    key: str
    position: int
    is_error: bool = False
    value: Any = None
    duration_ms: int | None = None
    """How long the call took (a step's body), for the run's timeline."""


@dataclass(frozen=True)
class GroupMember:
    """A wait in a group (``wait_on_group``) besides a token's: the next message on a topic
    of the waiting run (``kind="message"``, ``ref`` the topic), or another run's end
    (``kind="run"``, ``ref`` its id)."""

    kind: Literal["message", "run"]
    ref: str
    data_schema: dict[str, Any] | None = None
    """A message's schema (``receive_op(topic, schema=)``): later sends must match it."""


@dataclass(frozen=True)
class NewApproval:
    """What ``request_approval`` asks for (checked by the caller): the APPROVAL waitpoint's
    text and schema, its rules, its reminders and escalations (``after_ms`` from the
    request), and its ``deadline``."""

    title: str
    approvers: list[str]
    quorum: int
    reject_on: str = "any"
    allow_change: bool = False
    show_votes: bool = True
    description: str | None = None
    context: dict[str, Any] | None = None
    data_schema: dict[str, Any] | None = None
    remind_every_ms: int | None = None
    escalations: list[tuple[int, list[str]]] = field(default_factory=list)
    deadline: Deadline | None = None


@dataclass(frozen=True)
class NewVote:
    """One approver's vote (its data already checked against the approval's schema)."""

    approval_id: str
    approver: str
    approve: bool
    via: CompletionSource
    data: Any = None
    reason: str | None = None
    link_id: str | None = None


@dataclass(frozen=True)
class Notice:
    """A notification to deliver (``approval_notices``): claimed by one worker at a time."""

    approval_id: str
    n: int
    approver: str
    reason: str
    """Why it is sent: "requested", "reminder" or "escalated"."""
    attempts: int
    due_at: int


@dataclass(frozen=True)
class DataToCheck:
    """``complete_token`` found a WAITING token whose data must match this schema first."""

    schema: str
    """The schema as stored (JSON text): pass it back as ``checked`` once the data matched."""

    @property
    def json_schema(self) -> Any:
        return json.loads(self.schema)


@dataclass(frozen=True)
class PageRequest:
    """Newest first: ``after`` pages towards older items, ``before`` towards newer ones."""

    limit: int = 25
    after: str | None = None
    before: str | None = None


@dataclass(frozen=True)
class RunFilter:
    status: list[RunStatus] = field(default_factory=list)
    task_id: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    version: str | None = None
    """Runs that recorded this version (``@task(version=)``, ``runs migrate``)."""


@dataclass(frozen=True)
class TokenFilter:
    status: list[WaitpointStatus] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    created_from_ms: int | None = None
    created_to_ms: int | None = None


@dataclass(frozen=True)
class NewSchedule:
    """A schedule made at run time (``engine.schedules.create``); with a
    ``deduplication_key`` that a schedule already has, that schedule is updated instead."""

    task_id: str
    cron: Cron
    payload: Any = None
    external_id: str | None = None
    deduplication_key: str | None = None
    catch_up: CatchUp = CatchUp.LAST


@dataclass(frozen=True)
class ScheduleChange:
    """What ``update_schedule`` changes: each field given (None: left as it is)."""

    task_id: str | None = None
    cron: str | None = None
    timezone: str | None = None
    payload: Any = None
    external_id: str | None = None
    catch_up: CatchUp | None = None


@dataclass(frozen=True)
class DeclaredSchedule:
    """``@task(cron=...)``: the schedule a worker serving the task keeps in the database."""

    task_id: str
    cron: Cron
    catch_up: CatchUp = CatchUp.LAST


@dataclass(frozen=True)
class TimerOutlook:
    """What ``timer_outlook`` read: whether any timer work is due now, and when the next is."""

    due: bool
    """A token timeout, delayed run, time to live, schedule tick, approval reminder or
    escalation is due, or a lease ran out: a timer turn has work to do."""
    next_ms: int | None
    """The earliest of those moments still to come, leases aside (None: none)."""


@dataclass(frozen=True)
class ScheduleFiring:
    """What ``fire_due_schedules`` did, and when to look again."""

    runs: int
    """Runs made (one per tick; a tick that had its run already makes none)."""
    next_tick_ms: int | None
    """The earliest next tick of the active schedules of the tasks asked about (None: none)."""
    more_due: bool = False
    """Ticks were left due (a full batch, or more missed ticks than one pass catches up on):
    fire again at once."""


class Storage(Protocol):
    """What the runtime, the scheduler and the client need from a database."""

    signing_key_matches: bool
    """False when this process signs callback URLs with another key than the one the database
    recorded (see ``storage.signing``): an API server with that key refuses its URLs."""

    async def open(self) -> None:
        """Open (and migrate) the database."""
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Apply pending schema migrations (``open`` does too); returns the schema version."""
        ...

    def now_ms(self) -> int:
        """The database's clock, in milliseconds since the epoch."""
        ...

    # the API server's address
    async def record_public_url(self, url: str) -> None:
        """Keep ``url`` in the database as the address its API server is reached at."""
        ...

    async def load_public_url(self) -> str | None:
        """The address the API server recorded (``record_public_url``), read again; None
        while none did. Storage makes no callback URL: the layer presenting a token signs it
        (``engine.signing.CallbackSigner``), on its configured public URL or on this one."""
        ...

    # tasks and the workers serving them
    async def register_tasks(self, tasks: list[TaskInfo], worker: NewWorker | None = None) -> None:
        """Record the tasks; with ``worker``, in the same transaction, the worker that serves
        them (its first heartbeat), and let go of workers silent for a week."""
        ...

    async def stop_worker(self, worker_id: str) -> None:
        """The worker stopped cleanly: it is no longer live (its row stays, for "last seen")."""
        ...

    async def list_workers(self, *, include_gone: bool = False) -> list[WorkerInfo]:
        """The live workers (with ``include_gone``, the stopped and silent ones too), most
        recent heartbeat first, each with the attempts it is executing now."""
        ...

    async def task_workers(self, task_id: str) -> TaskWorkers:
        """Which live workers serve ``task_id``, and when one was last seen."""
        ...

    async def serving(self) -> dict[str, list[str]]:
        """Each task's live workers, their ids in order (``Worker`` shares notifications)."""
        ...

    async def list_tasks(self, *, fresh: bool = False) -> list[TaskInfo]:
        """The registered tasks (possibly as this process last saw them, a notification ago;
        ``fresh``: as the database has them now)."""
        ...

    async def pause_task(self, task_id: str) -> TaskState:
        """Keep every worker from claiming runs of the task until ``resume_task`` (an incident
        switch): attempts running now go on, new claims stop. ``TaskNotFoundError`` for a task
        no worker registered."""
        ...

    async def resume_task(self, task_id: str) -> TaskState:
        """Let workers claim runs of the task again, and wake them (their runs waited QUEUED)."""
        ...

    async def paused_tasks(self) -> list[TaskState]:
        """The tasks paused now, by id."""
        ...

    # runs
    async def create_run(self, new: NewRun) -> Run:
        """Insert a QUEUED run, or return the live one with the same idempotency key (or
        the DELAYED one a debounced trigger joins, pushed back), ``is_cached``."""
        ...

    async def create_runs(self, news: Sequence[NewRun]) -> list[Run]:
        """``create_run`` for each, in order and in one transaction: all of them or none."""
        ...

    async def get_run(self, run_id: str) -> Run: ...

    async def list_runs(self, filter: RunFilter, page: PageRequest) -> Page[Run]: ...

    async def get_events(self, run_id: str) -> list[RunEvent]:
        """The run's lifecycle events, oldest first."""
        ...

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        """Every journal entry of the run, in the order they were recorded."""
        ...

    async def cancel_run(self, run_id: str) -> Run:
        """Cancel an unfinished run (its lease epoch moves on); a finished run is unchanged.

        The child runs it waits on are canceled too, recursively, except a child that another
        unfinished run, not canceled in this same operation, also waits on: two parents that
        ``trigger_and_wait`` with one idempotency key share one child, and cancelling one of
        them must not end the other's child. Such a child is canceled with its last waiter.
        Runs it started without waiting on them (``trigger``) are left alone.
        """
        ...

    async def pause_run(self, run_id: str) -> Run:
        """Keep workers from claiming the run until ``resume_run`` (a ``paused`` event; pausing
        a paused run changes nothing). An executing attempt is not interrupted; a WAITING run
        still records its completions and goes back to the queue, where it stays.
        ``RunStateError`` for a finished run."""
        ...

    async def resume_run(self, run_id: str) -> Run:
        """Let workers claim the run again (a ``resumed`` event), and wake them if it is
        QUEUED; a run not paused is left as it is. ``RunStateError`` for a finished run."""
        ...

    async def migrate_run(self, run_id: str, version: str) -> Run:
        """Move an unfinished run to ``version``: only workers serving that version claim it
        from now on (its ``migrated`` event records from which and to which). A finished run
        is refused (``RunStateError``); a QUEUED one is announced to the workers again."""
        ...

    async def claim_runs(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        task_ids: list[str],
        versions: Mapping[str, str] | None = None,
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due QUEUED runs of these tasks (a new epoch for each), each
        with its journal in the order the entries were recorded (a run's own entries in
        commit order: replay returns racing calls in that order).

        Paused runs and runs of paused tasks are left. ``versions`` gives the version the
        claimer serves each task at (a task missing from it: none). A run is taken only if it
        recorded no version or the one served for its task; the first claim records that one
        on the run (``Run.version``)."""
        ...

    async def renew_leases(self, owner: str, run_ids: list[str], lease_ms: int) -> list[str]:
        """Extend the leases ``owner`` holds on these runs, and record the heartbeat of the
        worker ``owner`` (in the same transaction; with no runs, only the heartbeat). Returns
        the runs whose lease it extended: a run missing from it is no longer ``owner``'s."""
        ...

    async def lost_runs(self, owner: str, run_ids: list[str]) -> list[str]:
        """Which of these runs this worker no longer holds: canceled, re-queued after its lease
        ran out (rescued), or taken over by another worker meanwhile."""
        ...

    async def set_metadata(self, run_id: str, epoch: int, metadata: dict[str, Any]) -> None:
        """Replace the run's metadata (fenced by the lease epoch)."""
        ...

    async def release_run(self, run_id: str, epoch: int, delay_ms: int = 0) -> None:
        """The attempt of ``epoch`` is over: release the run's lease.

        An EXECUTING run goes back to the queue (graceful shutdown, always-replay hand-back),
        claimable again after ``delay_ms`` (a database failure: not at once, not in a loop);
        a run the attempt parked keeps its status. A parked run keeps the lease of the attempt
        that parked it until then, so no other worker starts it while that attempt is still
        unwinding (``finally`` blocks run after the wait committed).
        """
        ...

    async def append_journal(self, write: JournalWrite) -> None: ...

    async def finish_run(
        self,
        run_id: str,
        epoch: int,
        status: RunStatus,
        output: Any,
        error: RunError | None,
        elapsed_ms: int = 0,
        rerun: Sequence[str] = (),
    ) -> None:
        """Record the run's end; ``elapsed_ms`` is this attempt's executing time. The step
        errors journaled under the keys in ``rerun`` (the ones that failed the run) are run
        again if the run is retried by hand (``retry_finished_run``)."""
        ...

    async def retry_run(
        self,
        run_id: str,
        epoch: int,
        delay_ms: int,
        error: RunError,
        elapsed_ms: int = 0,
        rerun: Sequence[str] = (),
    ) -> None:
        """Queue the run's next attempt after ``delay_ms``; the step errors journaled under
        the keys in ``rerun`` (the ones that failed this attempt) are run again by it, the
        others replayed."""
        ...

    # messages into a running run (``messages.py``)
    async def send_message(
        self, run_id: str, topic: str, data: Any, checked: str | None = None
    ) -> int | DataToCheck:
        """Keep ``data`` for the run's next ``receive(topic)`` (its number on the topic); a
        run waiting on the topic is woken; a finished run: ``RunStateError``. A topic whose
        receive declared a schema returns it (``DataToCheck``) unless ``checked`` is it."""
        ...

    async def receive_message(
        self,
        topic: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
        data_schema: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The oldest undelivered message on ``topic``, delivered and journaled; or
        ``{"timedOut": true}`` past the deadline; or None: the run blocks."""
        ...

    async def record_attempt_trace(self, run_id: str, epoch: int, traceparent: str) -> None:
        """Keep an attempt's ``traceparent`` with the run (tracing: the run's span links to
        every attempt); nothing if ``epoch`` lost the lease."""
        ...

    # approvals (``approvals.py``)
    async def wait_on_approval(
        self, new: NewApproval, journal: JournalWrite, elapsed_ms: int = 0
    ) -> dict[str, Any] | None:
        """Make the approval once per journal key (its approvers notified), then its decision
        journaled and returned once it closed; or None: the run blocks on it."""
        ...

    async def vote(self, vote: NewVote) -> tuple[bool, Approval]:
        """Count a vote in one transaction (the approval closes there when its rule is met);
        returns whether it changed anything (a repeat does not) and the approval. Refused:
        ``ApprovalClosedError`` (kept as a late vote), ``VoteRefusedError``,
        ``ApprovalNotFoundError``."""
        ...

    async def get_approval(self, approval_id: str) -> Approval:
        """The approval, its approvers and votes (``ApprovalNotFoundError``)."""
        ...

    async def list_approvals(
        self,
        *,
        approver: str | None = None,
        run_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        """Approvals, newest first; those asking ``approver``, of ``run_id``, in ``status``."""
        ...

    async def fire_due_approvals(self, limit: int) -> int | None:
        """Reminders and escalations that fell due: notices made (and escalations' approvers
        added); returns when the next one falls due (None: none)."""
        ...

    async def claim_notices(self, limit: int, lease_ms: int) -> list[Notice]:
        """Notices due for delivery, each claimed for ``lease_ms`` (another worker takes it
        over if this one dies before recording it)."""
        ...

    async def record_notice(
        self, notice: Notice, *, ok: bool, channel: str, error: str | None, retry_ms: int | None
    ) -> None:
        """A delivery's outcome; ``retry_ms``: not delivered, try again that much later."""
        ...

    # sent round again by hand (``repairs.py``)
    async def retry_finished_run(self, run_id: str) -> Run:
        """Queue a FAILED, CRASHED or TIMED_OUT run for a new attempt from its journal
        (``RunStateError`` for any other status)."""
        ...

    async def replay_run(
        self, run_id: str, payload: Any = None, *, new_payload: bool = False
    ) -> Run:
        """A new run of the same task, with the same payload (or ``payload``)."""
        ...

    async def fork_run(self, run_id: str, from_call: str) -> Run:
        """A new run whose journal is the original's up to ``from_call``."""
        ...

    # tokens
    async def create_token(self, new: NewToken, journal: JournalWrite | None = None) -> Token:
        """Insert a WAITING token (or return the one with the same idempotency key).

        With ``journal`` the token is recorded in the run's journal in the same transaction;
        the entry's value is filled with the token's JSON.
        """
        ...

    async def get_token(self, token_id: str) -> Token:
        """The token, with the completions refused after it closed: the last few
        (``late_completions``) and how many there were (``late_completion_count``)."""
        ...

    async def legacy_signature_matches(self, token_id: str, signature: str) -> bool:
        """Whether ``signature`` is the one a token made before migration 4 was handed out
        with (the database keeps its hash, not the secret that made it). Signatures under the
        current or the previous signing secret are checked by ``CallbackSigner.verify``."""
        ...

    async def get_request_reply(self, key: str, route: str) -> Any: ...

    async def save_request_reply(self, key: str, route: str, reply: Any) -> None: ...

    async def spend_credential(self, key: str, expires_at_ms: int) -> bool:
        """Record that a dashboard credential (a one-click sign-in link, a session) is used up,
        for every process of this database; False if it already was. ``expires_at_ms`` is when
        it would have expired anyway: the record may go some time after that."""
        ...

    async def credential_spent(self, key: str) -> bool:
        """Whether ``spend_credential`` recorded ``key`` (and has not dropped it yet)."""
        ...

    async def list_tokens(self, filter: TokenFilter, page: PageRequest) -> Page[Token]: ...

    async def complete_token(
        self,
        token_id: str,
        data: Any,
        source: CompletionSource,
        checked: str | None = None,
        trace: str | None = None,
    ) -> CompletionResult | DataToCheck:
        """Complete a WAITING token whose data schema is ``checked`` (the schema's stored
        text; None: a token with no schema). A WAITING token with another schema is left
        alone and its schema returned (``DataToCheck``): validate the data against it, then
        complete again with ``checked`` set. So an untyped token completes in one call.
        ``trace``: the ``traceparent`` it was completed in (kept for the resumed run)."""
        ...

    async def cancel_token(
        self, token_id: str, source: CompletionSource, reason: str | None = None
    ) -> CompletionResult:
        """Cancel a WAITING token, with ``reason`` (already checked: ``clean_reason``)
        kept in its data beside the error's code and message. A token cancelled already is
        returned as it is (``applied`` False, its first reason kept); a completed or timed-out
        one raises ``TokenNotWaitingError``."""
        ...

    async def wait_on_token(
        self,
        token_id: str,
        journal: JournalWrite,
        elapsed_ms: int = 0,
        closed: Token | None = None,
    ) -> Token | None:
        """Block the run on the token, or journal its outcome if it already closed.

        Returns the closed token (the run goes on), or None when the run is now WAITING (the
        caller must suspend; its attempt releases the lease once it unwound). ``closed``: the
        token as the run's claim found it closed (``ClaimedRun.closed_tokens``), journaled
        as it is, without reading it again (a closed token changes no more).
        """
        ...

    async def start_child(self, new: NewRun, journal: JournalWrite) -> Run:
        """Create a child run of the journal's run and journal it, in one transaction."""
        ...

    async def wait_for_children(
        self, news: list[NewRun], journal: JournalWrite, elapsed_ms: int = 0
    ) -> list[Token] | None:
        """Start the children (once per journal key) and block on their RUN waitpoints.

        Returns the closed waitpoints (``data`` holds each child's result) once every child
        finished, or None when the run is now WAITING.
        """
        ...

    async def wait_on_group(
        self,
        members: Sequence[str | GroupMember],
        mode: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
    ) -> dict[str, Any] | None:
        """Block on several tokens (ids), messages and runs (``all`` or ``any``), or journal
        and return the snapshot.

        The group's deadline is a DATETIME waitpoint made once per journal key, as is each
        member's waitpoint besides a token's; how the group ended is decided by
        ``groups.group_outcome`` from times alone. A message is delivered only when the group
        closes with it.
        """
        ...

    async def sleep_until(
        self, deadline: Deadline, journal: JournalWrite, elapsed_ms: int = 0
    ) -> bool:
        """Park the run until ``deadline`` (a DATETIME waitpoint made once per journal key, its
        deadline resolved then); True once that time came."""
        ...

    async def describe_waitpoints(self, ids: list[str]) -> list[WaitTarget]:
        """What each waitpoint is (a token, a child run's, a sleep's, a group's deadline), for
        a run's timeline; ids of no waitpoint are left out."""
        ...

    # figures (``storage.stats``)
    async def stats(self) -> StatsSnapshot:
        """Runs by task and status, queue depths and ages, waiting tokens and approvals, and
        live workers, read from the database now (``engine.stats()``, ``GET /metrics``)."""
        ...

    # scheduling
    async def fire_due_timers(self, limit: int) -> int:
        """Time out due tokens, queue runs whose delay passed, expire runs past their ttl."""
        ...

    async def rescue_expired_leases(self, max_recoveries: int = 5) -> int:
        """Re-queue runs whose worker went silent; after ``max_recoveries`` they are CRASHED.

        Each run's lease epoch moves on: the silent attempt may still be alive (stalled, not
        dead), and once its run is back in the queue it must not finish, retry or release it.
        """
        ...

    async def next_timer_ms(self) -> int | None: ...

    async def timer_outlook(self, task_ids: list[str]) -> TimerOutlook:
        """In one read, whether a timer turn of a worker serving ``task_ids`` has anything to
        fire or rescue now, and when the next deadline falls: most turns (a commit woke the
        loop) find nothing and go back to sleep after this read alone."""
        ...

    async def has_due_runs(
        self, task_ids: list[str], versions: Mapping[str, str] | None = None
    ) -> bool:
        """Whether ``claim_runs`` with these tasks and versions would find a run now."""
        ...

    # rate limits
    async def rate_limit_wait(self, run_id: str) -> RateLimitWait | None:
        """Whether a QUEUED, due run waits for its queue's rate limit (its bucket holds less
        than one token now), and until when; None otherwise (``storage.rates``)."""
        ...

    def rate_limited_until(self, owner: str) -> int | None:
        """When a token comes into a rate limit bucket that ``owner``'s last ``claim_runs``
        here found or left empty (None: it met none), for a worker to claim again then."""
        ...

    # retention
    async def purge(self, older_than_ms: int, limit: int) -> PurgeCount:
        """Delete at most ``limit`` finished runs (with their journals, events, edges and the
        waitpoints they made for their own waits) and ``limit`` closed tokens (with their late
        completions) older than ``older_than_ms``, oldest first, in one transaction. Kept
        however old: a run whose parent or child has not finished or that an unfinished run
        waits on, a token an unfinished run waits on or made (``storage.retention``)."""
        ...

    async def purgeable(self, older_than_ms: int) -> PurgeCount:
        """How many runs and tokens ``purge`` would delete now, in all its batches."""
        ...

    # schedules (``storage.schedules``)
    async def create_schedule(self, new: NewSchedule) -> Schedule:
        """Insert an active schedule (its next tick from now on), or update the one holding
        its deduplication key."""
        ...

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule (``ScheduleNotFoundError``)."""
        ...

    async def list_schedules(self, task_id: str | None, page: int, per_page: int) -> SchedulePage:
        """Newest first, ``per_page`` a page; ``page`` counts from 1."""
        ...

    async def update_schedule(self, schedule_id: str, change: ScheduleChange) -> Schedule:
        """Change a schedule made at run time; a new expression or zone ticks from now on.
        A declared one is refused (``ValidationError``): its code says what it is."""
        ...

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule (its runs stay); a declared one comes back when a worker that
        declares it starts."""
        ...

    async def set_schedule_active(self, schedule_id: str, active: bool) -> Schedule:
        """Stop ticking, or tick again from now on (the ticks missed while inactive are not
        caught up on)."""
        ...

    async def declare_schedules(
        self, task_ids: list[str], declared: list[DeclaredSchedule]
    ) -> None:
        """Make the declared schedules of these tasks what their code says: ``declared``
        inserted or updated (a changed expression ticks from now on, a deactivated one stays
        inactive), and those of the other ``task_ids`` deleted."""
        ...

    async def fire_due_schedules(self, task_ids: list[str], limit: int) -> ScheduleFiring:
        """Make the runs of the due ticks of the active schedules of these tasks, at most
        ``limit`` schedules in one transaction: each tick once, however many workers fire
        at once (``storage.schedules``)."""
        ...

    def change_event(self) -> asyncio.Event:
        """Set at the next commit that changed something; take it before looking."""
        ...

    def follow_work(self, task_ids: Iterable[str], queued: WorkQueued) -> Callable[[], None]:
        """Call ``queued`` at every commit that may have made a run of these tasks claimable,
        from now until the returned function is called."""
        ...

    def run_event(self, run_id: str) -> asyncio.Event:
        """Set at the next commit that may have changed this run's status."""
        ...

    def deadline_event(self, before_ms: float) -> DeadlineEvent:
        """Set at the next commit that may have set a deadline earlier than ``before_ms``;
        its ``earliest`` tells the earliest deadline set while it waited."""
        ...

    async def wait_for_change(self, timeout: float) -> None:
        """Return at the next commit that may have made work (a hint) or after ``timeout``."""
        ...
