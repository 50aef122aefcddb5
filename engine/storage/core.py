"""What every storage operation stands on, written once for SQLite and PostgreSQL.

An operation is a generator of statements (``sql.py``) that a backend's driver runs in one
write transaction: ``SQLiteStorage`` on its group-commit writer, ``PostgresStorage`` in a
READ COMMITTED transaction that it retries on deadlocks. The pieces here are the steps many
operations share (the lease fence, journaling, blocking a run, re-queueing the runs a closed
waitpoint unblocks), composed with ``yield from``.

Concurrency (PostgreSQL; SQLite has one writer at a time) is handled by row locks taken in
the transaction, always in this order, so two transactions never wait on each other in a
cycle:

1. a run's row: by the fence (``FOR UPDATE``) of every write its lease holder makes, and by
   every change made from outside (cancel, rescue, re-queue), so a lease that moved on is seen;
2. the waitpoints a run blocks on (``FOR SHARE``), while a completion locks the rows of the
   runs it may re-queue (``FOR UPDATE``, ordered by id) before it looks at their other
   waitpoints, so a completion can never miss a run that is blocking at the same moment;
3. claims skip the rows others hold (``SKIP LOCKED``); lease renewals and rescues touch run
   rows in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from .. import metrics
from ..errors import LeaseLostError, RunNotFoundError, StorageError
from ..faults import crash_point
from ..ids import new_run_id
from ..models import TaskInfo, Token
from .base import DeadlineEvent, JournalWrite, NewRun, PageRequest, WorkQueued
from .records import RowLike, dump_json, page_slice, token_from_row
from .sql import Dialect, Op, Sql, alone, combined, count, many, rows

T = TypeVar("T")

RUN_ENDED = json.dumps(
    {
        "code": "WAITPOINT_CANCELLED",
        "message": "the run that asked for it ended first",
        "reason": "the run ended",
    }
)
"""What an approval left open by its run's end is cancelled with."""


WAIT_KINDS = {
    "MANUAL": "token",
    "DATETIME": "sleep",
    "APPROVAL": "approval",
    "MESSAGE": "message",
    "RUN": "child_runs",
}
"""How ``waitpoint_wait_duration_seconds`` names each kind of waitpoint a run waits on (a
group of them: ``group``)."""

PUBLIC_URL = "public_url"
"""The ``meta`` key of the address the API server of this database recorded at its start."""

_FOLLOWERS = itertools.count()
"""Numbers of ``follow_work`` registrations."""

_DEADLINE_GRACE_MS = 5_000
"""How long after its deadline a timer loop's event stays registered (its turn is over)."""


def lease_lost(run_id: str, epoch: int) -> LeaseLostError:
    """The refusal of a write whose attempt no longer holds the run (every fenced write)."""
    return LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")


_WAITING = (
    "UPDATE runs SET status = 'WAITING', updated_at = :now,"
    " executing_ms = executing_ms + :elapsed, recovery_count = 0 WHERE id = :run_id"
)


class StorageCore:
    """The operations' shared steps; a backend supplies the driver (``_transact``, ``_read``)."""

    q: Dialect
    _change: asyncio.Event
    _following = False
    """Whether other processes' commits reach this one now (its watcher is up): only then
    may it keep what they could change, such as the task registry."""
    _task_registry: list[TaskInfo] | None = None
    _serving: tuple[float, dict[str, list[str]]] | None = None
    """``serving()`` as last read, and when (``time.monotonic``)."""
    _registry_generation = 0
    _work_followers: dict[int, tuple[frozenset[str], WorkQueued]]
    _run_waiters: dict[str, asyncio.Event]
    _deadline_waiters: dict[DeadlineEvent, None]
    """The timer loops' events (in order; dropped once set, or long after their deadline)."""

    def _init_waiters(self) -> None:
        self._change = asyncio.Event()
        self._work_followers = {}
        self._run_waiters = {}
        self._deadline_waiters = {}

    # -- what a backend provides -----------------------------------------------------------

    def now_ms(self) -> int:
        raise NotImplementedError

    def _write(
        self, op: Callable[[int], Op[T]], *, notify: bool = True, control: bool = False
    ) -> Coroutine[Any, Any, T]:
        """Run ``op(now)`` in one write transaction and return its result once committed.

        ``now`` is the database's clock, read once per transaction. ``notify`` tells the
        other processes that work may have appeared; ``control`` (PostgreSQL) runs it on the
        small pool kept for claims, leases and timers, which never queue behind the writes of
        a hundred running attempts.

        A plain function that returns the backend's coroutine (``_transact``): with metrics
        off, every write costs what it did before, not one more coroutine; with them on, the
        transaction is timed here, for both backends (``engine.metrics``).
        """
        if metrics.on:
            return self._timed_write(op, notify, control)
        return self._transact(op, notify=notify, control=control)

    async def _timed_write(self, op: Callable[[int], Op[T]], notify: bool, control: bool) -> T:
        started = time.perf_counter()
        try:
            return await self._transact(op, notify=notify, control=control)
        finally:
            metrics.transaction(self.q.name, op, time.perf_counter() - started)

    async def _transact(
        self, op: Callable[[int], Op[T]], *, notify: bool = True, control: bool = False
    ) -> T:
        """The backend's ``_write``: the transaction itself."""
        raise NotImplementedError

    async def _read(self, sql: Sql, *, control: bool = False) -> list[RowLike]:
        raise NotImplementedError

    async def _read_op(self, op: Callable[[int], Op[T]]) -> T:
        """A read-only ``op`` driven one ``_read`` at a time (no transaction: each statement
        sees what committed before it; for what is shown, never for what is decided)."""
        steps = op(self.now_ms())
        reply: Any = None
        while True:
            try:
                sql = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = await self._read(sql)

    def _next_seq(self) -> int | None:
        """SQLite: the next number of this process's counter for ``seq`` columns."""
        return None

    def _watch_other_processes(self) -> None:
        """Start following other processes' commits, if not yet (SQLite: ``PRAGMA
        data_version``; PostgreSQL: ``LISTEN``)."""
        raise NotImplementedError

    def _watch_changes(self) -> None:
        """Follow the other processes' status changes too, from now on (PostgreSQL: they
        come on a channel of their own, which only processes that read them listen to;
        SQLite sees every commit anyway)."""
        self._watch_other_processes()

    # -- change notifications ----------------------------------------------------------------

    def change_event(self) -> asyncio.Event:
        """An event set at the next commit that changed something (here or in another process).

        Take it *before* looking, then wait on it: nothing committed in between is missed.
        Other processes' commits are followed from the first call on; callers poll as well,
        so a watcher that is down costs latency, never a run.
        """
        self._watch_changes()
        return self._change

    def follow_work(self, task_ids: Iterable[str], queued: WorkQueued) -> Callable[[], None]:
        """Call ``queued`` at every commit that may have made a run of these tasks claimable
        (SQLite: any commit, ``queued(None, None)``; PostgreSQL: one that queued a run of one
        of them, ``queued(task_id, number)``), until the returned function is called. Follow
        before the first claim: nothing committed after it is missed."""
        self._watch_other_processes()
        key = next(_FOLLOWERS)
        self._work_followers[key] = (frozenset(task_ids), queued)

        def unfollow() -> None:
            self._work_followers.pop(key, None)

        return unfollow

    def run_event(self, run_id: str) -> asyncio.Event:
        """An event set at the next commit that may have changed this run's status (SQLite:
        any commit; PostgreSQL: one that changed it, but for a claim): ``wait_for_run``."""
        self._watch_changes()
        event = self._run_waiters.get(run_id)
        if event is None:
            event = self._run_waiters[run_id] = asyncio.Event()
        return event

    def deadline_event(self, before_ms: float) -> DeadlineEvent:
        """An event set at the next commit that may have set a deadline earlier than
        ``before_ms`` (a token's timeout, a delayed run, a time to live); its ``earliest`` is
        the earliest deadline told while it was registered. The timer loop sleeps until its
        next deadline unless this wakes it."""
        self._watch_other_processes()
        stale = self.now_ms() - _DEADLINE_GRACE_MS
        for waiter in [w for w in self._deadline_waiters if w.before <= stale]:
            del self._deadline_waiters[waiter]  # its loop woke by then anyway
        event = DeadlineEvent(before_ms)
        self._deadline_waiters[event] = None
        return event

    async def wait_for_change(self, timeout: float) -> None:
        event = self.change_event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _notify(self) -> None:
        """Wake every waiter of this process: something may have changed, whatever it was."""
        self._changed()
        self._work_queued(None)
        self._deadline_set(None)
        self._run_changed(None)

    def _changed(self) -> None:
        """Wake the waiters of ``change_event``."""
        event, self._change = self._change, asyncio.Event()
        event.set()

    def _work_queued(self, task_id: str | None, number: int | None = None) -> None:
        """Tell the followers of work of ``task_id`` (None: of every task) that a run of it,
        ``number`` (None: unknown), was queued."""
        for tasks, queued in list(self._work_followers.values()):
            if task_id is None or task_id in tasks:
                queued(task_id, number)

    def _run_changed(self, run_id: str | None) -> None:
        """Wake the waiters of this run (None: of every run)."""
        if not self._run_waiters:
            return
        if run_id is None:
            waiters, self._run_waiters = self._run_waiters, {}
            for event in waiters.values():
                event.set()
        elif (waiter := self._run_waiters.pop(run_id, None)) is not None:
            waiter.set()

    def _deadline_set(self, at_ms: int | None) -> None:
        """Tell the timer loops a deadline was set at ``at_ms`` (None: perhaps any): those
        sleeping to a later one wake."""
        if not self._deadline_waiters:
            return
        if at_ms is None:  # every waiter learns the most it could: it is done
            waiters, self._deadline_waiters = self._deadline_waiters, {}
            for event in waiters:
                event.told(-math.inf)
            return
        for event in list(self._deadline_waiters):
            if event.told(at_ms) and event.before != math.inf:
                del self._deadline_waiters[event]

    def _forget_task_registry(self) -> None:
        """A task was registered (here or elsewhere), or changes may have been missed."""
        self._task_registry = None
        self._serving = None
        self._registry_generation += 1

    # -- the public URL ----------------------------------------------------------------------

    async def record_public_url(self, url: str) -> None:
        """Record ``url`` as the address of this database's API server (``waitpoint dev``
        and ``serve`` do at start): processes not configured with a public URL make their
        callback URLs and approval links on it."""

        def op(now: int) -> Op[None]:
            yield alone(
                count(
                    "INSERT INTO meta (key, value) VALUES (:key, :url)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key=PUBLIC_URL,
                    url=url,
                )
            )

        await self._write(op, notify=False)

    async def load_public_url(self) -> str | None:
        """The address the API server recorded, read again at each call; None while none did."""
        found = await self._read(rows("SELECT value FROM meta WHERE key = :key", key=PUBLIC_URL))
        return str(found[0]["value"]) if found else None

    # -- shared steps ----------------------------------------------------------------------

    def _run_row(self, run_id: str, columns: str) -> Op[RowLike]:
        """The run's ``columns``, its row locked (PostgreSQL) as every change made from
        outside the run's lease locks it first (``RunNotFoundError`` for an unknown id)."""
        found = yield rows(
            f"SELECT {columns} FROM runs WHERE id = :id{self.q.for_update}", id=run_id
        )
        if not found:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        row: RowLike = found[0]
        return row

    def _fence(self, run_id: str, epoch: int) -> Op[int]:
        """Refuse the write unless this epoch still holds the run; returns the run's depth."""
        found = yield rows(
            f"SELECT status, lease_epoch, depth FROM runs WHERE id = :id{self.q.for_update}",
            id=run_id,
        )
        row = found[0] if found else None
        if row is None or row["status"] != "EXECUTING" or row["lease_epoch"] != epoch:
            raise lease_lost(run_id, epoch)
        return int(row["depth"])

    def _journal(self, write: JournalWrite, value: Any, now: int) -> Op[None]:
        crash_point("journal.before_commit")
        yield self._journal_entry(write, value, now)

    def _journal_entry(
        self,
        write: JournalWrite,
        value: Any,
        now: int,
        *,
        where: str | None = None,
        returning: str = "",
    ) -> Sql:
        """The INSERT of a journal entry; with ``where`` (a FROM clause: ``self._fenced``, or a
        ``WITH`` item) only if that finds a row: fenced, the fence costs no statement of its
        own (it inserted nothing when the lease moved on)."""
        columns = (
            "run_id, key, attempt, position, is_error, value, duration_ms,"
            f" created_at{self._seq_column}"
        )
        values = (
            ":run_id, :key, :attempt, :position, :is_error, :value, :duration_ms,"
            f" :now{self._seq_value}"
        )
        source = f"VALUES ({values})"
        if where:  # typed: a SELECT's parameters take no type from the columns they fill
            typed = (
                "CAST(:run_id AS text), CAST(:key AS text), CAST(:attempt AS integer),"
                " CAST(:position AS integer), CAST(:is_error AS boolean), CAST(:value AS text),"
                " CAST(:duration_ms AS bigint), CAST(:now AS bigint)"
                + (", CAST(:seq AS bigint)" if self.q.has_seq else "")
            )
            source = f"SELECT {typed} FROM {where}"
        return count(
            f"INSERT INTO journal ({columns}) {source}{returning}",
            run_id=write.run_id,
            key=write.key,
            attempt=write.attempt,
            position=write.position,
            is_error=write.is_error,
            value=dump_json(value, f"the result of {write.key}"),
            duration_ms=write.duration_ms,
            now=now,
            seq=self._next_seq(),
            epoch=write.epoch,
        )

    @property
    def _fenced(self) -> str:
        """A FROM clause that finds the run only while ``:epoch`` holds it, and locks it
        (``_fence`` in a statement that writes)."""
        return (
            "runs WHERE id = :run_id AND status = 'EXECUTING' AND lease_epoch = :epoch"
            + self.q.for_update
        )

    @property
    def _seq_column(self) -> str:
        return ", seq" if self.q.has_seq else ""

    @property
    def _seq_value(self) -> str:
        return ", :seq" if self.q.has_seq else ""

    def _wait(
        self, row: RowLike, journal: JournalWrite, elapsed_ms: int, now: int
    ) -> Op[Token | None]:
        """Journal the closed waitpoint in ``row`` and return it, or block the run on it."""
        if row["status"] == "WAITING":  # the common case: no Token needed
            yield from self._block(journal, {row["id"]: "all"}, elapsed_ms, now)
            return None
        waitpoint = token_from_row(row)
        value = waitpoint.model_dump(mode="json", by_alias=True)
        kind = WAIT_KINDS.get(row["kind"], str(row["kind"]).lower())
        yield from self._journal_and_unblock(journal, value, [waitpoint.id], now, kind)
        return waitpoint

    def _journal_and_unblock(
        self, journal: JournalWrite, value: Any, waitpoint_ids: list[str], now: int, kind: str
    ) -> Op[None]:
        """A wait's outcome journaled, and the run's edges to its waitpoints gone.

        With metrics on, the edges' deletion returns when they were made: how long the run
        was parked on this wait of ``kind`` (``waited``); none when it never parked."""
        timed = metrics.on
        if not self.q.writes_in_with:
            yield from self._journal(journal, value, now)
            yield from self._unblocked(journal.run_id, waitpoint_ids, kind, now)
            return
        crash_point("journal.before_commit")
        parts = {
            "entry": self._journal_entry(journal, value, now),
            "gone": self._unblock(journal.run_id, waitpoint_ids, returning=timed),
        }
        if not timed:
            yield combined(parts, "SELECT 1", "count")
            return
        found = yield combined(parts, "SELECT min(created_at) AS parked FROM gone")
        self._waited(kind, found[0]["parked"] if found else None, now)

    def _unblocked(self, run_id: str, waitpoint_ids: list[str], kind: str, now: int) -> Op[None]:
        """``_unblock`` as a statement of its own (SQLite); with metrics on, the wait of
        ``kind`` recorded from when the deleted edges were made."""
        if not metrics.on:
            yield self._unblock(run_id, waitpoint_ids)
            return
        gone = yield self._unblock(run_id, waitpoint_ids, returning=True)
        self._waited(kind, min((r["created_at"] for r in gone), default=None), now)

    @staticmethod
    def _waited(kind: str, parked_ms: Any, now: int) -> None:
        """Record a wait that ended now for a run parked since ``parked_ms`` (None: it never
        parked, it found its waitpoints closed). Recorded in the transaction, before the
        commit: a transaction run again (a PostgreSQL deadlock, a SQLite batch that failed
        as a whole) records its wait again, which a histogram of durations bears."""
        if parked_ms is not None:
            metrics.waited(kind, (now - int(parked_ms)) / 1000)

    @property
    def _timed_out_data(self) -> str:
        """The data of a token that timed out, from its row."""
        q = self.q
        return q.json_object(
            "'code', 'TRIGGER_WAITPOINT_TIMEOUT'",
            f"'message', 'Waitpoint timed out at ' || {q.iso_time('timeout_at')}",
        )

    def _time_out(self, where: str, returning: str = "") -> str:
        """The statement a timer runs on due waitpoints: a token's deadline is a timeout, a
        sleep's deadline is its completion."""
        data = self._timed_out_data
        return (
            "UPDATE waitpoints SET completed_at = :now,"
            " status = CASE kind WHEN 'DATETIME' THEN 'COMPLETED' ELSE 'TIMED_OUT' END,"
            " completed_via = CASE kind WHEN 'DATETIME' THEN NULL ELSE 'timeout' END,"
            f" data = CASE kind WHEN 'DATETIME' THEN NULL ELSE {data} END"
            f" WHERE {where}{returning}"
        )

    def _closed_when_due(self, found: list[RowLike], now: int) -> Op[list[RowLike]]:
        """``found`` waitpoints, those past their deadline closed now as a timer would close
        them: what a wait sees never depends on whether a worker's timer got there first."""
        due = [
            r["id"]
            for r in found
            if r["status"] == "WAITING" and r["timeout_at"] is not None and r["timeout_at"] <= now
        ]
        if not due:
            return found
        closed_rows = yield rows(
            self._time_out(f"id {self.q.in_('ids')} AND status = 'WAITING'", " RETURNING *"),
            now=now,
            ids=due,
        )
        closed = {r["id"]: r for r in closed_rows}
        yield from self._requeue_blocked(list(closed), now)
        return [closed.get(r["id"], r) for r in found]

    def _block(
        self, journal: JournalWrite, modes: dict[str, str], elapsed_ms: int, now: int
    ) -> Op[None]:
        """Block the run on waitpoints (``{id: "all" | "any"}``): WAITING, lease kept (the
        attempt releases it once it unwound: ``release_run``)."""
        crash_point("suspend.before_commit")
        detail = {"on": sorted(modes)}
        if self.q.writes_in_with:
            edges = "unnest(:waitpoints::text[], :modes::text[]) AS e(w, m)"
            parts = self._blocking(journal, elapsed_ms, now, detail, edges)
            yield combined(
                parts, "SELECT 1", "count", waitpoints=list(modes), modes=list(modes.values())
            )
            return
        params = {"run_id": journal.run_id, "key": journal.key, "now": now}
        yield many(
            "INSERT INTO run_waits (run_id, waitpoint_id, journal_key, mode, created_at)"
            " VALUES (:run_id, :waitpoint_id, :key, :mode, :now) ON CONFLICT DO NOTHING",
            [params | {"waitpoint_id": wid, "mode": mode} for wid, mode in modes.items()],
        )
        yield count(_WAITING, elapsed=elapsed_ms, **params)
        yield from self._event([journal.run_id], "waiting", now, detail)

    def _blocking(
        self,
        journal: JournalWrite,
        elapsed_ms: int,
        now: int,
        detail: dict[str, Any],
        edges: str,
        only_if: str = "TRUE",
    ) -> dict[str, Sql]:
        """``_block`` as ``WITH`` items (``writes_in_with``): the edges ``edges`` gives (a
        FROM item of waitpoint ids ``w`` and modes ``m``), the run WAITING and its event,
        if ``only_if``."""
        params = {"run_id": journal.run_id, "key": journal.key, "now": now}
        return {
            "edges": count(
                "INSERT INTO run_waits (run_id, waitpoint_id, journal_key, mode, created_at)"
                f" SELECT :run_id, e.w, :key, e.m, :now FROM {edges}"
                " ON CONFLICT DO NOTHING",
                **params,
            ),
            "parked": count(
                f"{_WAITING} AND {only_if} RETURNING id, attempt_count",
                elapsed=elapsed_ms,
                **params,
            ),
            "waiting": self._event_of("parked", "waiting", now, detail),
        }

    def _unblock(self, run_id: str, waitpoint_ids: list[str], *, returning: bool = False) -> Sql:
        """The DELETE of the run's edges to these waitpoints (``returning``: their
        ``created_at``, when the run parked on them)."""
        text = f"DELETE FROM run_waits WHERE run_id = :run_id AND waitpoint_id {self.q.in_('ids')}"
        if returning:
            return rows(f"{text} RETURNING created_at", run_id=run_id, ids=waitpoint_ids)
        return count(text, run_id=run_id, ids=waitpoint_ids)

    def _fenced_waitpoints(
        self, journal: JournalWrite, ids: Sequence[str], kind: str
    ) -> Op[list[RowLike]]:
        """``_fence`` and ``_lock_waitpoints`` in one statement: the waitpoints' rows, found
        only while this epoch holds the run (none found: the two apart say which failed)."""
        found: list[RowLike] = yield self._fenced_waitpoints_of(journal, ids, kind)
        if found:
            return found
        yield from self._fence(journal.run_id, journal.epoch)
        return (yield from self._lock_waitpoints(ids, kind))

    def _fenced_waitpoints_of(self, journal: JournalWrite, ids: Sequence[str], kind: str) -> Sql:
        """The SELECT of ``_fenced_waitpoints`` (also a ``WITH`` item of a longer statement)."""
        q = self.q
        return rows(
            f"SELECT w.* FROM runs r JOIN waitpoints w ON w.id {q.in_('ids')}"
            f" AND {q.unindexed('w.kind')} = :kind WHERE r.id = :run_id"
            " AND r.status = 'EXECUTING' AND r.lease_epoch = :epoch"
            f" ORDER BY w.id{q.locking('r', 'w')}",
            ids=list(ids),
            kind=kind,
            run_id=journal.run_id,
            epoch=journal.epoch,
        )

    def _lock_waitpoints(self, ids: Sequence[str], kind: str) -> Op[list[RowLike]]:
        """The waitpoints' rows, share-locked: a completion of one waits for this transaction."""
        found: list[RowLike] = yield rows(
            f"SELECT * FROM waitpoints WHERE id {self.q.in_('ids')}"
            f" AND {self.q.unindexed('kind')} = :kind ORDER BY id{self.q.for_share}",
            ids=list(ids),
            kind=kind,
        )
        return found

    def _insert_run(
        self, new: NewRun, now: int, parent_key: str | None = None, depth: int = 0
    ) -> Op[RowLike]:
        """Insert a QUEUED (or DELAYED) run; a child carries its parent and the parent's key."""
        inserted = yield self._new_run(new, now, parent_key, depth)
        if not inserted:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise StorageError("the database returned no row for a new run")
        row: RowLike = inserted[0]
        if not self.q.writes_in_with:
            yield from self._event([row["id"]], "created", now, _created_detail(new))
        return row

    def _new_run(self, new: NewRun, now: int, parent_key: str | None = None, depth: int = 0) -> Sql:
        """The INSERT of a new run, returning its row; where a statement can write twice
        (``writes_in_with``), its ``created`` event too (``_insert_run`` adds it elsewhere)."""
        delayed = new.delayed_until_ms is not None and new.delayed_until_ms > now
        start = new.delayed_until_ms if delayed and new.delayed_until_ms else now
        insert = (
            "INSERT INTO runs (id, task_id, status, payload, tags, idempotency_key,"
            " idempotency_key_expires_at, max_attempts, available_at, delayed_until, ttl,"
            " expires_at, metadata, max_duration_ms, parent_run_id, parent_key, depth,"
            " queue, concurrency_key, origin_run_id, origin, version, priority, rate_limit_key,"
            " trace_context, created_at, updated_at)"
            f" VALUES (:id, :task_id, :status, :payload, {self.q.jsonb('tags')}, :key,"
            " :key_expires, :max_attempts, :start, :delayed_until, :ttl, :expires_at,"
            " :metadata, :max_duration_ms, :parent_run_id, :parent_key, :depth, :queue,"
            " :concurrency_key, :origin_run_id, :origin, :version, :priority, :rate_limit_key,"
            " :trace_context, :now, :now) RETURNING *"
        )
        inserted = rows(
            insert,
            id=new_run_id(),
            task_id=new.task_id,
            status="DELAYED" if delayed else "QUEUED",
            payload=dump_json(new.payload, "the payload"),
            tags=json.dumps(new.tags),
            key=new.idempotency_key,
            key_expires=new.idempotency_key_expires_ms,
            max_attempts=new.max_attempts,
            start=start,
            delayed_until=start if delayed else None,
            ttl=new.ttl,
            expires_at=None if new.ttl_ms is None else start + new.ttl_ms,
            metadata=None if new.metadata is None else dump_json(new.metadata, "the metadata"),
            max_duration_ms=new.max_duration_ms,
            parent_run_id=new.parent_run_id,
            parent_key=parent_key,
            depth=depth,
            queue=new.queue or new.task_id,
            concurrency_key=new.concurrency_key,
            origin_run_id=new.origin_run_id,
            origin=new.origin,
            version=new.version,
            priority=new.priority,
            rate_limit_key=new.rate_limit_key,
            trace_context=new.trace_context,
            now=now,
        )
        if not self.q.writes_in_with:
            return inserted
        created = self._event_of("inserted", "created", now, _created_detail(new))
        return combined({"inserted": inserted, "created": created}, "SELECT * FROM inserted")

    def _event(
        self, run_ids: list[str], kind: str, now: int, detail: dict[str, Any] | None = None
    ) -> Op[None]:
        """Record a lifecycle event of these runs (their timeline besides the journal)."""
        if not run_ids:
            return
        yield self._event_of(f"runs WHERE id {self.q.in_('ids')}", kind, now, detail, ids=run_ids)

    def _event_of(
        self,
        source: str,
        kind: str,
        now: int,
        detail: dict[str, Any] | None = None,
        **params: Any,
    ) -> Sql:
        """The INSERT of an event of the runs ``source`` gives (``runs WHERE ...``, or a
        ``WITH`` item returning runs' ``id`` and ``attempt_count``)."""
        return count(
            f"INSERT INTO run_events (run_id, at, kind, attempt, detail{self._seq_column})"
            f" SELECT id, :now, :event_kind, attempt_count, :event_detail{self._seq_value}"
            f" FROM {source}",
            now=now,
            event_kind=kind,
            event_detail=None if detail is None else json.dumps(detail),
            seq=self._next_seq(),
            **params,
        )

    def _runs_finished(
        self, run_ids: list[str], now: int, event: str, detail: dict[str, Any] | None = None
    ) -> Op[None]:
        """Runs reached a final status: the ``event`` that ended them goes on their timeline,
        they wait on nothing, and their parents may go on."""
        if not run_ids:
            return
        q = self.q
        ended = self._event_of(f"runs WHERE id {q.in_('ids')}", event, now, detail, ids=run_ids)
        gone = count(f"DELETE FROM run_waits WHERE run_id {q.in_('ids')}", ids=run_ids)
        result = q.json_object(
            "'runId', r.id",
            "'status', r.status",
            f"'output', {q.as_json('r.output')}",
            f"'error', {q.as_json('r.error')}",
        )
        close = rows(
            f"UPDATE waitpoints SET status = 'COMPLETED', completed_at = :now,"
            f" data = (SELECT {result} FROM runs r WHERE r.id = waitpoints.child_run_id)"
            f" WHERE kind = 'RUN' AND status = 'WAITING' AND child_run_id {q.in_('ids')}"
            " RETURNING id",
            now=now,
            ids=run_ids,
        )
        # an approval the run asked for and never saw decided asks no one any more: no
        # reminders, votes refused (the partial index of waitpoints made by runs serves it)
        dropped = count(
            "UPDATE waitpoints SET status = 'CANCELLED', completed_at = :now, data = :ended_with"
            f" WHERE created_by_run {q.in_('ids')} AND created_by_key IS NOT NULL"
            " AND kind = 'APPROVAL' AND status = 'WAITING'",
            now=now,
            ids=run_ids,
            ended_with=RUN_ENDED,
        )
        if q.writes_in_with:  # four independent writes, one statement
            parts = {"ended": ended, "gone": gone, "dropped": dropped, "closed": close}
            closed = yield combined(parts, "SELECT id FROM closed")
        else:
            yield ended
            yield gone
            yield dropped
            closed = yield close
        if closed:
            yield from self._requeue_blocked([r["id"] for r in closed], now)

    def _requeue_blocked(self, waitpoint_ids: Iterable[str], now: int) -> Op[None]:
        """Re-queue the runs these closed waitpoints unblock: a run goes back to the queue when
        one of its 'any' waitpoints closed, or when none of its 'all' waitpoints is still
        WAITING (a group's timer is an 'any' edge beside 'all' tokens)."""
        ids = list(waitpoint_ids)
        lock, requeue = self._requeue_statements()
        locked: list[RowLike] = []
        if lock is not None:
            locked = yield rows(lock, ids=ids)
            if not locked:
                return
        yield count(requeue, now=now, ids=ids, runs=[r["id"] for r in locked])

    def _requeue_statements(self) -> tuple[str | None, str]:
        """``_requeue_blocked``'s statements: the lock of the blocked runs (PostgreSQL; SQLite
        has one writer) and, in a statement of its own that sees what committed while it
        waited for those locks, their re-queue (``:ids`` the closed waitpoints, ``:runs``
        the runs locked)."""
        q = self.q
        lock = None
        if q.row_locks:
            # lock the runs first (see the module docstring); OFFSET 0 keeps the edge lookup
            # a subquery of its own: joined, PostgreSQL scanned every waiting run per completion
            lock = (
                "SELECT id FROM runs WHERE status = 'WAITING' AND id IN"
                f" (SELECT run_id FROM run_waits WHERE waitpoint_id {q.in_('ids')} OFFSET 0)"
                " ORDER BY id FOR UPDATE"
            )
            blocked = f"id {q.in_('runs')}"
        else:
            blocked = f"id IN (SELECT run_id FROM run_waits WHERE waitpoint_id {q.in_('ids')})"
        # unindexed: SQLite stays on the (run_id, ...) key for the 'any' probe (through the
        # waitpoint index it would cost closed x blocked runs)
        any_edge = q.unindexed("rw.waitpoint_id")
        requeue = (
            "UPDATE runs SET status = 'QUEUED', available_at = :now, updated_at = :now"
            f" WHERE status = 'WAITING' AND {blocked}"
            " AND (EXISTS (SELECT 1 FROM run_waits rw"
            "              WHERE rw.run_id = runs.id AND rw.mode = 'any'"
            f"               AND {any_edge} {q.in_('ids')})"
            "      OR NOT EXISTS (SELECT 1 FROM run_waits rw"
            "                     JOIN waitpoints w ON w.id = rw.waitpoint_id"
            "                     WHERE rw.run_id = runs.id AND rw.mode = 'all'"
            "                       AND w.status = 'WAITING'))"
        )
        return lock, requeue

    def _existing_by_key(self, table: str, key_where: str, now: int, **params: Any) -> Op[Any]:
        """The row holding a live idempotency key (``key_where`` finds it, locked), or None;
        an expired key is let go, so a new row can take it."""
        found = yield rows(f"SELECT * FROM {table} WHERE {key_where}{self.q.for_update}", **params)
        if not found:
            return None
        row = found[0]
        expires = row["idempotency_key_expires_at"]
        if expires is None or expires > now:
            return row
        yield count(f"UPDATE {table} SET idempotency_key = NULL WHERE id = :id", id=row["id"])
        return None

    # -- reads -----------------------------------------------------------------------------

    async def _any_due(self, table: str, where: str) -> bool:
        """Whether a row of ``table`` is due by ``where`` (``:now`` is the clock): a cheap
        read that spares the timers and the rescue a write transaction when nothing is."""
        sql = rows(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", now=self.now_ms())
        return bool(await self._read(sql, control=True))

    def _filters(
        self,
        statuses: list[str],
        tags: list[str],
        created_from_ms: int | None,
        created_to_ms: int | None,
    ) -> tuple[list[str], dict[str, Any]]:
        """The WHERE terms (and their parameters) that runs and tokens are listed by."""
        where: list[str] = []
        params: dict[str, Any] = {}
        if statuses:
            where.append(f"status {self.q.in_('statuses')}")
            params["statuses"] = statuses
        if tags:
            where.append(self.q.tags_overlap("tags"))
            params["tags"] = tags
        if created_from_ms is not None:
            where.append("created_at >= :created_from")
            params["created_from"] = created_from_ms
        if created_to_ms is not None:
            where.append("created_at <= :created_to")
            params["created_to"] = created_to_ms
        return where, params

    async def _page(
        self, table: str, where: list[str], params: dict[str, Any], page: PageRequest
    ) -> tuple[list[RowLike], str | None, str | None]:
        """One page, newest first, with the cursors of the older and the newer pages."""
        params = {**params, "limit": page.limit + 1}
        if page.before is not None:
            clause = " AND ".join([*where, "id > :before"])
            found = await self._read(
                rows(
                    f"SELECT * FROM {table} WHERE {clause} ORDER BY id ASC LIMIT :limit",
                    **params,
                    before=page.before,
                )
            )
            return page_slice(found, page.limit, before=True, after=False)
        if page.after is not None:
            where = [*where, "id < :after"]
            params["after"] = page.after
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        found = await self._read(
            rows(f"SELECT * FROM {table} {clause} ORDER BY id DESC LIMIT :limit", **params)
        )
        return page_slice(found, page.limit, before=False, after=page.after is not None)


def _created_detail(new: NewRun) -> dict[str, Any] | None:
    """The detail of a run's ``created`` event: its parent, or the run it replays or forks."""
    if new.parent_run_id:
        return {"parent": new.parent_run_id}
    if new.origin_run_id:
        return {new.origin or "origin": new.origin_run_id}
    return None
