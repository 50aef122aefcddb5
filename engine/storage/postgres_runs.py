"""PostgreSQL operations on runs: trigger, claim with ``SKIP LOCKED``, journal, finish, cancel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import LeaseLostError, RunNotFoundError
from ..faults import crash_point
from ..models import ClaimedRun, JournalEntry, Page, Run, RunError, RunEvent, RunStatus, TaskInfo
from .base import JournalWrite, NewRun, PageRequest, RunFilter
from .postgres_base import FINAL, Conn, Params, PostgresBase, affected, common_filters
from .records import claimed_runs, dump_json, journal_from_row, load_json, run_from_row

_CLAIM_COLUMNS = (
    "id, task_id, payload, attempt_count, lease_epoch, max_attempts, executing_ms,"
    " max_duration_ms, metadata"
)


class PostgresRuns(PostgresBase):
    """Runs, their leases and journals, and the task registry."""

    async def register_tasks(self, tasks: list[TaskInfo]) -> None:
        async def op(conn: Conn, now: int) -> None:
            await conn.executemany(
                "INSERT INTO tasks (id, payload_schema, queue, concurrency_limit, updated_at)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (id) DO UPDATE SET payload_schema = excluded.payload_schema,"
                " queue = excluded.queue, concurrency_limit = excluded.concurrency_limit,"
                " updated_at = excluded.updated_at",
                [
                    (
                        t.id,
                        None if t.payload_schema is None else dump_json(t.payload_schema),
                        t.queue,
                        t.concurrency_limit,
                        now,
                    )
                    for t in sorted(tasks, key=lambda t: t.id)  # one lock order for all workers
                ],
            )

        await self._write(op, notify=False)

    async def list_tasks(self) -> list[TaskInfo]:
        rows = await self._read(
            "SELECT id, payload_schema, queue, concurrency_limit FROM tasks ORDER BY id"
        )
        return [
            TaskInfo(r["id"], load_json(r["payload_schema"]), r["queue"], r["concurrency_limit"])
            for r in rows
        ]

    async def create_run(self, new: NewRun) -> Run:
        dump_json(new.payload, "the payload")  # refuse a bad payload before the transaction

        async def op(conn: Conn, now: int) -> Run:
            if new.idempotency_key is not None:
                row = await conn.fetchrow(
                    "SELECT * FROM runs WHERE task_id = $1 AND idempotency_key = $2 FOR UPDATE",
                    new.task_id,
                    new.idempotency_key,
                )
                if row is not None:
                    expires = row["idempotency_key_expires_at"]
                    if expires is None or expires > now:
                        return run_from_row(row).model_copy(update={"is_cached": True})
                    await conn.execute(
                        "UPDATE runs SET idempotency_key = NULL WHERE id = $1", row["id"]
                    )
            return run_from_row(await self._insert_run(conn, new, now))

        return await self._write(op)

    async def get_run(self, run_id: str) -> Run:
        rows = await self._read("SELECT * FROM runs WHERE id = $1", run_id)
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        waits = await self._waiting_on([run_id])
        children = await self._read(
            "SELECT id FROM runs WHERE parent_run_id = $1 ORDER BY id", run_id
        )
        run = run_from_row(rows[0], waits.get(run_id))
        return run.model_copy(update={"children": [row["id"] for row in children]})

    async def _waiting_on(self, run_ids: list[str]) -> dict[str, list[str]]:
        rows = await self._read(
            "SELECT rw.run_id, rw.waitpoint_id FROM run_waits rw"
            " JOIN waitpoints w ON w.id = rw.waitpoint_id"
            " WHERE w.status = 'WAITING' AND rw.run_id = ANY($1::text[])"
            " ORDER BY rw.created_at, rw.waitpoint_id",
            run_ids,
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["run_id"], []).append(row["waitpoint_id"])
        return found

    async def list_runs(self, filter: RunFilter, page: PageRequest) -> Page[Run]:
        params = Params()
        where = common_filters(
            params,
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.task_id:
            where.append(f"task_id = ANY({params(filter.task_id)}::text[])")
        rows, next_cursor, previous_cursor = await self._page("runs", where, params, page)
        waits = await self._waiting_on([r["id"] for r in rows])
        runs = [run_from_row(r, waits.get(r["id"])) for r in rows]
        return Page(data=runs, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def get_events(self, run_id: str) -> list[RunEvent]:
        rows = await self._read(
            "SELECT * FROM run_events WHERE run_id = $1 ORDER BY at, seq", run_id
        )
        return [
            RunEvent(r["kind"], r["attempt"], r["at"], r["seq"], load_json(r["detail"]))
            for r in rows
        ]

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        await self.get_run(run_id)  # RunNotFoundError for an unknown id
        rows = await self._read("SELECT * FROM journal WHERE run_id = $1 ORDER BY seq", run_id)
        return [journal_from_row(r) for r in rows]

    async def cancel_run(self, run_id: str) -> Run:
        async def op(conn: Conn, now: int) -> None:
            if await conn.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id) is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            canceled: list[str] = []
            pending = [run_id]
            while pending:  # the children a canceled run waits on are canceled too
                current = pending.pop()
                # runs canceled so far are CANCELED in this transaction, so a child still
                # awaited here is awaited by a run that goes on; if that run is canceled later
                # in this loop, the child is pushed again as one of its children
                if current != run_id and await _awaited(conn, current):
                    continue
                status = await conn.execute(
                    "UPDATE runs SET status = 'CANCELED', finished_at = $1, updated_at = $1,"
                    " lease_owner = NULL, lease_expires_at = NULL, lease_epoch = lease_epoch + 1"
                    f" WHERE id = $2 AND status NOT IN {FINAL}",
                    now,
                    current,
                )
                if affected(status) == 0:
                    continue
                canceled.append(current)
                children = await conn.fetch(
                    "SELECT w.child_run_id FROM run_waits rw JOIN waitpoints w"
                    " ON w.id = rw.waitpoint_id WHERE rw.run_id = $1 AND w.kind = 'RUN'"
                    " AND w.status = 'WAITING'",
                    current,
                )
                pending.extend(row["child_run_id"] for row in children)
            await self._event(conn, canceled, "canceled", now)
            await self._runs_finished(conn, canceled, now)

        await self._write(op)
        return await self.get_run(run_id)

    async def claim_runs(
        self, owner: str, limit: int, lease_ms: int, task_ids: list[str]
    ) -> list[ClaimedRun]:
        async def op(conn: Conn, now: int) -> list[ClaimedRun]:
            picked = await self._within_limits(conn, task_ids, now, limit)
            if not picked:
                return []
            rows = await conn.fetch(
                "UPDATE runs SET status = 'EXECUTING', lease_owner = $1,"
                " lease_epoch = lease_epoch + 1, lease_expires_at = $2,"
                " attempt_count = greatest(attempt_count, 1),"
                " started_at = coalesce(started_at, $3), updated_at = $3, expires_at = NULL"
                f" WHERE id = ANY($4::text[]) RETURNING {_CLAIM_COLUMNS}",
                owner,
                now + lease_ms,
                now,
                picked,
            )
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            await self._event(conn, ids, "attempt_started", now, {"worker": owner})
            entries = await conn.fetch(
                "SELECT * FROM journal WHERE run_id = ANY($1::text[]) ORDER BY seq",
                ids,
            )
            return claimed_runs(rows, entries)

        return await self._write(op, notify=False, control=True)

    async def _within_limits(
        self, conn: Conn, task_ids: list[str], now: int, limit: int
    ) -> list[str]:
        """Due runs to claim, oldest first, that keep every queue within its concurrency limit.

        Candidates are locked with ``SKIP LOCKED``, so workers claiming at once take different
        runs instead of queueing behind each other. A limited queue is counted under a
        transaction-scoped advisory lock of that queue: two workers cannot both see the last
        free slot. Only EXECUTING runs count: a waiting run holds no slot. A queue already at
        its limit is left out of the scan, so the runs queued behind it never hide younger runs
        of other queues.
        """
        caps = {
            row["queue"]: row["cap"]
            for row in await conn.fetch(
                "SELECT coalesce(queue, id) AS queue, min(concurrency_limit) AS cap FROM tasks"
                " WHERE id = ANY($1::text[]) AND concurrency_limit IS NOT NULL"
                " GROUP BY coalesce(queue, id)",
                task_ids,
            )
        }
        busy: dict[tuple[str, str | None], int] = {}
        if caps:
            for queue in sorted(caps):  # one lock order for every worker
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('waitpoint-queue:' || $1))", queue
                )
            for row in await conn.fetch(
                "SELECT queue, concurrency_key, count(*) AS n FROM runs"
                " WHERE status = 'EXECUTING' AND queue = ANY($1::text[])"
                " GROUP BY queue, concurrency_key",
                sorted(caps),
            ):
                busy[(row["queue"], row["concurrency_key"])] = row["n"]
        full = [(queue, key) for (queue, key), n in busy.items() if n >= caps[queue]]
        candidates = await conn.fetch(
            "SELECT r.id, r.queue, r.concurrency_key FROM runs r"
            " WHERE r.status = 'QUEUED' AND r.available_at <= $1"
            " AND (r.lease_owner IS NULL OR r.lease_expires_at <= $1)"
            " AND r.task_id = ANY($2::text[])"
            " AND (r.expires_at IS NULL OR r.expires_at > $1)"
            " AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::text[]) AS f(q, k)"
            "   WHERE f.q = r.queue AND f.k IS NOT DISTINCT FROM r.concurrency_key)"
            " ORDER BY r.available_at, r.id LIMIT $3 FOR UPDATE OF r SKIP LOCKED",
            now,
            task_ids,
            max(limit * 10, 100) if caps else limit,
            [queue for queue, _ in full],
            [key for _, key in full],
        )
        picked: list[str] = []
        for row in candidates:
            if len(picked) >= limit:
                break
            cap = caps.get(row["queue"])
            if cap is not None:
                slot = (row["queue"], row["concurrency_key"])
                if busy.get(slot, 0) >= cap:
                    continue
                busy[slot] = busy.get(slot, 0) + 1
            picked.append(row["id"])
        return picked

    async def renew_leases(self, owner: str, run_ids: list[str], lease_ms: int) -> None:
        async def op(conn: Conn, now: int) -> None:
            crash_point("lease.renew")
            await conn.execute(
                "UPDATE runs SET lease_expires_at = $1 WHERE lease_owner = $2"
                " AND id = ANY($3::text[])",
                now + lease_ms,
                owner,
                sorted(run_ids),
            )

        await self._write(op, notify=False, control=True)

    async def lost_runs(self, owner: str, run_ids: list[str]) -> list[str]:
        rows = await self._read(
            "SELECT id FROM runs WHERE id = ANY($1::text[])"
            " AND (status = 'CANCELED' OR lease_owner IS DISTINCT FROM $2)",
            run_ids,
            owner,
            control=True,
        )
        return [row["id"] for row in rows]

    async def set_metadata(self, run_id: str, epoch: int, metadata: dict[str, Any]) -> None:
        text = dump_json(metadata, "the metadata")

        async def op(conn: Conn, now: int) -> None:
            await self._fence(conn, run_id, epoch)
            await conn.execute(
                "UPDATE runs SET metadata = $1, updated_at = $2 WHERE id = $3", text, now, run_id
            )

        await self._write(op)

    async def release_run(self, run_id: str, epoch: int, delay_ms: int = 0) -> None:
        async def op(conn: Conn, now: int) -> None:
            await conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, updated_at = $1,"
                " available_at = CASE status WHEN 'EXECUTING' THEN $4 ELSE available_at END,"
                " status = CASE status WHEN 'EXECUTING' THEN 'QUEUED' ELSE status END"
                " WHERE id = $2 AND lease_epoch = $3 AND lease_owner IS NOT NULL"
                " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                now,
                run_id,
                epoch,
                now + delay_ms,
            )

        await self._write(op)

    async def append_journal(self, write: JournalWrite) -> None:
        async def op(conn: Conn, now: int) -> None:
            await self._fence(conn, write.run_id, write.epoch)
            await self._journal(conn, write, write.value, now)

        await self._write(op, notify=False)

    async def finish_run(
        self,
        run_id: str,
        epoch: int,
        status: RunStatus,
        output: Any,
        error: RunError | None,
        elapsed_ms: int = 0,
    ) -> None:
        output_json = None if output is None else dump_json(output, "the task's return value")
        error_json = None if error is None else error.model_dump_json(by_alias=True)

        async def op(conn: Conn, now: int) -> None:
            # WAITING/QUEUED with the same epoch: this attempt parked the run and must still
            # fail it (a wait made concurrently with another); no other worker claimed it since,
            # and no rescue or cancel took it (both move the epoch on, like a claim)
            result = await conn.execute(
                "UPDATE runs SET status = $1, output = $2, error = $3, finished_at = $4,"
                " updated_at = $4, lease_owner = NULL, lease_expires_at = NULL,"
                " executing_ms = executing_ms + $5"
                " WHERE id = $6 AND lease_epoch = $7"
                " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                status.value,
                output_json,
                error_json,
                now,
                elapsed_ms,
                run_id,
                epoch,
            )
            if affected(result) == 0:
                raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")
            detail = {"status": status.value}
            if error is not None:
                detail["error"] = error.message
            await self._event(conn, [run_id], "finished", now, detail)
            await self._runs_finished(conn, [run_id], now)

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
        async def op(conn: Conn, now: int) -> None:
            await self._fence(conn, run_id, epoch)
            await self._event(
                conn, [run_id], "retrying", now, {"error": error.message, "delayMs": delay_ms}
            )
            if rerun:
                await conn.execute(
                    "UPDATE journal SET rerun = true WHERE run_id = $1 AND is_error"
                    " AND key = ANY($2::text[])",
                    run_id,
                    list(rerun),
                )
            await conn.execute(
                "UPDATE runs SET status = 'QUEUED', available_at = $1, updated_at = $2,"
                " attempt_count = attempt_count + 1, error = $3,"
                " executing_ms = executing_ms + $4,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = $5",
                now + delay_ms,
                now,
                error.model_dump_json(by_alias=True),
                elapsed_ms,
                run_id,
            )

        await self._write(op)

    async def rescue_expired_leases(self, max_recoveries: int = 5) -> int:
        if not await self._read(
            "SELECT 1 FROM runs WHERE status = 'EXECUTING' AND lease_expires_at < $1 LIMIT 1",
            self.now_ms(),
            control=True,
        ):
            return 0

        async def op(conn: Conn, now: int) -> int:
            crashed = await conn.fetch(
                "UPDATE runs SET status = 'CRASHED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " finished_at = $1, updated_at = $1, recovery_count = recovery_count + 1,"
                " error = json_build_object('name', 'CRASHED', 'stackTrace', '', 'message',"
                "   'the worker running it stopped answering ' || (recovery_count + 1)"
                "   || ' times (killed, out of memory, or blocked); it was not tried again')::text"
                " WHERE status = 'EXECUTING' AND lease_expires_at < $1"
                " AND recovery_count + 1 >= $2 RETURNING id",
                now,
                max_recoveries,
            )
            crashed_ids = [r["id"] for r in crashed]
            await self._event(conn, crashed_ids, "crashed", now)
            await self._runs_finished(conn, crashed_ids, now)
            rescued = await conn.fetch(
                "UPDATE runs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " available_at = $1, updated_at = $1, recovery_count = recovery_count + 1"
                " WHERE status = 'EXECUTING' AND lease_expires_at < $1 RETURNING id",
                now,
            )
            await self._event(conn, [r["id"] for r in rescued], "worker_lost", now)
            return len(rescued) + len(crashed)

        return await self._write(op, control=True)

    async def has_due_runs(self, task_ids: list[str]) -> bool:
        rows = await self._read(
            "SELECT 1 FROM runs WHERE status = 'QUEUED' AND available_at <= $1"
            " AND (lease_owner IS NULL OR lease_expires_at <= $1)"
            " AND task_id = ANY($2::text[]) LIMIT 1",
            self.now_ms(),
            task_ids,
            control=True,
        )
        return bool(rows)

    async def _start_delayed_runs(self) -> int:
        """DELAYED runs whose time came become QUEUED; runs not started within ttl EXPIRE."""
        if not await self._read(
            "SELECT 1 FROM runs WHERE (status = 'DELAYED' AND available_at <= $1)"
            " OR (status IN ('QUEUED', 'DELAYED') AND expires_at <= $1) LIMIT 1",
            self.now_ms(),
            control=True,
        ):
            return 0

        async def op(conn: Conn, now: int) -> int:
            expired = await conn.fetch(
                "UPDATE runs SET status = 'EXPIRED', finished_at = $1, updated_at = $1"
                " WHERE status IN ('QUEUED', 'DELAYED') AND expires_at <= $1 RETURNING id",
                now,
            )
            expired_ids = [r["id"] for r in expired]
            await self._event(conn, expired_ids, "expired", now)
            await self._runs_finished(conn, expired_ids, now)
            queued = await conn.execute(
                "UPDATE runs SET status = 'QUEUED', updated_at = $1"
                " WHERE status = 'DELAYED' AND available_at <= $1",
                now,
            )
            return len(expired_ids) + affected(queued)

        return await self._write(op, control=True)


async def _awaited(conn: Conn, run_id: str) -> bool:
    """Whether an unfinished run waits on this run (a WAITING RUN waitpoint on it).

    The run's row is locked first: a parent that starts waiting on it by its idempotency key
    locks that row too (``FOR UPDATE``), so its edge is either committed and seen by the query
    that follows (READ COMMITTED: a new snapshot per statement), or made after this
    transaction, when the run is already CANCELED and the waitpoint is made closed.
    """
    await conn.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
    found = await conn.fetchval(
        "SELECT 1 FROM waitpoints w JOIN run_waits rw ON rw.waitpoint_id = w.id"
        " JOIN runs r ON r.id = rw.run_id"
        " WHERE w.child_run_id = $1 AND w.kind = 'RUN' AND w.status = 'WAITING'"
        f" AND r.status NOT IN {FINAL} LIMIT 1",
        run_id,
    )
    return found is not None
