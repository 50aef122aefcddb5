"""What every SQLite operation stands on: the two connections, group commit, fencing, paging.

Two connections per process: the writer (every write goes through ``GroupCommitWriter``, as a
plain function of a ``sqlite3.Connection`` run in one thread hop per batch) and a reader (WAL
lets it read while the writer writes). ``PRAGMA data_version`` tells a process that another
one committed, so workers wake up when the CLI or another worker completes a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..callbacks import CallbackSigner
from ..clock import Clock
from ..errors import ConfigurationError, LeaseLostError, StorageError
from ..faults import crash_point
from ..ids import new_run_id
from ..models import Token
from .base import JournalWrite, NewRun, PageRequest
from .records import dump_json, page_slice, token_from_row
from .writer import GroupCommitWriter, translate

T = TypeVar("T")
Conn = sqlite3.Connection

_POLL_SECONDS = 0.01  # how soon another process's commit wakes this one
# a run goes back to the queue when one of its 'any' waitpoints closed, or when none of its
# 'all' waitpoints is still WAITING (a group's timer is an 'any' edge beside 'all' tokens).
# The unary + keeps SQLite on the (run_id, ...) key for the 'any' probe: through the
# waitpoint index it would cost closed x blocked runs.
_REQUEUE_BLOCKED = """
    UPDATE runs SET status = 'QUEUED', available_at = :now, updated_at = :now
    WHERE status = 'WAITING'
      AND id IN (SELECT run_id FROM run_waits
                 WHERE waitpoint_id IN (SELECT value FROM json_each(:ids)))
      AND (EXISTS (SELECT 1 FROM run_waits rw
                   WHERE rw.run_id = runs.id AND rw.mode = 'any'
                     AND +rw.waitpoint_id IN (SELECT value FROM json_each(:ids)))
           OR NOT EXISTS (SELECT 1 FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id
                          WHERE rw.run_id = runs.id AND rw.mode = 'all'
                            AND w.status = 'WAITING'))
"""
# a token's deadline is a timeout; a sleep's deadline is its completion
TIME_OUT = (
    "UPDATE waitpoints SET completed_at = :now,"
    " status = CASE kind WHEN 'DATETIME' THEN 'COMPLETED' ELSE 'TIMED_OUT' END,"
    " completed_via = CASE kind WHEN 'DATETIME' THEN NULL ELSE 'timeout' END,"
    " data = CASE kind WHEN 'DATETIME' THEN NULL ELSE json_object("
    "   'code', 'TRIGGER_WAITPOINT_TIMEOUT',"
    "   'message', 'Waitpoint timed out at '"
    "     || strftime('%Y-%m-%dT%H:%M:%fZ', timeout_at / 1000.0, 'unixepoch')) END"
)


_CLOSE_RUN_WAITPOINTS = """
    UPDATE waitpoints SET status = 'COMPLETED', completed_at = :now,
        data = (SELECT json_object('runId', r.id, 'status', r.status,
                                   'output', json(r.output), 'error', json(r.error))
                FROM runs r WHERE r.id = waitpoints.child_run_id)
    WHERE kind = 'RUN' AND status = 'WAITING'
      AND child_run_id IN (SELECT value FROM json_each(:ids))
    RETURNING id
"""


class SQLiteBase:
    """Connections and plumbing shared by the run and token operations."""

    path: Path
    clock: Clock
    signer: CallbackSigner
    _writer_conn: Conn | None
    _reader: aiosqlite.Connection | None
    _writer: GroupCommitWriter | None
    _change: asyncio.Event
    _poller: asyncio.Task[None] | None
    _seq: Iterator[int]
    """Orders journal entries and events written by this process (ties within a millisecond)."""

    def now_ms(self) -> int:
        return self.clock.now_ms()

    @property
    def commits(self) -> int:
        """How many write transactions this process committed (for benchmarks)."""
        return self._writer.commits if self._writer else 0

    async def _write(self, op: Callable[[Conn], T], *, notify: bool = True) -> T:
        if self._writer is None:
            raise ConfigurationError("the storage is not open")
        result = await self._writer.run(op)
        if notify:
            self._notify()
        return result

    async def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise ConfigurationError("the storage is not open")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _fence(self, conn: Conn, run_id: str, epoch: int) -> int:
        """Refuse the write unless this epoch still holds the run; returns the run's depth."""
        rows = conn.execute(
            "SELECT status, lease_epoch, depth FROM runs WHERE id = ?", (run_id,)
        ).fetchall()
        row = _first_or_none(rows)
        if row is None or row["status"] != "EXECUTING" or row["lease_epoch"] != epoch:
            raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")
        return int(row["depth"])

    def _journal(self, conn: Conn, write: JournalWrite, value: Any) -> None:
        conn.execute(
            "INSERT INTO journal (run_id, key, attempt, position, is_error, value, duration_ms,"
            " seq, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                write.run_id,
                write.key,
                write.attempt,
                write.position,
                int(write.is_error),
                dump_json(value, f"the result of {write.key}"),
                write.duration_ms,
                next(self._seq),
                self.now_ms(),
            ),
        )
        crash_point("journal.before_commit")

    def _wait(
        self, conn: Conn, row: sqlite3.Row, journal: JournalWrite, elapsed_ms: int
    ) -> Token | None:
        """Journal the closed waitpoint in ``row`` and return it, or block the run on it."""
        if row["status"] == "WAITING":  # the common case: no Token (and no URL signing) needed
            self._block(conn, journal, {row["id"]: "all"}, elapsed_ms)
            return None
        waitpoint = token_from_row(row, self.signer)
        self._journal(conn, journal, waitpoint.model_dump(mode="json", by_alias=True))
        self._unblock(conn, journal.run_id, [waitpoint.id])
        return waitpoint

    def _closed_when_due(self, conn: Conn, rows: list[sqlite3.Row]) -> list[sqlite3.Row]:
        """``rows`` of waitpoints, those past their deadline closed now as a timer would close
        them: what a wait sees never depends on whether a worker's timer got there first."""
        now = self.now_ms()
        due = [
            r["id"]
            for r in rows
            if r["status"] == "WAITING" and r["timeout_at"] is not None and r["timeout_at"] <= now
        ]
        if not due:
            return rows
        closed = {
            r["id"]: r
            for r in conn.execute(
                TIME_OUT + " WHERE id IN (SELECT value FROM json_each(:ids))"
                " AND status = 'WAITING' RETURNING *",
                {"now": now, "ids": json.dumps(due)},
            ).fetchall()
        }
        self._requeue_blocked(conn, list(closed))
        return [closed.get(r["id"], r) for r in rows]

    def _block(
        self, conn: Conn, journal: JournalWrite, modes: dict[str, str], elapsed_ms: int
    ) -> None:
        """Block the run on waitpoints (``{id: "all" | "any"}``): WAITING, lease kept."""
        now = self.now_ms()
        conn.executemany(
            "INSERT OR IGNORE INTO run_waits (run_id, waitpoint_id, journal_key, mode,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            [(journal.run_id, wid, journal.key, mode, now) for wid, mode in modes.items()],
        )
        # the lease stays with the attempt until it unwound (``release_run``)
        conn.execute(
            "UPDATE runs SET status = 'WAITING', updated_at = ?,"
            " executing_ms = executing_ms + ?, recovery_count = 0 WHERE id = ?",
            (now, elapsed_ms, journal.run_id),
        )
        self._event(conn, [journal.run_id], "waiting", {"on": sorted(modes)})
        crash_point("suspend.before_commit")

    def _unblock(self, conn: Conn, run_id: str, waitpoint_ids: list[str]) -> None:
        conn.execute(
            "DELETE FROM run_waits WHERE run_id = ?"
            " AND waitpoint_id IN (SELECT value FROM json_each(?))",
            (run_id, json.dumps(waitpoint_ids)),
        )

    def _insert_run(
        self, conn: Conn, new: NewRun, parent_key: str | None = None, depth: int = 0
    ) -> sqlite3.Row:
        """Insert a QUEUED (or DELAYED) run; a child carries its parent and the parent's key."""
        now = self.now_ms()
        delayed = new.delayed_until_ms is not None and new.delayed_until_ms > now
        start = new.delayed_until_ms if delayed and new.delayed_until_ms else now
        rows = conn.execute(
            "INSERT INTO runs (id, task_id, status, payload, tags, idempotency_key,"
            " idempotency_key_expires_at, max_attempts, available_at, delayed_until, ttl,"
            " expires_at, metadata, max_duration_ms, parent_run_id, parent_key, depth,"
            " queue, concurrency_key, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (
                new_run_id(),
                new.task_id,
                "DELAYED" if delayed else "QUEUED",
                dump_json(new.payload, "the payload"),
                json.dumps(new.tags),
                new.idempotency_key,
                new.idempotency_key_expires_ms,
                new.max_attempts,
                start,
                start if delayed else None,
                new.ttl,
                None if new.ttl_ms is None else start + new.ttl_ms,
                None if new.metadata is None else dump_json(new.metadata, "the metadata"),
                new.max_duration_ms,
                new.parent_run_id,
                parent_key,
                depth,
                new.queue or new.task_id,
                new.concurrency_key,
                now,
                now,
            ),
        ).fetchall()
        row = _first(rows)
        parent = {"parent": new.parent_run_id} if new.parent_run_id else None
        self._event(conn, [row["id"]], "created", parent)
        return row

    def _event(
        self, conn: Conn, run_ids: list[str], kind: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record a lifecycle event of these runs (their timeline besides the journal)."""
        if not run_ids:
            return
        conn.execute(
            "INSERT INTO run_events (run_id, at, seq, kind, attempt, detail)"
            " SELECT id, :now, :seq, :kind, attempt_count, :detail FROM runs"
            " WHERE id IN (SELECT value FROM json_each(:ids))",
            {
                "now": self.now_ms(),
                "seq": next(self._seq),
                "kind": kind,
                "detail": None if detail is None else json.dumps(detail),
                "ids": json.dumps(run_ids),
            },
        )

    def _runs_finished(self, conn: Conn, run_ids: list[str]) -> None:
        """Runs reached a final status: they wait on nothing, and their parents may go on."""
        if not run_ids:
            return
        ids = json.dumps(run_ids)
        conn.execute(
            "DELETE FROM run_waits WHERE run_id IN (SELECT value FROM json_each(?))", (ids,)
        )
        closed = conn.execute(_CLOSE_RUN_WAITPOINTS, {"now": self.now_ms(), "ids": ids}).fetchall()
        if closed:
            self._requeue_blocked(conn, [r["id"] for r in closed])

    def _requeue_blocked(self, conn: Conn, waitpoint_ids: Iterable[str]) -> None:
        ids = json.dumps(list(waitpoint_ids))
        conn.execute(_REQUEUE_BLOCKED, {"now": self.now_ms(), "ids": ids})

    async def _page(
        self, table: str, where: list[str], params: list[Any], page: PageRequest
    ) -> tuple[list[sqlite3.Row], str | None, str | None]:
        """One page, newest first, with the cursors of the older and the newer pages."""
        if page.before is not None:
            clause = " AND ".join([*where, "id > ?"])
            rows = await self._read(
                f"SELECT * FROM {table} WHERE {clause} ORDER BY id ASC LIMIT ?",
                [*params, page.before, page.limit + 1],
            )
            return page_slice(rows, page.limit, before=True, after=False)
        if page.after is not None:
            where = [*where, "id < ?"]
            params = [*params, page.after]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT * FROM {table} {clause} ORDER BY id DESC LIMIT ?", [*params, page.limit + 1]
        )
        return page_slice(rows, page.limit, before=False, after=page.after is not None)

    def change_event(self) -> asyncio.Event:
        """An event set at the next commit that may have made work (here or in another process).

        Take it *before* looking for work, then wait on it: nothing committed in between is
        missed.
        """
        if self._poller is None and self._reader is not None:
            self._poller = asyncio.create_task(self._poll_data_version(), name="waitpoint-poll")
        return self._change

    async def wait_for_change(self, timeout: float) -> None:
        event = self.change_event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _notify(self) -> None:
        event, self._change = self._change, asyncio.Event()
        event.set()

    async def _poll_data_version(self) -> None:
        """``PRAGMA data_version`` moves when any other connection commits to the file."""
        last: int | None = None
        while self._reader is not None:
            try:
                rows = await self._read("PRAGMA data_version")
            except Exception:  # closing; the loop ends with the reader
                return
            version = int(rows[0][0])
            if last is not None and version != last:
                self._notify()
            last = version
            await asyncio.sleep(_POLL_SECONDS)


def _first_or_none(rows: Iterable[sqlite3.Row]) -> sqlite3.Row | None:
    for row in rows:
        return row
    return None


def _first(rows: Iterable[sqlite3.Row]) -> sqlite3.Row:
    row = _first_or_none(rows)
    if row is None:
        raise StorageError("the database returned no row where one was expected")
    return row


def _common_filters(
    statuses: list[str],
    tags: list[str],
    created_from_ms: int | None,
    created_to_ms: int | None,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if statuses:
        where.append("status IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(statuses))
    if tags:
        where.append(
            "EXISTS (SELECT 1 FROM json_each(tags) t"
            " WHERE t.value IN (SELECT value FROM json_each(?)))"
        )
        params.append(json.dumps(tags))
    if created_from_ms is not None:
        where.append("created_at >= ?")
        params.append(created_from_ms)
    if created_to_ms is not None:
        where.append("created_at <= ?")
        params.append(created_to_ms)
    return where, params
