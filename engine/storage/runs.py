"""Operations on runs: trigger, claim with leases, journal, finish, retry, cancel, pause,
rescue."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import from_ms, from_ms_or_none
from ..errors import RunNotFoundError, RunStateError, TaskNotFoundError
from ..faults import crash_point
from ..models import (
    ClaimedRun,
    JournalEntry,
    Page,
    Run,
    RunError,
    RunEvent,
    RunStatus,
    TaskInfo,
    TaskState,
    Token,
)
from .base import JournalWrite, NewRun, NewWorker, PageRequest, RunFilter
from .core import lease_lost
from .rates import Buckets, Rates, rates_of
from .records import (
    RowLike,
    claimed_runs,
    dump_json,
    journal_from_row,
    load_json,
    run_from_row,
    token_from_row,
)
from .sql import FINAL, Op, Sql, alone, combined, count, many, rows
from .triggers import Triggers
from .workers import Workers

_CLAIM_COLUMNS = (
    "id, task_id, payload, attempt_count, lease_epoch, max_attempts, executing_ms,"
    " max_duration_ms, metadata, attempt_base, created_at, trace_context, trace_attempts"
)
MAX_TRACED_ATTEMPTS = 100
"""Attempts a run's span links to at most (the latest): a run resumed ten thousand times."""
_CLAIM_COLUMNS_OF_RUNS = ", ".join(f"runs.{c.strip()}" for c in _CLAIM_COLUMNS.split(","))


def rank(alias: str = "") -> str:
    """A queued run's place in the claim order: its due time, ``priority`` seconds earlier
    (Trigger.dev's meaning). Claims order by it, then by id, spelled exactly as the index
    ``runs_queue_rank`` is (migration 8 on SQLite, 10 on PostgreSQL), so that they walk it."""
    return f"{alias}available_at - {alias}priority * 1000"


@dataclass(frozen=True)
class Served:
    """The versions a claimer serves its tasks at, in SQL: which runs it may take (those that
    recorded no version, or the one it serves for their task), and what its claim records on
    a run that recorded none.

    The text depends only on the claimer's tasks and versions, so each worker's claim stays
    one statement text (prepared once on PostgreSQL). The common cases take one parameter
    or none: no version at all (only runs that recorded none), or one version for every
    task; only a worker whose tasks have different versions spells them out
    (``CASE task_id WHEN ... END``).
    """

    params: dict[str, str]
    """``version`` (one for every task), or ``version_task_<i>`` and ``version_<i>`` pairs
    (each versioned task; the others serve none), or nothing (no version at all)."""

    @classmethod
    def of(cls, task_ids: Sequence[str], versions: Mapping[str, str] | None) -> Served:
        served = {t: versions[t] for t in task_ids if versions and t in versions}
        if not served:
            return cls({})
        if len(set(served.values())) == 1 and len(served) == len(task_ids):
            return cls({"version": next(iter(served.values()))})
        params: dict[str, str] = {}
        for i, (task_id, version) in enumerate(sorted(served.items())):
            params |= {f"version_task_{i}": task_id, f"version_{i}": version}
        return cls(params)

    def version(self, alias: str = "") -> str | None:
        """The version served for a run's task (``alias``: of ``runs``); None: none at all."""
        if not self.params:
            return None
        if "version" in self.params:
            return ":version"
        whens = "".join(
            f" WHEN :version_task_{i} THEN :version_{i}" for i in range(len(self.params) // 2)
        )
        return f"CASE {alias}task_id{whens} END"

    def claimable(self, alias: str = "") -> str:
        """The runs this claimer may take, by the version they recorded."""
        served = self.version(alias)
        if served is None:
            return f"{alias}version IS NULL"
        return f"({alias}version IS NULL OR {alias}version = {served})"

    @property
    def recorded(self) -> str:
        """A claim's ``SET`` item: a run keeps the version it recorded, or records the one it
        is claimed at (by its first claim by a versioned worker); nothing for no version."""
        served = self.version()
        return "" if served is None else f" version = coalesce(version, {served}),"


class Runs(Triggers, Workers, Rates):
    """Runs, their leases and journals, and the task registry (and the workers serving it)."""

    _channel = ""
    """PostgreSQL: the channel the rows' triggers notify on (``notify_change``), for the
    changes no trigger sees (``_tell``); SQLite has none: its commits wake this process
    (``_write``), and ``PRAGMA data_version`` the others."""

    async def register_tasks(self, tasks: list[TaskInfo], worker: NewWorker | None = None) -> None:
        def op(now: int) -> Op[None]:
            yield many(
                "INSERT INTO tasks (id, payload_schema, queue, concurrency_limit, rate_limit,"
                " rate_period_ms, updated_at) VALUES (:id, :schema, :queue, :limit, :rate,"
                " :period, :now)"
                " ON CONFLICT (id) DO UPDATE SET payload_schema = excluded.payload_schema,"
                " queue = excluded.queue, concurrency_limit = excluded.concurrency_limit,"
                " rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms,"
                " updated_at = excluded.updated_at",
                [
                    {
                        "id": t.id,
                        "schema": None if t.payload_schema is None else dump_json(t.payload_schema),
                        "queue": t.queue,
                        "limit": t.concurrency_limit,
                        "rate": t.rate_limit,
                        "period": t.rate_period_ms,
                        "now": now,
                    }
                    for t in sorted(tasks, key=lambda t: t.id)  # one lock order for all workers
                ],
            )
            if worker is not None:
                yield from self._record_worker(worker, now)

        await self._write(op, notify=False)
        self._forget_task_registry()

    async def list_tasks(self, *, fresh: bool = False) -> list[TaskInfo]:
        """The task registry. Kept while this process follows the others' commits (a
        trigger of a task this process did not import reads it), and dropped whenever a task
        is registered anywhere; ``fresh`` reads it from the database all the same."""
        if self.q.remote:  # worth following the other processes for (SQLite would poll the
            self._watch_other_processes()  # file 100 times a second to save local reads)
        if self._task_registry is not None and not fresh:
            return list(self._task_registry)
        generation = self._registry_generation
        found = await self._read(
            rows(
                "SELECT id, payload_schema, queue, concurrency_limit, rate_limit, rate_period_ms"
                " FROM tasks ORDER BY id"
            )
        )
        tasks = [
            TaskInfo(
                r["id"],
                load_json(r["payload_schema"]),
                r["queue"],
                r["concurrency_limit"],
                r["rate_limit"],
                r["rate_period_ms"],
            )
            for r in found
        ]
        if self._following and generation == self._registry_generation:
            self._task_registry = tasks
        return list(tasks)

    async def pause_task(self, task_id: str) -> TaskState:
        """Keep every worker from claiming runs of the task until ``resume_task``; a paused
        task keeps the moment it was first paused. Unknown task: ``TaskNotFoundError``."""

        def op(now: int) -> Op[TaskState]:
            found = yield rows(
                "UPDATE tasks SET paused_at = coalesce(paused_at, :now) WHERE id = :id"
                " RETURNING paused_at",
                now=now,
                id=task_id,
            )
            if not found:
                raise (yield from self._unknown_task(task_id))
            return TaskState(task_id=task_id, paused_at=from_ms_or_none(found[0]["paused_at"]))

        return await self._write(op)

    async def resume_task(self, task_id: str) -> TaskState:
        """Let workers claim runs of the task again, at once (a task not paused is left as it
        is). Unknown task: ``TaskNotFoundError``."""

        def op(now: int) -> Op[TaskState]:
            found = yield rows(
                f"SELECT paused_at FROM tasks WHERE id = :id{self.q.for_update}", id=task_id
            )
            if not found:
                raise (yield from self._unknown_task(task_id))
            if found[0]["paused_at"] is not None:
                yield count("UPDATE tasks SET paused_at = NULL WHERE id = :id", id=task_id)
                # the runs it held are QUEUED already: no status changes, no trigger tells the
                # workers; an unnumbered 'q:<task>' makes each worker of the task claim all
                # that is due (as after a poll), not just the runs of its turn
                yield from self._tell(":payload", payload=f"q:{task_id}")
            return TaskState(task_id=task_id)

        return await self._write(op)

    async def paused_tasks(self) -> list[TaskState]:
        """The tasks paused now, by id."""
        found = await self._read(
            rows("SELECT id, paused_at FROM tasks WHERE paused_at IS NOT NULL ORDER BY id")
        )
        return [TaskState(task_id=r["id"], paused_at=from_ms(r["paused_at"])) for r in found]

    def _unknown_task(self, task_id: str) -> Op[TaskNotFoundError]:
        """The error for a task no worker registered, naming the ones registered."""
        known = yield rows("SELECT id FROM tasks ORDER BY id")
        return TaskNotFoundError(task_id, [r["id"] for r in known])

    async def create_run(self, new: NewRun) -> Run:
        dump_json(new.payload, "the payload")  # refuse a bad payload before the transaction

        def op(now: int) -> Op[Run]:
            return (yield from self._trigger(new, now, whole=True))

        return await self._write(op)

    async def get_run(self, run_id: str) -> Run:
        found = await self._read(rows("SELECT * FROM runs WHERE id = :id", id=run_id))
        if not found:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        waits = await self._waiting_on([run_id])
        children = await self._read(
            rows("SELECT id FROM runs WHERE parent_run_id = :id ORDER BY id", id=run_id)
        )
        run = run_from_row(found[0], waits.get(run_id))
        return run.model_copy(update={"children": [row["id"] for row in children]})

    async def _waiting_on(self, run_ids: list[str]) -> dict[str, list[str]]:
        found = await self._read(
            rows(
                "SELECT rw.run_id, rw.waitpoint_id FROM run_waits rw"
                " JOIN waitpoints w ON w.id = rw.waitpoint_id"
                f" WHERE w.status = 'WAITING' AND rw.run_id {self.q.in_('ids')}"
                " ORDER BY rw.created_at, rw.waitpoint_id",
                ids=run_ids,
            )
        )
        waiting: dict[str, list[str]] = {}
        for row in found:
            waiting.setdefault(row["run_id"], []).append(row["waitpoint_id"])
        return waiting

    async def list_runs(self, filter: RunFilter, page: PageRequest) -> Page[Run]:
        where, params = self._filters(
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.task_id:
            where.append(f"task_id {self.q.in_('task_ids')}")
            params["task_ids"] = filter.task_id
        if filter.version is not None:
            where.append("version = :version")
            params["version"] = filter.version
        found, next_cursor, previous_cursor = await self._page("runs", where, params, page)
        waits = await self._waiting_on([r["id"] for r in found])
        runs = [run_from_row(r, waits.get(r["id"])) for r in found]
        return Page(data=runs, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def get_events(self, run_id: str) -> list[RunEvent]:
        found = await self._read(
            rows("SELECT * FROM run_events WHERE run_id = :id ORDER BY at, seq", id=run_id)
        )
        return [
            RunEvent(r["kind"], r["attempt"], r["at"], r["seq"], load_json(r["detail"]))
            for r in found
        ]

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        await self.get_run(run_id)  # RunNotFoundError for an unknown id
        found = await self._read(
            rows(
                f"SELECT * FROM journal WHERE run_id = :id ORDER BY {self.q.journal_order}",
                id=run_id,
            )
        )
        return [journal_from_row(r) for r in found]

    async def cancel_run(self, run_id: str) -> Run:
        def op(now: int) -> Op[None]:
            if not (yield rows("SELECT 1 FROM runs WHERE id = :id", id=run_id)):
                raise RunNotFoundError(f"no run with id {run_id!r}")
            canceled: list[str] = []
            pending = [run_id]
            while pending:  # the children a canceled run waits on are canceled too
                current = pending.pop()
                # runs canceled so far are CANCELED in this transaction, so a child still
                # awaited here is awaited by a run that goes on; if that run is canceled later
                # in this loop, the child is pushed again as one of its children
                if current != run_id and (yield from self._awaited(current)):
                    continue
                changed = yield count(
                    "UPDATE runs SET status = 'CANCELED', finished_at = :now, updated_at = :now,"
                    " lease_owner = NULL, lease_expires_at = NULL, lease_epoch = lease_epoch + 1"
                    f" WHERE id = :id AND status NOT IN {FINAL}",
                    now=now,
                    id=current,
                )
                if changed == 0:
                    continue
                canceled.append(current)
                children = yield rows(
                    "SELECT w.child_run_id FROM run_waits rw JOIN waitpoints w"
                    " ON w.id = rw.waitpoint_id WHERE rw.run_id = :id AND w.kind = 'RUN'"
                    " AND w.status = 'WAITING'",
                    id=current,
                )
                pending.extend(row["child_run_id"] for row in children)
            yield from self._runs_finished(canceled, now, "canceled")

        await self._write(op)
        return await self.get_run(run_id)

    async def migrate_run(self, run_id: str, version: str) -> Run:
        def op(now: int) -> Op[None]:
            run = yield from self._unfinished(run_id, "status, version", "migrated")
            status, was = RunStatus(run["status"]), run["version"]
            if was == version:
                return
            yield count(
                "UPDATE runs SET version = :version, updated_at = :now WHERE id = :id",
                version=version,
                now=now,
                id=run_id,
            )
            yield from self._event([run_id], "migrated", now, {"from": was, "to": version})
            if status is RunStatus.QUEUED:
                yield from self._announce_queued(run_id)

        await self._write(op)
        return await self.get_run(run_id)

    def _announce_queued(self, run_id: str) -> Op[None]:
        """PostgreSQL: tell the workers that this QUEUED run may be theirs now, as
        ``notify_change()`` tells them when a run becomes QUEUED (the same payload), for a
        change that set no status and so fired no trigger (a resume, a migration). SQLite's
        writer wakes this process's workers at the commit, and the others see the file
        change."""
        yield from self._tell(
            "'q' || (hashtext(id) & 2147483647) || ':' || task_id", "runs WHERE id = :id", id=run_id
        )

    def _awaited(self, run_id: str) -> Op[bool]:
        """Whether an unfinished run waits on this run (a WAITING RUN waitpoint on it).

        PostgreSQL: the run's row is locked first: a parent that starts waiting on it by its
        idempotency key locks that row too (``FOR UPDATE``), so its edge is either committed
        and seen by the query that follows (READ COMMITTED: a new snapshot per statement), or
        made after this transaction, when the run is already CANCELED and the waitpoint is
        made closed.
        """
        if self.q.row_locks:
            yield rows("SELECT 1 FROM runs WHERE id = :id FOR UPDATE", id=run_id)
        found = yield rows(
            "SELECT 1 FROM waitpoints w JOIN run_waits rw ON rw.waitpoint_id = w.id"
            " JOIN runs r ON r.id = rw.run_id"
            " WHERE w.child_run_id = :id AND w.kind = 'RUN' AND w.status = 'WAITING'"
            f" AND r.status NOT IN {FINAL} LIMIT 1",
            id=run_id,
        )
        return bool(found)

    def _lock_runs(self, where: str, **params: object) -> Op[None]:
        """PostgreSQL: lock the runs ``where`` selects, in id order (the lock order of many
        runs, see ``core.py``), before an UPDATE that would lock them in its scan's order."""
        if self.q.row_locks:
            yield rows(f"SELECT id FROM runs WHERE {where} ORDER BY id FOR UPDATE", **params)

    async def pause_run(self, run_id: str) -> Run:
        """Keep workers from claiming the run until ``resume_run``, with a ``paused`` event on
        its timeline (pausing a paused run changes nothing). An attempt executing now is not
        interrupted: the run is held once it parks, retries or is handed back. A WAITING run
        still takes its completions and goes back to the queue, where it stays."""

        def op(now: int) -> Op[None]:
            run = yield from self._unfinished(run_id, "status, paused_at", "paused")
            if run["paused_at"] is not None:
                return
            yield count(
                "UPDATE runs SET paused_at = :now, updated_at = :now WHERE id = :id",
                now=now,
                id=run_id,
            )
            yield from self._event([run_id], "paused", now)
            yield from self._tell_run_changed(run_id)  # readers elsewhere

        await self._write(op)
        return await self.get_run(run_id)

    async def resume_run(self, run_id: str) -> Run:
        """Let workers claim the run again, with a ``resumed`` event on its timeline (a run not
        paused is left as it is); a QUEUED run is claimed at once."""

        def op(now: int) -> Op[None]:
            run = yield from self._unfinished(run_id, "status, paused_at", "resumed")
            if run["paused_at"] is None:
                return
            yield count(
                "UPDATE runs SET paused_at = NULL, updated_at = :now WHERE id = :id",
                now=now,
                id=run_id,
            )
            yield from self._event([run_id], "resumed", now)
            yield from self._tell_run_changed(run_id)
            if run["status"] == RunStatus.QUEUED:
                yield from self._announce_queued(run_id)

        await self._write(op)
        return await self.get_run(run_id)

    def _unfinished(self, run_id: str, columns: str, doing: str) -> Op[RowLike]:
        """The run's ``columns``, locked (``RunNotFoundError``; ``RunStateError`` once it
        finished: a finished run is claimed by no one, so a pause or a version would hold
        nothing)."""
        row = yield from self._run_row(run_id, columns)
        status = RunStatus(row["status"])
        if status.is_terminal:
            raise RunStateError(
                f"run {run_id} already finished ({status.value}): only an unfinished run can"
                f" be {doing}"
            )
        return row

    def _tell(
        self, expression: str, source: str | None = None, *, changes: bool = False, **params: Any
    ) -> Op[None]:
        """PostgreSQL: notify the payload ``expression`` gives (SQL, over the rows of
        ``source`` if given) on a channel of the triggers' (the workers', or with ``changes``
        the readers' of status changes: migration 13), at commit, for a change they do not see
        (a resumed run queued again, a schedule's tick, a pause). SQLite: nothing to send."""
        if not self._channel:
            return
        where = f" FROM {source}" if source else ""
        notify = f"SELECT pg_notify(:channel, {expression}){where}"
        yield count(notify, channel=self._changes if changes else self._channel, **params)

    def _tell_run_changed(self, run_id: str) -> Op[None]:
        """Tell the readers of the run (``run_event``) of a change no trigger sees: pausing and
        resuming change no status."""
        yield from self._tell(":payload", changes=True, payload=f"r:{run_id}")

    @property
    def _changes(self) -> str:
        """The channel of runs' status changes and closed waitpoints (migration 13)."""
        return f"{self._channel}_changes"

    async def claim_runs(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        task_ids: list[str],
        versions: Mapping[str, str] | None = None,
    ) -> list[ClaimedRun]:
        served = Served.of(task_ids, versions)
        self._note_held(owner, None)
        if not self.q.remote:  # a local read spares the writer a transaction that finds nothing
            if not await self.has_due_runs(task_ids, versions):
                return []
        elif not await self._limited(task_ids):  # the usual claim: one statement
            return await self._write(
                lambda now: self._claim_in_one(owner, limit, lease_ms, task_ids, served, now),
                notify=False,
                control=True,
            )

        def op(now: int) -> Op[list[ClaimedRun]]:
            picked, buckets = yield from self._within_limits(task_ids, served, now, limit)
            self._note_held(owner, buckets)  # a retried transaction notes it again
            if not picked:
                return []
            if buckets.taken:
                yield from self._spend(buckets)
            claimed = yield self._leasing(
                owner,
                lease_ms,
                now,
                served,
                f"WHERE id {self.q.in_('ids')} RETURNING {_CLAIM_COLUMNS}",
                ids=picked,
            )
            if not claimed:
                return []
            ids = [r["id"] for r in claimed]
            yield from self._event(ids, "attempt_started", now, {"worker": owner})
            entries = yield rows(
                f"SELECT * FROM journal WHERE run_id {self.q.in_('ids')}"
                f" ORDER BY {self.q.journal_order}",
                ids=ids,
            )
            closed: dict[str, dict[str, Token]] = {}
            for row in (yield self._closed_tokens_of(ids)):
                closed.setdefault(row["blocked_run"], {})[row["id"]] = token_from_row(row)
            return claimed_runs(claimed, entries, closed)

        return await self._write(op, notify=False, control=True)

    async def _limited(self, task_ids: list[str]) -> bool:
        """Whether a concurrency or rate limit applies to one of these tasks (by the cached
        registry: a limit set since is seen once its notification came, a moment later)."""
        wanted = set(task_ids)
        return any(
            t.concurrency_limit is not None or t.rate_limit is not None
            for t in await self.list_tasks()
            if t.id in wanted
        )

    def _claim_in_one(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        task_ids: list[str],
        served: Served,
        now: int,
    ) -> Op[list[ClaimedRun]]:
        """PostgreSQL, no concurrency or rate limit: the claim as one statement (pick, lease,
        record the event, read the journals), the steps of ``claim_runs`` in writable CTEs."""
        picked = rows(
            f"SELECT id FROM runs WHERE {self._claimable(served)}"
            f" ORDER BY {rank()}, id LIMIT :limit{self.q.skip_locked()}",
            now=now,
            tasks=task_ids,
            limit=limit,
            **served.params,
        )
        leased = self._leasing(
            owner,
            lease_ms,
            now,
            served,
            f"FROM picked WHERE runs.id = picked.id RETURNING {_CLAIM_COLUMNS_OF_RUNS}",
        )
        started = self._event_of("claimed", "attempt_started", now, {"worker": owner})
        # and the tokens each run was parked on that closed since: its resumed wait journals
        # one without a statement that reads it again (the run's edge to it is still there;
        # the tags as their text, as a row of the table gives them)
        claimed = yield alone(
            combined(
                {"picked": picked, "claimed": leased, "started": started},
                "SELECT c.*, (SELECT json_agg(j ORDER BY j.seq) FROM journal j"
                " WHERE j.run_id = c.id)::text AS journal,"
                " (SELECT json_agg(to_jsonb(w) || jsonb_build_object('tags', w.tags::text))"
                " FROM run_waits rw JOIN waitpoints w"
                " ON w.id = rw.waitpoint_id WHERE rw.run_id = c.id AND w.kind = 'MANUAL'"
                " AND w.status <> 'WAITING')::text AS closed FROM claimed c",
            )
        )
        entries = [entry for row in claimed for entry in load_json(row["journal"]) or []]
        closed = {
            row["id"]: {w["id"]: token_from_row(w) for w in load_json(row["closed"]) or []}
            for row in claimed
        }
        return claimed_runs(claimed, entries, closed)

    def _closed_tokens_of(self, run_ids: list[str]) -> Sql:
        """The MANUAL waitpoints these runs are parked on that are closed now, each with the
        run it blocks (``blocked_run``): a resumed wait journals its token from the claim's
        copy instead of reading it again (a closed token changes no more; the edge stays
        until the wait journals it). ``_claim_in_one`` reads the same per run, as JSON."""
        q = self.q  # found through the runs' edges: SQLite's planner would walk every token
        return rows(
            "SELECT rw.run_id AS blocked_run, w.* FROM run_waits rw JOIN waitpoints w"
            f" ON w.id = rw.waitpoint_id WHERE rw.run_id {q.in_('ids')}"
            f" AND {q.unindexed('w.kind')} = 'MANUAL' AND {q.unindexed('w.status')} <> 'WAITING'",
            ids=run_ids,
        )

    def _claimable(self, served: Served, alias: str = "") -> str:
        """The runs a claim may take now (``:now``) among those of its tasks (``:tasks``) at
        the versions it serves (``served``'s parameters)."""
        r = alias
        return (  # the rank's bound (redundant: priority >= 0) bounds the walk of its index
            f"{r}status = 'QUEUED' AND {rank(r)} <= :now AND {r}available_at <= :now"
            f" AND ({r}lease_owner IS NULL OR {r}lease_expires_at <= :now)"
            f" AND {r}task_id {self.q.in_('tasks')}"
            f" AND ({r}expires_at IS NULL OR {r}expires_at > :now)"
            f" AND {served.claimable(r)} AND {self._unpaused(alias)}"
        )

    @staticmethod
    def _unpaused(alias: str = "") -> str:
        """Neither the run (of ``runs``, or of ``alias``) nor its task is paused: one lookup
        of the task by its key per candidate run."""
        r = alias or "runs."
        return (
            f"{r}paused_at IS NULL AND NOT EXISTS (SELECT 1 FROM tasks t"
            f" WHERE t.id = {r}task_id AND t.paused_at IS NOT NULL)"
        )

    def _leasing(
        self, owner: str, lease_ms: int, now: int, served: Served, rest: str, **params: Any
    ) -> Sql:
        """The UPDATE that gives claimed runs a new lease (and a version, at their first
        claim by a versioned worker); ``rest`` selects them and says what it returns."""
        return rows(
            f"UPDATE runs SET status = 'EXECUTING',{served.recorded} lease_owner = :owner,"
            " lease_epoch = lease_epoch + 1, lease_expires_at = :expires,"
            f" attempt_count = {self.q.greatest('attempt_count', '1')},"
            " started_at = coalesce(started_at, :now), updated_at = :now, expires_at = NULL"
            f" {rest}",
            owner=owner,
            expires=now + lease_ms,
            now=now,
            **served.params,
            **params,
        )

    def _within_limits(
        self, task_ids: list[str], served: Served, now: int, limit: int
    ) -> Op[tuple[list[str], Buckets]]:
        """Due runs to claim, first by rank (``rank``: priority, then age), that keep every
        queue within its concurrency limit and its rate limit; and the rate limit buckets,
        with the tokens the picked runs take (``Rates._spend`` writes them).

        Counted in the claim's own write transaction, so the limits hold however many worker
        processes share the database (PostgreSQL: candidates are locked with ``SKIP LOCKED``,
        so workers claiming at once take different runs instead of queueing behind each other,
        and a limited queue is counted, and its buckets read, under a transaction-scoped
        advisory lock of that queue: two workers cannot both see the last free slot or the
        last token). Only EXECUTING runs count: a waiting run holds no slot. A queue already
        at its limit, and a bucket with no token, are left out of the scan, so the runs
        queued behind them never hide the runs of other queues and keys.
        """
        q = self.q
        limits = yield rows(
            "SELECT coalesce(queue, id) AS queue, concurrency_limit, rate_limit, rate_period_ms"
            f" FROM tasks WHERE id {q.in_('tasks')}"
            " AND (concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)",
            tasks=task_ids,
        )
        caps: dict[str, int] = {}  # the strictest limit its tasks name, per queue
        for row in limits:
            queue, cap = row["queue"], row["concurrency_limit"]
            if cap is not None:
                caps[queue] = min(cap, caps.get(queue, cap))
        rates = rates_of(limits)
        if q.row_locks:
            for queue in sorted(set(caps) | set(rates)):  # one lock order for every worker
                yield rows(
                    "SELECT pg_advisory_xact_lock(hashtext('waitpoint-queue:' || :queue))",
                    queue=queue,
                )
        busy: dict[tuple[str, str | None], int] = {}
        if caps:
            for row in (
                yield rows(
                    "SELECT queue, concurrency_key, count(*) AS n FROM runs"
                    f" WHERE status = 'EXECUTING' AND queue {q.in_('queues')}"
                    " GROUP BY queue, concurrency_key",
                    queues=sorted(caps),
                )
            ):
                busy[(row["queue"], row["concurrency_key"])] = row["n"]
        buckets = yield from self._buckets(rates, now)
        full = [(queue, key) for (queue, key), n in busy.items() if n >= caps[queue]]
        left_out = q.not_in_pairs("full_queues", "full_keys", "r.queue", "r.concurrency_key")
        pairs = {"full_queues": [p[0] for p in full], "full_keys": [p[1] for p in full]}
        if rates:  # the text stays the usual one for the claims of queues without a rate
            keys = "coalesce(r.rate_limit_key, '')"
            left_out += f" AND {q.not_in_pairs('empty_queues', 'empty_keys', 'r.queue', keys)}"
            empty = buckets.empty
            pairs |= {"empty_queues": [p[0] for p in empty], "empty_keys": [p[1] for p in empty]}
        candidates: list[RowLike] = yield rows(
            "SELECT r.id, r.queue, r.concurrency_key, r.rate_limit_key FROM runs r"
            f" WHERE {self._claimable(served, 'r.')} AND {left_out}"
            f" ORDER BY {rank('r.')}, r.id LIMIT :scan{q.skip_locked('r')}",
            now=now,
            tasks=task_ids,
            **served.params,
            **pairs,
            scan=max(limit * 10, 100) if caps or rates else limit,
        )
        picked: list[str] = []
        for row in candidates:
            if len(picked) >= limit:
                break
            cap = caps.get(row["queue"])
            slot = (row["queue"], row["concurrency_key"])
            if cap is not None and busy.get(slot, 0) >= cap:
                continue
            if not buckets.take(row["queue"], row["rate_limit_key"]):
                continue
            if cap is not None:
                busy[slot] = busy.get(slot, 0) + 1
            picked.append(row["id"])
        return picked, buckets

    async def renew_leases(self, owner: str, run_ids: list[str], lease_ms: int) -> list[str]:
        def op(now: int) -> Op[list[str]]:
            beat = self._heartbeat(owner, now)  # the worker's, in the same transaction
            if not run_ids:  # an idle worker: its heartbeat alone
                yield alone(beat)
                return []
            crash_point("lease.renew")
            where = f"lease_owner = :owner AND id {self.q.in_('ids')}"
            yield from self._lock_runs(where, owner=owner, ids=run_ids)
            renew = rows(
                f"UPDATE runs SET lease_expires_at = :expires WHERE {where} RETURNING id",
                expires=now + lease_ms,
                owner=owner,
                ids=run_ids,
            )
            if self.q.writes_in_with:  # the heartbeat rides in the renewal's statement
                renewed = yield combined({"renewed": renew, "beat": beat}, "SELECT id FROM renewed")
            else:
                renewed = yield renew
                yield beat
            return [row["id"] for row in renewed]

        return await self._write(op, notify=False, control=True)

    async def lost_runs(self, owner: str, run_ids: list[str]) -> list[str]:
        found = await self._read(
            rows(
                f"SELECT id FROM runs WHERE id {self.q.in_('ids')}"
                " AND (status = 'CANCELED' OR lease_owner IS NULL OR lease_owner != :owner)",
                ids=run_ids,
                owner=owner,
            ),
            control=True,
        )
        return [row["id"] for row in found]

    async def set_metadata(self, run_id: str, epoch: int, metadata: dict[str, Any]) -> None:
        text = dump_json(metadata, "the metadata")

        def op(now: int) -> Op[None]:
            changed = yield alone(
                count(
                    "UPDATE runs SET metadata = :metadata, updated_at = :now WHERE id = :id"
                    " AND status = 'EXECUTING' AND lease_epoch = :epoch",
                    metadata=text,
                    now=now,
                    id=run_id,
                    epoch=epoch,
                )
            )
            if not changed:
                raise lease_lost(run_id, epoch)

        await self._write(op)

    async def record_attempt_trace(self, run_id: str, epoch: int, traceparent: str) -> None:
        """Add an attempt's ``traceparent`` to the run's (tracing on: the run's span links to
        every attempt, whichever worker ran it). A lost lease changes nothing."""

        def op(now: int) -> Op[None]:
            found = yield rows(
                "SELECT trace_attempts FROM runs WHERE id = :id AND lease_epoch = :epoch"
                f"{self.q.for_update}",
                id=run_id,
                epoch=epoch,
            )
            if not found:
                return
            known = json.loads(found[0]["trace_attempts"] or "[]")
            yield count(
                "UPDATE runs SET trace_attempts = :attempts WHERE id = :id",
                attempts=json.dumps([*known, traceparent][-MAX_TRACED_ATTEMPTS:]),
                id=run_id,
            )

        await self._write(op, notify=False)

    async def release_run(self, run_id: str, epoch: int, delay_ms: int = 0) -> None:
        def op(now: int) -> Op[None]:
            yield alone(
                count(
                    "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL,"
                    " updated_at = :now,"
                    " available_at = CASE status WHEN 'EXECUTING' THEN :available"
                    "   ELSE available_at END,"
                    " status = CASE status WHEN 'EXECUTING' THEN 'QUEUED' ELSE status END"
                    " WHERE id = :id AND lease_epoch = :epoch AND lease_owner IS NOT NULL"
                    " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                    now=now,
                    id=run_id,
                    epoch=epoch,
                    available=now + delay_ms,
                )
            )

        await self._write(op)

    async def append_journal(self, write: JournalWrite) -> None:
        def op(now: int) -> Op[None]:
            crash_point("journal.before_commit")
            entry = self._journal_entry(write, write.value, now, where=self._fenced)
            if not (yield alone(entry)):
                raise lease_lost(write.run_id, write.epoch)

        await self._write(op, notify=False)

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
        output_json = None if output is None else dump_json(output, "the task's return value")
        error_json = None if error is None else error.model_dump_json(by_alias=True)

        def op(now: int) -> Op[None]:
            # WAITING/QUEUED with the same epoch: this attempt parked the run and must still
            # fail it (a wait made concurrently with another); no other worker claimed it since,
            # and no rescue or cancel took it (both move the epoch on, like a claim)
            changed = yield count(
                "UPDATE runs SET status = :status, output = :output, error = :error,"
                " finished_at = :now, updated_at = :now, lease_owner = NULL,"
                " lease_expires_at = NULL, executing_ms = executing_ms + :elapsed"
                " WHERE id = :id AND lease_epoch = :epoch"
                " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                status=status.value,
                output=output_json,
                error=error_json,
                now=now,
                elapsed=elapsed_ms,
                id=run_id,
                epoch=epoch,
            )
            if changed == 0:
                raise lease_lost(run_id, epoch)
            yield from self._to_rerun(run_id, rerun)
            detail = {"status": status.value}
            if error is not None:
                detail["error"] = error.message
            yield from self._runs_finished([run_id], now, "finished", detail)

        await self._write(op)

    async def retry_run(
        self,
        run_id: str,
        epoch: int,
        delay_ms: int,
        error: RunError,
        elapsed_ms: int = 0,
        rerun: Sequence[str] = (),
    ) -> None:
        def op(now: int) -> Op[None]:
            yield from self._fence(run_id, epoch)  # this epoch still holds the run, here
            detail = {"error": error.message, "delayMs": delay_ms}
            yield from self._event([run_id], "retrying", now, detail)
            yield from self._to_rerun(run_id, rerun)
            yield count(
                "UPDATE runs SET status = 'QUEUED', available_at = :available,"
                " updated_at = :now, attempt_count = attempt_count + 1, error = :error,"
                " executing_ms = executing_ms + :elapsed,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = :id",
                available=now + delay_ms,
                now=now,
                error=error.model_dump_json(by_alias=True),
                elapsed=elapsed_ms,
                id=run_id,
            )

        await self._write(op)

    def _to_rerun(self, run_id: str, keys: Sequence[str]) -> Op[None]:
        """Mark the step errors journaled under ``keys`` to run again by the next attempt."""
        if keys:
            yield count(
                "UPDATE journal SET rerun = TRUE WHERE run_id = :id AND is_error = TRUE"
                f" AND key {self.q.in_('keys')}",
                id=run_id,
                keys=list(keys),
            )

    async def rescue_expired_leases(self, max_recoveries: int = 5) -> int:
        expired = "status = 'EXECUTING' AND lease_expires_at < :now"
        if not await self._any_due(self.q.indexed_by("runs", "runs_leases"), expired):
            return 0
        message = self.q.json_object(
            "'name', 'CRASHED'",
            "'stackTrace', ''",
            "'message', 'the worker running it stopped answering ' || (recovery_count + 1)"
            " || ' times (killed, out of memory, or blocked); it was not tried again'",
        )

        def op(now: int) -> Op[int]:
            yield from self._lock_runs("status = 'EXECUTING' AND lease_expires_at < :now", now=now)
            crashed = yield rows(
                "UPDATE runs SET status = 'CRASHED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " finished_at = :now, updated_at = :now, recovery_count = recovery_count + 1,"
                f" error = {message}"
                " WHERE status = 'EXECUTING' AND lease_expires_at < :now"
                " AND recovery_count + 1 >= :limit RETURNING id",
                now=now,
                limit=max_recoveries,
            )
            crashed_ids = [r["id"] for r in crashed]
            yield from self._runs_finished(crashed_ids, now, "crashed")
            rescued = yield rows(
                "UPDATE runs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " available_at = :now, updated_at = :now, recovery_count = recovery_count + 1"
                " WHERE status = 'EXECUTING' AND lease_expires_at < :now RETURNING id",
                now=now,
            )
            yield from self._event([r["id"] for r in rescued], "worker_lost", now)
            return len(rescued) + len(crashed)

        return await self._write(op, control=True)

    async def has_due_runs(
        self, task_ids: list[str], versions: Mapping[str, str] | None = None
    ) -> bool:
        served = Served.of(task_ids, versions)
        found = await self._read(
            rows(
                "SELECT 1 FROM runs WHERE status = 'QUEUED' AND available_at <= :now"
                " AND (lease_owner IS NULL OR lease_expires_at <= :now)"
                f" AND task_id {self.q.in_('tasks')} AND {served.claimable()}"
                f" AND {self._unpaused()} LIMIT 1",
                now=self.now_ms(),
                tasks=task_ids,
                **served.params,
            ),
            control=True,
        )
        return bool(found)
