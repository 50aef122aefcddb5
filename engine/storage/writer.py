"""Group commit for SQLite: one writer connection, one transaction per burst of operations.

SQLite's cost is the commit (an fsync under ``synchronous=FULL``) and, from asyncio, every
hop to a thread. So every write operation of this process is queued here as a plain function
of a ``sqlite3.Connection``; the writer takes everything queued at that moment and runs it
in ONE worker-thread call, inside one ``BEGIN IMMEDIATE ... COMMIT``, with a savepoint per
operation (one failing operation rolls back alone). Only after the commit is each caller's
future resolved, so a caller's ``await`` returns once its operation is durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
import structlog

from ..errors import EngineError, StorageError, StorageUnavailableError
from ..faults import crash_point

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]
Outcome = tuple[bool, Any]

log = structlog.get_logger("engine.storage")

_BUSY_RETRY_SECONDS = 60.0


class GroupCommitWriter:
    """Runs write operations on one connection, committing them in groups."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._pending: list[tuple[Operation[Any], asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="waitpoint-sqlite-writer")

    async def run(self, op: Operation[T]) -> T:
        """Queue ``op`` and return its result once the transaction holding it committed."""
        if self._closing or self._task is None:
            raise StorageError("the storage is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        self._closing = True
        if self._task is None:
            return
        self._wakeup.set()
        await self._task
        self._task = None

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = [(op, fut) for op, fut in self._pending if not fut.cancelled()]
                self._pending.clear()
                if not batch:
                    continue
                # a cancelled caller must not abandon a transaction half-way: shield the commit
                outcomes = await asyncio.shield(
                    anyio.to_thread.run_sync(self._commit, [op for op, _ in batch])
                )
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if self._closing:
                return

    def _commit(self, ops: list[Operation[Any]]) -> list[Outcome]:
        """In the worker thread: run ``ops`` in one transaction; one outcome per operation."""
        conn = self._conn
        outcomes: list[Outcome] = []
        single = len(ops) == 1
        try:
            self._begin()
            for op in ops:
                if single:
                    outcomes.append((True, op(conn)))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except Exception as exc:  # one operation's failure is its caller's alone
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, translate(exc)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((True, result))
            crash_point("commit.before")
            conn.execute("COMMIT")
            crash_point("commit.after")
            self.commits += 1
            return outcomes
        except Exception as exc:
            self._rollback()
            if single:
                return [(False, translate(exc))]
            log.error("storage.commit_failed", error=str(exc), operations=len(ops))
            return [(False, StorageError(f"the transaction failed: {exc}"))] * len(ops)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting out other processes' write locks instead of failing."""
        deadline = time.monotonic() + _BUSY_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the connection is in trouble; report, don't mask
                log.error("storage.rollback_failed", error=str(exc))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def translate(exc: BaseException) -> Exception:
    """Driver errors become ``StorageError``; the engine's own errors pass through."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        return StorageUnavailableError(f"SQLite busy: {exc}")
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"SQLite error: {exc}")
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))
