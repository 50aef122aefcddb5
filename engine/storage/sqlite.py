"""SQLite storage: WAL, ``BEGIN IMMEDIATE`` for every write, group commit, one file per engine.

Two connections per process: the writer (every write goes through ``GroupCommitWriter``) and
a reader (WAL lets it read while the writer writes). Several processes may share one file:
``busy_timeout`` plus the writer's retry on ``BEGIN IMMEDIATE`` keep "database is locked" from
reaching a caller, and ``PRAGMA data_version`` tells a process that another one committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio.to_thread

from ..callbacks import CallbackSigner
from ..clock import Clock, SystemClock, from_ms
from ..errors import (
    ConfigurationError,
    LeaseLostError,
    RunNotFoundError,
    StorageError,
    TokenNotFoundError,
    TokenNotWaitingError,
)
from ..ids import new_run_id, new_token_id
from ..models import (
    ClaimedRun,
    CompletionResult,
    CompletionSource,
    JournalEntry,
    LateCompletion,
    Page,
    Run,
    RunError,
    RunStatus,
    TaskInfo,
    Token,
    WaitpointStatus,
)
from .base import JournalWrite, NewRun, NewToken, PageRequest, RunFilter, TokenFilter
from .records import dump_json, journal_from_row, load_json, run_from_row, token_from_row
from .sqlite_schema import MIGRATIONS
from .writer import GroupCommitWriter, translate

T = TypeVar("T")
Conn = sqlite3.Connection

_POLL_SECONDS = 0.05
_REQUEUE_BLOCKED = """
    UPDATE runs SET status = 'QUEUED', available_at = :now, updated_at = :now
    WHERE status = 'WAITING'
      AND id IN (SELECT run_id FROM run_waits
                 WHERE waitpoint_id IN (SELECT value FROM json_each(:ids)))
      AND NOT EXISTS (SELECT 1 FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id
                      WHERE rw.run_id = runs.id AND w.status = 'WAITING')
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` to a path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    path = url[len(prefix) :]
    if not path or path == ":memory:":
        raise ConfigurationError(
            "SQLite needs a file (workers and clients share it); use sqlite:///path/to/file.db"
        )
    return Path(path)


class SQLiteStorage:
    """The embedded default backend."""

    def __init__(
        self,
        url: str,
        *,
        public_url: str,
        signing_secret: str | None = None,
        synchronous: str = "FULL",
        clock: Clock | None = None,
    ) -> None:
        self.path = sqlite_path(url)
        self._public_url = public_url
        self._secret = signing_secret
        self._synchronous = synchronous.upper()
        if self._synchronous not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigurationError("synchronous must be FULL, EXTRA or NORMAL")
        self.clock: Clock = clock or SystemClock()
        self._writer_conn: Conn | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        self._change = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.signer = CallbackSigner(public_url, signing_secret or "")

    # lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer_conn = await anyio.to_thread.run_sync(self._open_writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            for pragma in _pragmas(self._synchronous):
                await self._reader.execute(pragma)
            if self._secret is None:
                rows = await self._reader.execute_fetchall(
                    "SELECT value FROM meta WHERE key = 'signing_secret'"
                )
                self.signer = CallbackSigner(self._public_url, _first(rows)["value"])
        except sqlite3.Error as exc:
            await self.close()
            raise translate(exc) from exc
        self._writer = GroupCommitWriter(self._writer_conn)
        self._writer.start()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def _open_writer(self) -> sqlite3.Connection:
        """The writer connection (used by one thread at a time), with migrations applied."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            for pragma in _pragmas(self._synchronous):
                conn.execute(pragma)
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def now_ms(self) -> int:
        return self.clock.now_ms()

    @property
    def commits(self) -> int:
        """How many write transactions this process committed (for benchmarks)."""
        return self._writer.commits if self._writer else 0

    # plumbing ----------------------------------------------------------------------------

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

    def _fence(self, conn: Conn, run_id: str, epoch: int) -> None:
        rows = conn.execute(
            "SELECT status, lease_epoch FROM runs WHERE id = ?", (run_id,)
        ).fetchall()
        row = _first_or_none(rows)
        if row is None or row["status"] != "EXECUTING" or row["lease_epoch"] != epoch:
            raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")

    def _journal(self, conn: Conn, write: JournalWrite, value: Any) -> None:
        conn.execute(
            "INSERT INTO journal (run_id, key, attempt, position, is_error, value, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                write.run_id,
                write.key,
                write.attempt,
                write.position,
                int(write.is_error),
                dump_json(value, f"the result of {write.key}"),
                self.now_ms(),
            ),
        )

    def _requeue_blocked(self, conn: Conn, waitpoint_ids: Iterable[str]) -> None:
        ids = json.dumps(list(waitpoint_ids))
        conn.execute(_REQUEUE_BLOCKED, {"now": self.now_ms(), "ids": ids})

    # tasks -------------------------------------------------------------------------------

    async def register_tasks(self, tasks: list[TaskInfo]) -> None:
        now = self.now_ms()
        rows = [
            (t.id, None if t.payload_schema is None else dump_json(t.payload_schema), now)
            for t in tasks
        ]

        def op(conn: Conn) -> None:
            conn.executemany(
                "INSERT INTO tasks (id, payload_schema, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET payload_schema = excluded.payload_schema,"
                " updated_at = excluded.updated_at",
                rows,
            )

        await self._write(op, notify=False)

    async def list_tasks(self) -> list[TaskInfo]:
        rows = await self._read("SELECT id, payload_schema FROM tasks ORDER BY id")
        return [TaskInfo(r["id"], load_json(r["payload_schema"])) for r in rows]

    # runs --------------------------------------------------------------------------------

    async def create_run(self, new: NewRun) -> Run:
        payload = dump_json(new.payload, "the payload")
        tags = json.dumps(new.tags)
        metadata = None if new.metadata is None else dump_json(new.metadata, "the metadata")

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
            delayed = new.delayed_until_ms is not None and new.delayed_until_ms > now
            start = new.delayed_until_ms if delayed and new.delayed_until_ms else now
            rows = conn.execute(
                "INSERT INTO runs (id, task_id, status, payload, tags, idempotency_key,"
                " idempotency_key_expires_at, max_attempts, available_at, delayed_until, ttl,"
                " expires_at, metadata, max_duration_ms, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    new_run_id(),
                    new.task_id,
                    "DELAYED" if delayed else "QUEUED",
                    payload,
                    tags,
                    new.idempotency_key,
                    new.idempotency_key_expires_ms,
                    new.max_attempts,
                    start,
                    start if delayed else None,
                    new.ttl,
                    None if new.ttl_ms is None else start + new.ttl_ms,
                    metadata,
                    new.max_duration_ms,
                    now,
                    now,
                ),
            ).fetchall()
            return run_from_row(_first(rows))

        return await self._write(op)

    async def get_run(self, run_id: str) -> Run:
        rows = await self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        waits = await self._waiting_on([run_id])
        return run_from_row(rows[0], waits.get(run_id))

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
            newer = len(rows) > page.limit
            rows = rows[: page.limit][::-1]
            if not rows:
                return [], None, None
            return rows, rows[-1]["id"], rows[0]["id"] if newer else None
        if page.after is not None:
            where = [*where, "id < ?"]
            params = [*params, page.after]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT * FROM {table} {clause} ORDER BY id DESC LIMIT ?", [*params, page.limit + 1]
        )
        older = len(rows) > page.limit
        rows = rows[: page.limit]
        if not rows:
            return [], None, None
        previous = rows[0]["id"] if page.after is not None else None
        return rows, rows[-1]["id"] if older else None, previous

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        await self.get_run(run_id)  # RunNotFoundError for an unknown id
        rows = await self._read(
            "SELECT * FROM journal WHERE run_id = ? ORDER BY created_at, position", (run_id,)
        )
        return [journal_from_row(r) for r in rows]

    async def cancel_run(self, run_id: str) -> Run:
        def op(conn: Conn) -> None:
            now = self.now_ms()
            rows = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchall()
            row = _first_or_none(rows)
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            if RunStatus(row["status"]).is_terminal:
                return
            conn.execute(
                "UPDATE runs SET status = 'CANCELED', finished_at = ?, updated_at = ?,"
                " lease_owner = NULL, lease_expires_at = NULL, lease_epoch = lease_epoch + 1"
                " WHERE id = ?",
                (now, now, run_id),
            )
            conn.execute("DELETE FROM run_waits WHERE run_id = ?", (run_id,))

        await self._write(op)
        return await self.get_run(run_id)

    async def claim_runs(
        self, owner: str, limit: int, lease_ms: int, task_ids: list[str]
    ) -> list[ClaimedRun]:
        tasks = json.dumps(task_ids)

        def op(conn: Conn) -> list[ClaimedRun]:
            now = self.now_ms()
            rows = conn.execute(
                "UPDATE runs SET status = 'EXECUTING', lease_owner = :owner,"
                " lease_epoch = lease_epoch + 1, lease_expires_at = :expires,"
                " attempt_count = max(attempt_count, 1), started_at = coalesce(started_at, :now),"
                " updated_at = :now"
                " WHERE id IN (SELECT id FROM runs WHERE status = 'QUEUED' AND available_at <= :now"
                "              AND task_id IN (SELECT value FROM json_each(:tasks))"
                "              AND (expires_at IS NULL OR expires_at > :now)"
                "              ORDER BY available_at, id LIMIT :limit)"
                " RETURNING id, task_id, payload, attempt_count, lease_epoch, max_attempts,"
                " executing_ms, max_duration_ms",
                {
                    "owner": owner,
                    "expires": now + lease_ms,
                    "now": now,
                    "limit": limit,
                    "tasks": tasks,
                },
            ).fetchall()
            if not rows:
                return []
            ids = json.dumps([r["id"] for r in rows])
            entries = conn.execute(
                "SELECT * FROM journal WHERE run_id IN (SELECT value FROM json_each(?))"
                " ORDER BY position, attempt",
                (ids,),
            ).fetchall()
            journals: dict[str, list[Any]] = {}
            for entry in entries:
                journals.setdefault(entry["run_id"], []).append(journal_from_row(entry))
            return [
                ClaimedRun(
                    id=r["id"],
                    task_id=r["task_id"],
                    payload=load_json(r["payload"]),
                    attempt=r["attempt_count"],
                    epoch=r["lease_epoch"],
                    max_attempts=r["max_attempts"],
                    executed_ms=r["executing_ms"],
                    max_duration_ms=r["max_duration_ms"],
                    journal=journals.get(r["id"], []),
                )
                for r in rows
            ]

        return await self._write(op, notify=False)

    async def renew_leases(self, owner: str, run_ids: list[str], lease_ms: int) -> None:
        def op(conn: Conn) -> None:
            conn.execute(
                "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ?"
                " AND status = 'EXECUTING' AND id IN (SELECT value FROM json_each(?))",
                (self.now_ms() + lease_ms, owner, json.dumps(run_ids)),
            )

        await self._write(op, notify=False)

    async def release_run(self, run_id: str, epoch: int) -> None:
        def op(conn: Conn) -> None:
            now = self.now_ms()
            conn.execute(
                "UPDATE runs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                " available_at = ?, updated_at = ?"
                " WHERE id = ? AND lease_epoch = ? AND status = 'EXECUTING'",
                (now, now, run_id, epoch),
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
            cursor = conn.execute(
                "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ?,"
                " updated_at = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " executing_ms = executing_ms + ?"
                " WHERE id = ? AND lease_epoch = ? AND status = 'EXECUTING'",
                (status.value, output_json, error_json, now, now, elapsed_ms, run_id, epoch),
            )
            if cursor.rowcount == 0:
                raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")

        await self._write(op)

    async def retry_run(
        self, run_id: str, epoch: int, delay_ms: int, error: RunError, elapsed_ms: int = 0
    ) -> None:
        def op(conn: Conn) -> None:
            now = self.now_ms()
            cursor = conn.execute(
                "UPDATE runs SET status = 'QUEUED', available_at = ?, updated_at = ?,"
                " attempt_count = attempt_count + 1, error = ?, executing_ms = executing_ms + ?,"
                " lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND lease_epoch = ? AND status = 'EXECUTING'",
                (
                    now + delay_ms,
                    now,
                    error.model_dump_json(by_alias=True),
                    elapsed_ms,
                    run_id,
                    epoch,
                ),
            )
            if cursor.rowcount == 0:
                raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")

        await self._write(op)

    # tokens ------------------------------------------------------------------------------

    async def create_token(self, new: NewToken, journal: JournalWrite | None = None) -> Token:
        schema = None if new.data_schema is None else dump_json(new.data_schema)

        def op(conn: Conn) -> Token:
            now = self.now_ms()
            if journal is not None:
                self._fence(conn, journal.run_id, journal.epoch)
            token = self._existing_token(conn, new.idempotency_key, now)
            if token is None:
                rows = conn.execute(
                    "INSERT INTO waitpoints (id, status, tags, idempotency_key,"
                    " idempotency_key_expires_at, ttl, timeout_at, created_at, data_schema,"
                    " created_by_run) VALUES (?, 'WAITING', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        new_token_id(),
                        json.dumps(new.tags),
                        new.idempotency_key,
                        new.idempotency_key_expires_ms,
                        new.ttl,
                        new.timeout_ms,
                        now,
                        schema,
                        journal.run_id if journal else None,
                    ),
                ).fetchall()
                token = token_from_row(_first(rows), self.signer)
            if journal is not None:
                self._journal(conn, journal, token.model_dump(mode="json", by_alias=True))
            return token

        return await self._write(op)

    def _existing_token(self, conn: Conn, key: str | None, now: int) -> Token | None:
        """The live token created with this idempotency key; an expired key is let go."""
        if key is None:
            return None
        rows = conn.execute("SELECT * FROM waitpoints WHERE idempotency_key = ?", (key,)).fetchall()
        row = _first_or_none(rows)
        if row is None:
            return None
        expires = row["idempotency_key_expires_at"]
        if expires is None or expires > now:
            return token_from_row(row, self.signer).model_copy(update={"is_cached": True})
        conn.execute("UPDATE waitpoints SET idempotency_key = NULL WHERE id = ?", (row["id"],))
        return None

    async def get_token(self, token_id: str) -> Token:
        rows = await self._read("SELECT * FROM waitpoints WHERE id = ?", (token_id,))
        if not rows:
            raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
        token = token_from_row(rows[0], self.signer)
        if token.is_waiting:
            return token
        late = await self._read(
            "SELECT via, attempted_at FROM late_completions WHERE token_id = ?"
            " ORDER BY attempted_at",
            (token_id,),
        )
        if not late:
            return token
        attempts = [
            LateCompletion(via=CompletionSource(r["via"]), at=from_ms(r["attempted_at"]))
            for r in late
        ]
        return token.model_copy(update={"late_completions": attempts})

    # API request replays -------------------------------------------------------------------

    async def get_request_reply(self, key: str, route: str) -> Any:
        """The reply stored for a request idempotency key on this route, or None."""
        rows = await self._read(
            "SELECT reply FROM request_replies WHERE key = ? AND route = ?", (key, route)
        )
        return load_json(rows[0]["reply"]) if rows else None

    async def save_request_reply(self, key: str, route: str, reply: Any) -> None:
        """Keep a reply for 24 hours so that a retried request gets the same answer."""
        text = dump_json(reply)

        def op(conn: Conn) -> None:
            now = self.now_ms()
            conn.execute("DELETE FROM request_replies WHERE created_at < ?", (now - 86_400_000,))
            conn.execute(
                "INSERT OR IGNORE INTO request_replies (key, route, reply, created_at)"
                " VALUES (?, ?, ?, ?)",
                (key, route, text, now),
            )

        await self._write(op, notify=False)

    async def list_tokens(self, filter: TokenFilter, page: PageRequest) -> Page[Token]:
        where, params = _common_filters(
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.idempotency_key is not None:
            where.append("idempotency_key = ?")
            params.append(filter.idempotency_key)
        rows, next_cursor, previous_cursor = await self._page("waitpoints", where, params, page)
        tokens = [token_from_row(r, self.signer) for r in rows]
        return Page(data=tokens, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def complete_token(
        self, token_id: str, data: Any, source: CompletionSource
    ) -> CompletionResult:
        return await self._close_token(
            token_id, WaitpointStatus.COMPLETED, dump_json(data, "the completion data"), source
        )

    async def cancel_token(self, token_id: str, source: CompletionSource) -> CompletionResult:
        data = {"code": "WAITPOINT_CANCELLED", "message": f"Waitpoint {token_id} was cancelled"}
        return await self._close_token(token_id, WaitpointStatus.CANCELLED, dump_json(data), source)

    async def _close_token(
        self, token_id: str, status: WaitpointStatus, data: str, source: CompletionSource
    ) -> CompletionResult:
        """First writer wins: close a WAITING token and re-queue the runs it unblocks.

        A completion that finds the token timed out or cancelled is refused, and the attempt
        is recorded on the token (the refusal is raised after that record committed).
        """

        def op(conn: Conn) -> CompletionResult | TokenNotWaitingError:
            rows = conn.execute(
                "UPDATE waitpoints SET status = ?, data = ?, completed_at = ?, completed_via = ?"
                " WHERE id = ? AND status = 'WAITING' RETURNING *",
                (status.value, data, self.now_ms(), source.value, token_id),
            ).fetchall()
            row = _first_or_none(rows)
            if row is not None:
                self._requeue_blocked(conn, [token_id])
                return CompletionResult(applied=True, token=token_from_row(row, self.signer))
            rows = conn.execute("SELECT * FROM waitpoints WHERE id = ?", (token_id,)).fetchall()
            row = _first_or_none(rows)
            if row is None:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            token = token_from_row(row, self.signer)
            if token.status is status:
                return CompletionResult(applied=False, token=token)
            if status is WaitpointStatus.COMPLETED:
                conn.execute(
                    "INSERT INTO late_completions (token_id, via, attempted_at) VALUES (?, ?, ?)",
                    (token_id, source.value, self.now_ms()),
                )
            return TokenNotWaitingError(token_id, token.status.value, token.completed_at)

        outcome = await self._write(op)
        if isinstance(outcome, TokenNotWaitingError):
            raise outcome
        return outcome

    async def wait_on_token(
        self, token_id: str, journal: JournalWrite, elapsed_ms: int = 0
    ) -> Token | None:
        def op(conn: Conn) -> Token | None:
            self._fence(conn, journal.run_id, journal.epoch)
            rows = conn.execute("SELECT * FROM waitpoints WHERE id = ?", (token_id,)).fetchall()
            row = _first_or_none(rows)
            if row is None:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            token = token_from_row(row, self.signer)
            now = self.now_ms()
            if not token.is_waiting:
                self._journal(conn, journal, token.model_dump(mode="json", by_alias=True))
                conn.execute(
                    "DELETE FROM run_waits WHERE run_id = ? AND waitpoint_id = ?",
                    (journal.run_id, token_id),
                )
                return token
            conn.execute(
                "INSERT OR IGNORE INTO run_waits (run_id, waitpoint_id, journal_key, created_at)"
                " VALUES (?, ?, ?, ?)",
                (journal.run_id, token_id, journal.key, now),
            )
            conn.execute(
                "UPDATE runs SET status = 'WAITING', lease_owner = NULL, lease_expires_at = NULL,"
                " updated_at = ?, executing_ms = executing_ms + ? WHERE id = ?",
                (now, elapsed_ms, journal.run_id),
            )
            return None

        return await self._write(op, notify=False)

    # scheduling --------------------------------------------------------------------------

    async def fire_due_timers(self, limit: int) -> int:
        return await self._start_delayed_runs() + await self._time_out_tokens(limit)

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
                " WHERE status IN ('QUEUED', 'DELAYED') AND expires_at <= :now",
                {"now": now},
            ).rowcount
            queued = conn.execute(
                "UPDATE runs SET status = 'QUEUED', updated_at = :now"
                " WHERE status = 'DELAYED' AND available_at <= :now",
                {"now": now},
            ).rowcount
            return int(expired + queued)

        return await self._write(op)

    async def _time_out_tokens(self, limit: int) -> int:
        now = self.now_ms()
        if not await self._read(
            "SELECT 1 FROM waitpoints WHERE status = 'WAITING' AND timeout_at <= ? LIMIT 1",
            (now,),
        ):
            return 0

        def op(conn: Conn) -> int:
            now = self.now_ms()
            rows = conn.execute(
                "UPDATE waitpoints SET status = 'TIMED_OUT', completed_at = :now,"
                " completed_via = 'timeout', data = json_object("
                "   'code', 'TRIGGER_WAITPOINT_TIMEOUT',"
                "   'message', 'Waitpoint timed out at '"
                "     || strftime('%Y-%m-%dT%H:%M:%fZ', timeout_at / 1000.0, 'unixepoch'))"
                " WHERE id IN (SELECT id FROM waitpoints WHERE status = 'WAITING'"
                "              AND timeout_at <= :now ORDER BY timeout_at LIMIT :limit)"
                " RETURNING id",
                {"now": now, "limit": limit},
            ).fetchall()
            ids = [r["id"] for r in rows]
            if ids:
                self._requeue_blocked(conn, ids)
            return len(ids)

        return await self._write(op)

    async def rescue_expired_leases(self) -> int:
        now = self.now_ms()
        if not await self._read(
            "SELECT 1 FROM runs WHERE status = 'EXECUTING' AND lease_expires_at < ? LIMIT 1",
            (now,),
        ):
            return 0

        def op(conn: Conn) -> int:
            now = self.now_ms()
            cursor = conn.execute(
                "UPDATE runs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                " available_at = ?, updated_at = ?, recovery_count = recovery_count + 1"
                " WHERE status = 'EXECUTING' AND lease_expires_at < ?",
                (now, now, now),
            )
            return cursor.rowcount

        return await self._write(op)

    async def next_timer_ms(self) -> int | None:
        rows = await self._read(
            "SELECT min(t) AS t FROM ("
            " SELECT min(timeout_at) AS t FROM waitpoints"
            "  WHERE status = 'WAITING' AND timeout_at IS NOT NULL"
            " UNION ALL SELECT min(available_at) FROM runs WHERE status = 'DELAYED'"
            " UNION ALL SELECT min(expires_at) FROM runs"
            "  WHERE status IN ('QUEUED', 'DELAYED') AND expires_at IS NOT NULL)"
        )
        value = rows[0]["t"] if rows else None
        return None if value is None else int(value)

    async def has_due_runs(self, task_ids: list[str]) -> bool:
        rows = await self._read(
            "SELECT 1 FROM runs WHERE status = 'QUEUED' AND available_at <= ?"
            " AND task_id IN (SELECT value FROM json_each(?)) LIMIT 1",
            (self.now_ms(), json.dumps(task_ids)),
        )
        return bool(rows)

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


def _pragmas(synchronous: str) -> list[str]:
    return [
        "PRAGMA busy_timeout = 5000",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {synchronous}",
    ]


def _migrate(conn: Conn) -> None:
    """Apply pending migrations; ``BEGIN IMMEDIATE`` serialises processes starting at once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _first(conn.execute("PRAGMA user_version").fetchall())[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if number == 1:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('signing_secret', ?)",
                    (secrets.token_hex(32),),
                )
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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


__all__ = ["SQLiteStorage", "from_ms", "sqlite_path"]
