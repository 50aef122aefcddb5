"""Group commit for SQLite: one writer connection, one transaction per burst of operations.

SQLite's cost is the commit (an fsync under ``synchronous=FULL``) and, from asyncio, every
hop to a thread. So every write operation of this process is queued here as a plain function
of a ``sqlite3.Connection``; the writer takes everything queued at that moment and runs it
in ONE worker-thread call, inside one ``BEGIN IMMEDIATE ... COMMIT``. Only after the commit is
each caller's future resolved, so a caller's ``await`` returns once its operation is durable.

An operation that fails (a lost lease, a finished run) must fail alone, as if it ran in a
transaction of its own. Operations fail rarely, so the batch runs without a savepoint per
operation (two statements each, a third of a token-wait run's statements): when one raises,
the transaction rolls back and the batch runs again in parts, in the same order: the
operations before the failing one together, the failing one alone (its outcome is its error),
then the rest together. Operations are plain functions of the database, so running one again
after a rollback gives what it would have given the first time.

Some failures take the whole transaction with them: SQLite rolls all of it back (a full disk
or database, an I/O error) or ``COMMIT`` itself fails. Nothing then says which operation was
at fault, and the others must not pay for it: each operation of the batch runs again in a
transaction of its own, so only the failing ones fail. A batch whose ``BEGIN IMMEDIATE``
never got the write lock fails as a whole instead: nothing ran, and trying each operation
again would wait out the other process once per operation.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio.to_thread

from .. import metrics
from ..errors import EngineError, StorageError, StorageUnavailableError
from ..faults import crash_point
from ..logs import get_logger

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]
Outcome = tuple[bool, Any]

log = get_logger("engine.storage")

_BUSY_RETRY_SECONDS = 60.0


class _OperationFailed(Exception):
    """Operation ``index`` of a batch of several raised; the transaction was rolled back."""

    def __init__(self, index: int) -> None:
        super().__init__(f"operation {index} of the batch failed")
        self.index = index


class _NoTransaction(Exception):
    """``BEGIN IMMEDIATE`` failed: no operation ran, and ``error`` is what each caller gets."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class GroupCommitWriter:
    """Runs write operations on one connection, committing them in groups.

    ``busy_seconds`` is how long a transaction waits for the write lock while other processes
    hold it, before every operation of its batch fails with ``StorageUnavailableError``.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, busy_seconds: float = _BUSY_RETRY_SECONDS
    ) -> None:
        self._conn = conn
        self._busy_seconds = busy_seconds
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
                if metrics.on:
                    metrics.committed_together(len(batch))
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
        """In the worker thread: run ``ops`` in one transaction, or in as few as their failures
        allow; one outcome per operation, in order."""
        outcomes: list[Outcome] = []
        batches = [ops]
        while batches:
            batch = batches.pop(0)
            try:
                outcomes += self._transaction(batch)
            except _NoTransaction as failed:
                # nothing ran: another process held the write lock throughout. The rest fail
                # with it at once rather than wait it out again one by one
                left = len(batch) + sum(map(len, batches))
                return outcomes + [(False, failed.error)] * left
            except _OperationFailed as failed:
                i = failed.index
                batches[:0] = [b for b in (batch[:i], batch[i : i + 1], batch[i + 1 :]) if b]
            except Exception as exc:
                if len(batch) == 1:
                    outcomes.append((False, translate(exc)))
                    continue
                # the transaction failed as a whole (COMMIT, a full disk): each op alone
                log.warning("storage.batch_failed", error=str(exc), operations=len(batch))
                batches[:0] = [[op] for op in batch]
        return outcomes

    def _transaction(self, ops: list[Operation[Any]]) -> list[Outcome]:
        """``BEGIN IMMEDIATE``, the operations, ``COMMIT``; rolled back if any of it raises.

        Raises ``_NoTransaction`` when ``BEGIN`` failed, ``_OperationFailed`` when one of
        several operations raised, and whatever failed otherwise (a single operation's error
        is its own).
        """
        conn = self._conn
        self._begin()
        try:
            outcomes: list[Outcome] = []
            if len(ops) == 1:
                outcomes.append((True, ops[0](conn)))
            else:
                for index, op in enumerate(ops):
                    try:
                        outcomes.append((True, op(conn)))
                    except Exception as exc:
                        raise _OperationFailed(index) from exc
            crash_point("commit.before")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        crash_point("commit.after")
        self.commits += 1
        return outcomes

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting out other processes' write locks instead of failing."""
        pauses = _busy_pauses(self._busy_seconds)
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)
                pause = next(pauses, None) if busy else None
                if pause is not None:
                    time.sleep(pause)
                    continue
                error = translate(exc)
                if busy:
                    error = StorageUnavailableError(
                        f"SQLite busy: another process held the write lock for more than"
                        f" {self._busy_seconds:g} s ({exc})"
                    )
                raise _NoTransaction(error) from exc

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the connection is in trouble; report, don't mask
                log.error("storage.rollback_failed", error=str(exc))


async def wait_out_busy(
    call: Callable[[], Awaitable[T]], *, seconds: float = _BUSY_RETRY_SECONDS
) -> T:
    """``call()``, made again after a pause for as long as SQLite says another process holds
    a lock, up to ``seconds``; for calls that are safe to repeat (reads, opening the file).

    ``busy_timeout`` waits out most locks, but SQLite fails at once where waiting could
    deadlock (a connection that holds a read lock asking for more) and while another
    connection rebuilds the WAL index after a process was killed: a read-only command such
    as ``waitpoint workers`` must not fail because a worker was writing.
    """
    pauses = _busy_pauses(seconds)
    while True:
        try:
            return await call()
        except sqlite3.OperationalError as exc:
            pause = next(pauses, None) if _is_busy(exc) else None
            if pause is None:
                raise
        await asyncio.sleep(pause)


def _busy_pauses(seconds: float) -> Iterator[float]:
    """The pauses between tries of something SQLite refused as busy (the writer's ``BEGIN
    IMMEDIATE``, ``wait_out_busy``): 5 ms, doubling up to 0.2 s, while ``seconds`` last."""
    deadline = time.monotonic() + seconds
    delay = 0.005
    while time.monotonic() <= deadline:
        yield delay
        delay = min(delay * 2, 0.2)


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
