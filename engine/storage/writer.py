"""Group commit for SQLite: one writer connection, one transaction per burst of operations.

SQLite's cost is the commit (an fsync under ``synchronous=FULL``), not the statements. So
every write operation in this process is queued here; the writer takes everything queued at
that moment, runs it inside one ``BEGIN IMMEDIATE ... COMMIT`` with a savepoint per operation
(one failing operation rolls back alone), and only then resolves each caller's future. A
caller's ``await`` therefore returns only once its operation is durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite
import structlog

from ..errors import EngineError, StorageError

T = TypeVar("T")
Operation = Callable[[aiosqlite.Connection], Awaitable[T]]

log = structlog.get_logger("engine.storage")

_BUSY_RETRY_SECONDS = 60.0


class GroupCommitWriter:
    """Runs write operations on one connection, committing them in groups."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
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
                if batch:
                    await asyncio.shield(self._commit(batch))
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[Operation[Any], asyncio.Future[Any]]]) -> None:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            await self._begin()
            single = len(batch) == 1
            for op, _ in batch:
                if not single:
                    await conn.execute("SAVEPOINT op")
                try:
                    result = await op(conn)
                except Exception as exc:  # one operation's failure is its caller's, not ours
                    if single:
                        raise
                    await conn.execute("ROLLBACK TO op")
                    await conn.execute("RELEASE op")
                    outcomes.append((False, translate(exc)))
                else:
                    if not single:
                        await conn.execute("RELEASE op")
                    outcomes.append((True, result))
            await conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            await self._rollback()
            error = translate(exc)
            if len(batch) == 1:
                outcomes = [(False, error)]
            else:
                log.error("storage.commit_failed", error=str(exc), operations=len(batch))
                outcomes = [(False, StorageError(f"the transaction failed: {exc}"))] * len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting out other processes' write locks instead of failing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BUSY_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or loop.time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                await self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the connection is in trouble; report, don't mask
                log.error("storage.rollback_failed", error=str(exc))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def translate(exc: BaseException) -> Exception:
    """Driver errors become ``StorageError``; the engine's own errors pass through."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"SQLite error: {exc}")
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))
