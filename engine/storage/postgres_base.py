"""What every PostgreSQL operation stands on: short transactions, row locks, the clock, paging.

Each write operation is an ``async def op(conn, now)`` run in one READ COMMITTED transaction
on a pooled connection, where ``now`` is the database's clock read at the start of the
transaction: leases and timers never depend on the clocks of the machines the workers run on.
Concurrency is handled by row locks taken in the transaction, not by serialising writers:

- a run's row is locked by the fence (``FOR UPDATE``) of every write its lease holder makes,
  and by every change made from outside (cancel, rescue, re-queue), so a lease that moved on
  is seen;
- a run that blocks on a waitpoint locks that waitpoint's row (``FOR SHARE``) and a completion
  locks the rows of the runs it may re-queue before it looks at their other waitpoints, so a
  completion can never miss a run that is blocking at the same moment (a lost wake-up).

A transaction that deadlocks or loses an idempotency-key race is retried from the start.
Committed writes that may have made work send one ``NOTIFY`` per transaction; listeners treat
it as a hint (``postgres.py`` polls too).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from ..callbacks import CallbackSigner
from ..clock import Clock
from ..errors import (
    ConfigurationError,
    EngineError,
    LeaseLostError,
    StorageError,
    StorageUnavailableError,
)
from ..faults import crash_point
from ..ids import new_run_id
from ..models import Token
from .base import JournalWrite, NewRun, PageRequest
from .records import dump_json, page_slice, token_from_row

T = TypeVar("T")
if TYPE_CHECKING:
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:  # the driver's classes are not generic at run time
    Conn = PoolConnectionProxy
Op = Callable[[Conn, int], Awaitable[T]]
Row = asyncpg.Record

log = structlog.get_logger("engine.storage")

NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,  # two first-time creations with one key: one wins
)
_MAX_TRIES = 8
# the server cannot take us right now: nothing was done, so trying again (for a while) is safe
_UNREACHABLE = (
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    OSError,
)
_UNREACHABLE_SECONDS = 15.0
FINAL = "('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT', 'EXPIRED', 'CRASHED')"

# runs whose waitpoints may have closed: locked first (see the module docstring), then
# re-queued when one of their 'any' waitpoints closed or none of their 'all' ones still waits
# (OFFSET 0 keeps the edge lookup a subquery of its own: joined, PostgreSQL scanned every
# waiting run for each completion)
_LOCK_BLOCKED = """
    SELECT id FROM runs WHERE status = 'WAITING'
      AND id IN (SELECT run_id FROM run_waits WHERE waitpoint_id = ANY($1::text[]) OFFSET 0)
    ORDER BY id FOR UPDATE
"""
_REQUEUE_BLOCKED = """
    UPDATE runs SET status = 'QUEUED', available_at = $3, updated_at = $3
    WHERE id = ANY($2::text[]) AND status = 'WAITING'
      AND (EXISTS (SELECT 1 FROM run_waits rw
                   WHERE rw.run_id = runs.id AND rw.mode = 'any'
                     AND rw.waitpoint_id = ANY($1::text[]))
           OR NOT EXISTS (SELECT 1 FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id
                          WHERE rw.run_id = runs.id AND rw.mode = 'all'
                            AND w.status = 'WAITING'))
"""
_CLOSE_RUN_WAITPOINTS = """
    UPDATE waitpoints SET status = 'COMPLETED', completed_at = $2,
        data = (SELECT json_build_object('runId', r.id, 'status', r.status,
                                         'output', r.output::json, 'error', r.error::json)::text
                FROM runs r WHERE r.id = waitpoints.child_run_id)
    WHERE kind = 'RUN' AND status = 'WAITING' AND child_run_id = ANY($1::text[])
    RETURNING id
"""


class Params:
    """Numbered placeholders for SQL built from optional parts: ``p(value)`` gives ``$n``."""

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def affected(status: str) -> int:
    """The row count of an ``execute`` status such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def translate(exc: BaseException) -> Exception:
    """Driver errors become ``StorageError``; the engine's own errors pass through."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, (*_UNREACHABLE, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
        return StorageUnavailableError(f"PostgreSQL unavailable: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"PostgreSQL error: {exc}")
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))


# a token's deadline is a timeout; a sleep's deadline is its completion
TIME_OUT = (
    "UPDATE waitpoints SET completed_at = $1,"
    " status = CASE kind WHEN 'DATETIME' THEN 'COMPLETED' ELSE 'TIMED_OUT' END,"
    " completed_via = CASE kind WHEN 'DATETIME' THEN NULL ELSE 'timeout' END,"
    " data = CASE kind WHEN 'DATETIME' THEN NULL ELSE json_build_object("
    "   'code', 'TRIGGER_WAITPOINT_TIMEOUT',"
    "   'message', 'Waitpoint timed out at ' || to_char(to_timestamp(timeout_at / 1000.0)"
    "     AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text END"
)


class PostgresBase:
    """The pool, the transaction runner and the plumbing shared by the operations."""

    clock: Clock | None
    signer: CallbackSigner
    _pool: asyncpg.Pool[asyncpg.Record] | None
    _control: asyncpg.Pool[asyncpg.Record] | None
    """A small pool of its own for claims, leases and timers: they never queue behind the
    writes of a hundred running attempts (a renewal that waits too long loses the lease)."""
    _channel: str
    _change: asyncio.Event
    _offset_ms: int
    commits: int

    def now_ms(self) -> int:
        """The database's clock: this machine's clock corrected by the offset last measured."""
        if self.clock is not None:
            return self.clock.now_ms()
        return int(time.time() * 1000) + self._offset_ms

    def _require_pool(self, control: bool = False) -> asyncpg.Pool[asyncpg.Record]:
        pool = self._control if control else self._pool
        if pool is None:
            raise ConfigurationError("the storage is not open")
        return pool

    async def _write(self, op: Op[T], *, notify: bool = True, control: bool = False) -> T:
        """Run ``op`` in its own transaction; a cancelled caller does not abandon it half-way."""
        return await asyncio.shield(self._transaction(op, notify, control))

    async def _transaction(self, op: Op[T], notify: bool, control: bool) -> T:
        pool = self._require_pool(control)
        delay = 0.002
        tries = 0
        unreachable_since: float | None = None
        while True:
            tries += 1
            began = False
            try:
                async with pool.acquire() as conn, conn.transaction():
                    began = True
                    now = await self._transaction_now(conn)
                    result = await op(conn, now)
                    if notify:
                        await conn.execute("SELECT pg_notify($1, '')", self._channel)
                    crash_point("commit.before")
            except _RETRYABLE as exc:
                if tries == _MAX_TRIES:
                    raise StorageError(f"PostgreSQL error after {tries} tries: {exc}") from exc
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.1)
                continue
            except _UNREACHABLE as exc:
                moment = time.monotonic()
                unreachable_since = unreachable_since or moment
                if began or moment - unreachable_since > _UNREACHABLE_SECONDS:
                    raise translate(exc) from exc
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
                continue
            except EngineError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise translate(exc) from exc
            crash_point("commit.after")
            self.commits += 1
            if notify:
                self._notify()
            return result

    async def _transaction_now(self, conn: Conn) -> int:
        if self.clock is not None:
            return self.clock.now_ms()
        return int(await conn.fetchval(f"SELECT {NOW_MS}"))

    async def _read(self, sql: str, *args: Any, control: bool = False) -> list[Row]:
        try:
            return await self._require_pool(control).fetch(sql, *args)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise translate(exc) from exc

    async def _fence(self, conn: Conn, run_id: str, epoch: int) -> int:
        """Refuse the write unless this epoch still holds the run; returns the run's depth."""
        row = await conn.fetchrow(
            "SELECT status, lease_epoch, depth FROM runs WHERE id = $1 FOR UPDATE", run_id
        )
        if row is None or row["status"] != "EXECUTING" or row["lease_epoch"] != epoch:
            raise LeaseLostError(f"run {run_id}: lease epoch {epoch} is no longer current")
        return int(row["depth"])

    async def _journal(self, conn: Conn, write: JournalWrite, value: Any, now: int) -> None:
        await conn.execute(
            "INSERT INTO journal (run_id, key, attempt, position, is_error, value, duration_ms,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            write.run_id,
            write.key,
            write.attempt,
            write.position,
            write.is_error,
            dump_json(value, f"the result of {write.key}"),
            write.duration_ms,
            now,
        )
        crash_point("journal.before_commit")

    async def _wait(
        self, conn: Conn, row: Row, journal: JournalWrite, elapsed_ms: int, now: int
    ) -> Token | None:
        """Journal the closed waitpoint in ``row`` and return it, or block the run on it."""
        if row["status"] == "WAITING":
            await self._block(conn, journal, {row["id"]: "all"}, elapsed_ms, now)
            return None
        waitpoint = token_from_row(row, self.signer)
        await self._journal(conn, journal, waitpoint.model_dump(mode="json", by_alias=True), now)
        await self._unblock(conn, journal.run_id, [waitpoint.id])
        return waitpoint

    async def _closed_when_due(self, conn: Conn, rows: list[Row], now: int) -> list[Row]:
        """``rows`` of waitpoints, those past their deadline closed now as a timer would close
        them: what a wait sees never depends on whether a worker's timer got there first."""
        due = [
            r["id"]
            for r in rows
            if r["status"] == "WAITING" and r["timeout_at"] is not None and r["timeout_at"] <= now
        ]
        if not due:
            return rows
        closed = {
            r["id"]: r
            for r in await conn.fetch(
                TIME_OUT + " WHERE id = ANY($2::text[]) AND status = 'WAITING' RETURNING *",
                now,
                due,
            )
        }
        await self._requeue_blocked(conn, list(closed), now)
        return [closed.get(r["id"], r) for r in rows]

    async def _block(
        self, conn: Conn, journal: JournalWrite, modes: dict[str, str], elapsed_ms: int, now: int
    ) -> None:
        """Block the run on waitpoints (``{id: "all" | "any"}``): WAITING, lease kept."""
        await conn.executemany(
            "INSERT INTO run_waits (run_id, waitpoint_id, journal_key, mode, created_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(journal.run_id, wid, journal.key, mode, now) for wid, mode in modes.items()],
        )
        # the lease stays with the attempt until it unwound (``release_run``)
        await conn.execute(
            "UPDATE runs SET status = 'WAITING', updated_at = $1,"
            " executing_ms = executing_ms + $2, recovery_count = 0 WHERE id = $3",
            now,
            elapsed_ms,
            journal.run_id,
        )
        await self._event(conn, [journal.run_id], "waiting", now, {"on": sorted(modes)})
        crash_point("suspend.before_commit")

    async def _unblock(self, conn: Conn, run_id: str, waitpoint_ids: list[str]) -> None:
        await conn.execute(
            "DELETE FROM run_waits WHERE run_id = $1 AND waitpoint_id = ANY($2::text[])",
            run_id,
            waitpoint_ids,
        )

    async def _lock_waitpoints(self, conn: Conn, ids: Sequence[str], kind: str) -> list[Row]:
        """The waitpoints' rows, share-locked: a completion of one waits for this transaction."""
        return await conn.fetch(
            "SELECT * FROM waitpoints WHERE id = ANY($1::text[]) AND kind = $2"
            " ORDER BY id FOR SHARE",
            list(ids),
            kind,
        )

    async def _insert_run(
        self, conn: Conn, new: NewRun, now: int, parent_key: str | None = None, depth: int = 0
    ) -> Row:
        """Insert a QUEUED (or DELAYED) run; a child carries its parent and the parent's key."""
        delayed = new.delayed_until_ms is not None and new.delayed_until_ms > now
        start = new.delayed_until_ms if delayed and new.delayed_until_ms else now
        row = await conn.fetchrow(
            "INSERT INTO runs (id, task_id, status, payload, tags, idempotency_key,"
            " idempotency_key_expires_at, max_attempts, available_at, delayed_until, ttl,"
            " expires_at, metadata, max_duration_ms, parent_run_id, parent_key, depth,"
            " queue, concurrency_key, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
            " $16, $17, $18, $19, $20, $20) RETURNING *",
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
        )
        if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise StorageError("the database returned no row for a new run")
        parent = {"parent": new.parent_run_id} if new.parent_run_id else None
        await self._event(conn, [row["id"]], "created", now, parent)
        return row

    async def _event(
        self,
        conn: Conn,
        run_ids: list[str],
        kind: str,
        now: int,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record a lifecycle event of these runs (their timeline besides the journal)."""
        if not run_ids:
            return
        await conn.execute(
            "INSERT INTO run_events (run_id, at, kind, attempt, detail)"
            " SELECT id, $1, $2, attempt_count, $3 FROM runs WHERE id = ANY($4::text[])",
            now,
            kind,
            None if detail is None else json.dumps(detail),
            run_ids,
        )

    async def _runs_finished(self, conn: Conn, run_ids: list[str], now: int) -> None:
        """Runs reached a final status: they wait on nothing, and their parents may go on."""
        if not run_ids:
            return
        await conn.execute("DELETE FROM run_waits WHERE run_id = ANY($1::text[])", run_ids)
        closed = await conn.fetch(_CLOSE_RUN_WAITPOINTS, run_ids, now)
        if closed:
            await self._requeue_blocked(conn, [r["id"] for r in closed], now)

    async def _requeue_blocked(self, conn: Conn, waitpoint_ids: list[str], now: int) -> None:
        locked = await conn.fetch(_LOCK_BLOCKED, waitpoint_ids)
        if locked:
            await conn.execute(_REQUEUE_BLOCKED, waitpoint_ids, [r["id"] for r in locked], now)

    async def _page(
        self, table: str, where: list[str], params: Params, page: PageRequest
    ) -> tuple[list[Row], str | None, str | None]:
        """One page, newest first, with the cursors of the older and the newer pages."""
        if page.before is not None:
            clause = " AND ".join([*where, f"id > {params(page.before)}"])
            rows = await self._read(
                f"SELECT * FROM {table} WHERE {clause} ORDER BY id ASC LIMIT"
                f" {params(page.limit + 1)}",
                *params.values,
            )
            return page_slice(rows, page.limit, before=True, after=False)
        if page.after is not None:
            where = [*where, f"id < {params(page.after)}"]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT * FROM {table} {clause} ORDER BY id DESC LIMIT {params(page.limit + 1)}",
            *params.values,
        )
        return page_slice(rows, page.limit, before=False, after=page.after is not None)

    def _notify(self) -> None:
        """Wake this process's waiters (``change_event``); other processes learn by NOTIFY."""
        event, self._change = self._change, asyncio.Event()
        event.set()


def common_filters(
    params: Params,
    statuses: list[str],
    tags: list[str],
    created_from_ms: int | None,
    created_to_ms: int | None,
) -> list[str]:
    where: list[str] = []
    if statuses:
        where.append(f"status = ANY({params(statuses)}::text[])")
    if tags:
        where.append(f"tags ?| {params(tags)}::text[]")
    if created_from_ms is not None:
        where.append(f"created_at >= {params(created_from_ms)}")
    if created_to_ms is not None:
        where.append(f"created_at <= {params(created_to_ms)}")
    return where
