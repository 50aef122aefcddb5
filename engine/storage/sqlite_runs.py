"""SQLite operations on runs: trigger, claim with leases, journal, finish, retry, cancel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import LeaseLostError, RunNotFoundError
from ..faults import crash_point
from ..models import ClaimedRun, JournalEntry, Page, Run, RunError, RunEvent, RunStatus, TaskInfo
from .base import JournalWrite, NewRun, PageRequest, RunFilter
from .records import claimed_runs, dump_json, journal_from_row, load_json, run_from_row
from .sqlite_base import Conn, SQLiteBase, _common_filters, _first_or_none

_FINAL = "('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT', 'EXPIRED', 'CRASHED')"


class SQLiteRuns(SQLiteBase):
    """Runs, their leases and journals, and the task registry."""

    async def register_tasks(self, tasks: list[TaskInfo]) -> None:
        now = self.now_ms()
        rows = [
            (
                t.id,
                None if t.payload_schema is None else dump_json(t.payload_schema),
                t.queue,
                t.concurrency_limit,
                now,
            )
            for t in tasks
        ]

        def op(conn: Conn) -> None:
            conn.executemany(
                "INSERT INTO tasks (id, payload_schema, queue, concurrency_limit, updated_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET payload_schema = excluded.payload_schema,"
                " queue = excluded.queue, concurrency_limit = excluded.concurrency_limit,"
                " updated_at = excluded.updated_at",
                rows,
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
        dump_json(new.payload, "the payload")  # refuse a bad payload before queueing the write

        def op(conn: Conn) -> Run:
            now = self.now_ms()
            if new.idempotency_key is not None:
                rows = conn.execute(
                    "SELECT * FROM runs WHERE task_id = ? AND idempotency_key = ?",
                    (new.task_id, new.idempotency_key),
                ).fetchall()
                row = _first_or_none(rows)
                if row is not None:
                    expires = row["idempotency_key_expires_at"]
                    if expires is None or expires > now:
                        return run_from_row(row).model_copy(update={"is_cached": True})
                    conn.execute(
                        "UPDATE runs SET idempotency_key = NULL WHERE id = ?", (row["id"],)
                    )
            return run_from_row(self._insert_run(conn, new))

        return await self._write(op)

    async def get_run(self, run_id: str) -> Run:
        rows = await self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        waits = await self._waiting_on([run_id])
        children = await self._read(
            "SELECT id FROM runs WHERE parent_run_id = ? ORDER BY id", (run_id,)
        )
        run = run_from_row(rows[0], waits.get(run_id))
        return run.model_copy(update={"children": [row["id"] for row in children]})

    async def _waiting_on(self, run_ids: list[str]) -> dict[str, list[str]]:
        rows = await self._read(
            "SELECT rw.run_id, rw.waitpoint_id FROM run_waits rw"
            " JOIN waitpoints w ON w.id = rw.waitpoint_id"
            " WHERE w.status = 'WAITING' AND rw.run_id IN (SELECT value FROM json_each(?))"
            " ORDER BY rw.created_at",
            (json.dumps(run_ids),),
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["run_id"], []).append(row["waitpoint_id"])
        return found

    async def list_runs(self, filter: RunFilter, page: PageRequest) -> Page[Run]:
        where, params = _common_filters(
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.task_id:
            where.append("task_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(filter.task_id))
        rows, next_cursor, previous_cursor = await self._page("runs", where, params, page)
        waits = await self._waiting_on([r["id"] for r in rows])
        runs = [run_from_row(r, waits.get(r["id"])) for r in rows]
        return Page(data=runs, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def get_events(self, run_id: str) -> list[RunEvent]:
        rows = await self._read(
            "SELECT * FROM run_events WHERE run_id = ? ORDER BY at, seq", (run_id,)
        )
        return [
            RunEvent(r["kind"], r["attempt"], r["at"], r["seq"], load_json(r["detail"]))
            for r in rows
        ]

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        await self.get_run(run_id)  # RunNotFoundError for an unknown id
        rows = await self._read(
            "SELECT * FROM journal WHERE run_id = ? ORDER BY created_at, seq", (run_id,)
        )
        return [journal_from_row(r) for r in rows]

    async def cancel_run(self, run_id: str) -> Run:
        def op(conn: Conn) -> None:
            now = self.now_ms()
            rows = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchall()
            if not rows:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            canceled: list[str] = []
            pending = [run_id]
            while pending:  # the children a canceled run waits on are canceled too
                current = pending.pop()
                # runs canceled so far are CANCELED in this transaction, so a child still
                # awaited here is awaited by a run that goes on; if that run is canceled later
                # in this loop, the child is pushed again as one of its children
                if current != run_id and _awaited(conn, current):
                    continue
                cursor = conn.execute(
                    "UPDATE runs SET status = 'CANCELED', finished_at = ?, updated_at = ?,"
                    " lease_owner = NULL, lease_expires_at = NULL, lease_epoch = lease_epoch + 1"
                    f" WHERE id = ? AND status NOT IN {_FINAL}",
                    (now, now, current),
                )
                if cursor.rowcount == 0:
                    continue
                canceled.append(current)
                children = conn.execute(
                    "SELECT w.child_run_id FROM run_waits rw JOIN waitpoints w"
                    " ON w.id = rw.waitpoint_id WHERE rw.run_id = ? AND w.kind = 'RUN'"
                    " AND w.status = 'WAITING'",
                    (current,),
                ).fetchall()
                pending.extend(row["child_run_id"] for row in children)
            self._event(conn, canceled, "canceled")
            self._runs_finished(conn, canceled)

        await self._write(op)
        return await self.get_run(run_id)

    async def claim_runs(
        self, owner: str, limit: int, lease_ms: int, task_ids: list[str]
    ) -> list[ClaimedRun]:
        tasks = json.dumps(task_ids)

        def op(conn: Conn) -> list[ClaimedRun]:
            now = self.now_ms()
            picked = self._within_limits(conn, tasks, now, limit)
            if not picked:
                return []
            rows = conn.execute(
                "UPDATE runs SET status = 'EXECUTING', lease_owner = :owner,"
                " lease_epoch = lease_epoch + 1, lease_expires_at = :expires,"
                " attempt_count = max(attempt_count, 1), started_at = coalesce(started_at, :now),"
                " expires_at = NULL,"
                " updated_at = :now"
                " WHERE id IN (SELECT value FROM json_each(:ids))"
                " RETURNING id, task_id, payload, attempt_count, lease_epoch, max_attempts,"
                " executing_ms, max_duration_ms, metadata",
                {"owner": owner, "expires": now + lease_ms, "now": now, "ids": json.dumps(picked)},
            ).fetchall()
            if not rows:
                return []
            self._event(conn, [r["id"] for r in rows], "attempt_started", {"worker": owner})
            ids = json.dumps([r["id"] for r in rows])
            entries = conn.execute(
                "SELECT * FROM journal WHERE run_id IN (SELECT value FROM json_each(?))"
                " ORDER BY created_at, seq",
                (ids,),
            ).fetchall()
            return claimed_runs(rows, entries)

        return await self._write(op, notify=False)

    def _within_limits(self, conn: Conn, tasks: str, now: int, limit: int) -> list[str]:
        """Due runs to claim, oldest first, that keep every queue within its concurrency limit.

        Counted in the claim's own write transaction, so the limits hold however many worker
        processes share the database. Only EXECUTING runs count: a waiting run holds no slot.
        A queue already at its limit is left out of the scan, so the runs queued behind it
        never hide younger runs of other queues.
        """
        caps = {
            row["queue"]: row["cap"]
            for row in conn.execute(
                "SELECT coalesce(queue, id) AS queue, min(concurrency_limit) AS cap FROM tasks"
                " WHERE id IN (SELECT value FROM json_each(?)) AND concurrency_limit IS NOT NULL"
                " GROUP BY coalesce(queue, id)",
                (tasks,),
            ).fetchall()
        }
        busy: dict[tuple[str, str | None], int] = {}
        if caps:
            for row in conn.execute(
                "SELECT queue, concurrency_key, count(*) AS n FROM runs"
                " WHERE status = 'EXECUTING' AND queue IN (SELECT value FROM json_each(?))"
                " GROUP BY queue, concurrency_key",
                (json.dumps(sorted(caps)),),
            ).fetchall():
                busy[(row["queue"], row["concurrency_key"])] = row["n"]
        full = [[queue, key] for (queue, key), n in busy.items() if n >= caps[queue]]
        candidates = conn.execute(
            "SELECT r.id, r.queue, r.concurrency_key FROM runs r"
            " WHERE r.status = 'QUEUED' AND r.available_at <= :now"
            " AND (r.lease_owner IS NULL OR r.lease_expires_at <= :now)"
            " AND r.task_id IN (SELECT value FROM json_each(:tasks))"
            " AND (r.expires_at IS NULL OR r.expires_at > :now)"
            " AND NOT EXISTS (SELECT 1 FROM json_each(:full) f"
            "   WHERE json_extract(f.value, '$[0]') = r.queue"
            "   AND json_extract(f.value, '$[1]') IS r.concurrency_key)"
            " ORDER BY r.available_at, r.id LIMIT :scan",
            {
                "now": now,
                "tasks": tasks,
                "full": json.dumps(full),
                "scan": max(limit * 10, 100) if caps else limit,
            },
        ).fetchall()
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
        def op(conn: Conn) -> None:
            crash_point("lease.renew")
            conn.execute(
                "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ?"
                " AND id IN (SELECT value FROM json_each(?))",
                (self.now_ms() + lease_ms, owner, json.dumps(run_ids)),
            )

        await self._write(op, notify=False)

    async def lost_runs(self, owner: str, run_ids: list[str]) -> list[str]:
        rows = await self._read(
            "SELECT id FROM runs WHERE id IN (SELECT value FROM json_each(?))"
            " AND (status = 'CANCELED' OR lease_owner IS NULL OR lease_owner != ?)",
            (json.dumps(run_ids), owner),
        )
        return [row["id"] for row in rows]

    async def set_metadata(self, run_id: str, epoch: int, metadata: dict[str, Any]) -> None:
        text = dump_json(metadata, "the metadata")

        def op(conn: Conn) -> None:
            self._fence(conn, run_id, epoch)
            conn.execute(
                "UPDATE runs SET metadata = ?, updated_at = ? WHERE id = ?",
                (text, self.now_ms(), run_id),
            )

        await self._write(op)

    async def release_run(self, run_id: str, epoch: int, delay_ms: int = 0) -> None:
        def op(conn: Conn) -> None:
            now = self.now_ms()
            conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, updated_at = :now,"
                " available_at = CASE status WHEN 'EXECUTING' THEN :now + :delay"
                "   ELSE available_at END,"
                " status = CASE status WHEN 'EXECUTING' THEN 'QUEUED' ELSE status END"
                " WHERE id = :id AND lease_epoch = :epoch AND lease_owner IS NOT NULL"
                " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                {"now": now, "id": run_id, "epoch": epoch, "delay": delay_ms},
            )

        await self._write(op)

    async def append_journal(self, write: JournalWrite) -> None:
        def op(conn: Conn) -> None:
            self._fence(conn, write.run_id, write.epoch)
            self._journal(conn, write, write.value)

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

        def op(conn: Conn) -> None:
            now = self.now_ms()
            # WAITING/QUEUED with the same epoch: this attempt parked the run and must still
            # fail it (a wait made concurrently with another); no other worker claimed it since,
            # and no rescue or cancel took it (both move the epoch on, like a claim)
            cursor = conn.execute(
                "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ?,"
                " updated_at = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " executing_ms = executing_ms + ?"
                " WHERE id = ? AND lease_epoch = ?"
                " AND status IN ('EXECUTING', 'WAITING', 'QUEUED')",
                (status.value, output_json, error_json, now, now, elapsed_ms, run_id, epoch),
            )
            if cursor.rowcount == 0:
                raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")
            detail = {"status": status.value}
            if error is not None:
                detail["error"] = error.message
            self._event(conn, [run_id], "finished", detail)
            self._runs_finished(conn, [run_id])

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
        def op(conn: Conn) -> None:
            now = self.now_ms()
            self._fence(conn, run_id, epoch)  # this epoch still holds the run, in this transaction
            self._event(conn, [run_id], "retrying", {"error": error.message, "delayMs": delay_ms})
            if rerun:
                conn.execute(
                    "UPDATE journal SET rerun = 1 WHERE run_id = ? AND is_error = 1"
                    " AND key IN (SELECT value FROM json_each(?))",
                    (run_id, json.dumps(list(rerun))),
                )
            conn.execute(
                "UPDATE runs SET status = 'QUEUED', available_at = ?, updated_at = ?,"
                " attempt_count = attempt_count + 1, error = ?, executing_ms = executing_ms + ?,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                (now + delay_ms, now, error.model_dump_json(by_alias=True), elapsed_ms, run_id),
            )

        await self._write(op)

    async def rescue_expired_leases(self, max_recoveries: int = 5) -> int:
        now = self.now_ms()
        if not await self._read(
            "SELECT 1 FROM runs WHERE status = 'EXECUTING' AND lease_expires_at < ? LIMIT 1",
            (now,),
        ):
            return 0

        def op(conn: Conn) -> int:
            now = self.now_ms()
            crashed = conn.execute(
                "UPDATE runs SET status = 'CRASHED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " finished_at = :now, updated_at = :now, recovery_count = recovery_count + 1,"
                " error = json_object('name', 'CRASHED', 'stackTrace', '', 'message',"
                "   'the worker running it stopped answering ' || (recovery_count + 1)"
                "   || ' times (killed, out of memory, or blocked); it was not tried again')"
                " WHERE status = 'EXECUTING' AND lease_expires_at < :now"
                " AND recovery_count + 1 >= :limit RETURNING id",
                {"now": now, "limit": max_recoveries},
            ).fetchall()
            self._event(conn, [r["id"] for r in crashed], "crashed")
            self._runs_finished(conn, [r["id"] for r in crashed])
            rescued = conn.execute(
                "UPDATE runs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                " lease_epoch = lease_epoch + 1,"
                " available_at = ?, updated_at = ?, recovery_count = recovery_count + 1"
                " WHERE status = 'EXECUTING' AND lease_expires_at < ? RETURNING id",
                (now, now, now),
            ).fetchall()
            self._event(conn, [r["id"] for r in rescued], "worker_lost")
            return len(rescued) + len(crashed)

        return await self._write(op)

    async def has_due_runs(self, task_ids: list[str]) -> bool:
        rows = await self._read(
            "SELECT 1 FROM runs WHERE status = 'QUEUED' AND available_at <= :now"
            " AND (lease_owner IS NULL OR lease_expires_at <= :now)"
            " AND task_id IN (SELECT value FROM json_each(:tasks)) LIMIT 1",
            {"now": self.now_ms(), "tasks": json.dumps(task_ids)},
        )
        return bool(rows)

    async def _start_delayed_runs(self) -> int:
        """DELAYED runs whose time came become QUEUED; runs not started within ttl EXPIRE."""
        now = self.now_ms()
        if not await self._read(
            "SELECT 1 FROM runs WHERE (status = 'DELAYED' AND available_at <= :now)"
            " OR (status IN ('QUEUED', 'DELAYED') AND expires_at <= :now) LIMIT 1",
            {"now": now},
        ):
            return 0

        def op(conn: Conn) -> int:
            now = self.now_ms()
            expired = conn.execute(
                "UPDATE runs SET status = 'EXPIRED', finished_at = :now, updated_at = :now"
                " WHERE status IN ('QUEUED', 'DELAYED') AND expires_at <= :now RETURNING id",
                {"now": now},
            ).fetchall()
            self._event(conn, [r["id"] for r in expired], "expired")
            self._runs_finished(conn, [r["id"] for r in expired])
            queued = conn.execute(
                "UPDATE runs SET status = 'QUEUED', updated_at = :now"
                " WHERE status = 'DELAYED' AND available_at <= :now",
                {"now": now},
            ).rowcount
            return len(expired) + int(queued)

        return await self._write(op)


def _awaited(conn: Conn, run_id: str) -> bool:
    """Whether an unfinished run waits on this run (a WAITING RUN waitpoint on it)."""
    rows = conn.execute(
        "SELECT 1 FROM waitpoints w JOIN run_waits rw ON rw.waitpoint_id = w.id"
        " JOIN runs r ON r.id = rw.run_id"
        " WHERE w.child_run_id = ? AND w.kind = 'RUN' AND w.status = 'WAITING'"
        f" AND r.status NOT IN {_FINAL} LIMIT 1",
        (run_id,),
    ).fetchall()
    return bool(rows)
