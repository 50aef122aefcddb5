"""SQLite storage: WAL, ``BEGIN IMMEDIATE`` for every write, group commit, one file per engine.

Two connections per process: the writer (every write operation goes through
``GroupCommitWriter``, driven by ``sql.drive_sync`` in one thread hop per batch) and a reader
(WAL lets it read while the writer writes). ``PRAGMA data_version`` tells a process that
another one committed, so workers wake up when the CLI or another worker completes a token.
Several processes may share one file: ``busy_timeout`` plus the writer's retry on
``BEGIN IMMEDIATE`` keep "database is locked" from reaching a caller. The operations live in
``runs``, ``tokens`` and ``waits``, written once for both databases; this module opens,
migrates and closes the file and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio.to_thread

from ..clock import Clock, SystemClock
from ..errors import ConfigurationError, StorageError, StorageUnavailableError
from ..keys import SigningSecrets, legacy_signature_hash
from ..private_files import folder_problem, private_dirs, private_file, refusal
from ..settings import sqlite_path
from .approvals import Approvals
from .group_waits import GroupWaits
from .records import RowLike
from .repairs import Repairs
from .retention import Retention
from .schedules import Schedules
from .signing import SIGNING_CHECK, log_outcome, settle
from .sql import SQLITE, Op, Sql, drive_sync, rows, sqlite_statement
from .sqlite_schema import MIGRATIONS
from .stats import Stats
from .timers import Timers
from .tokens import Tokens
from .writer import GroupCommitWriter, translate, wait_out_busy

T = TypeVar("T")
Conn = sqlite3.Connection

_POLL_SECONDS = 0.01  # how soon another process's commit wakes this one


class SQLiteStorage(Repairs, Tokens, GroupWaits, Approvals, Timers, Retention, Schedules, Stats):
    """The embedded default backend."""

    q = SQLITE

    def __init__(
        self,
        url: str,
        *,
        signing_secret: str,
        previous_signing_secret: str | None = None,
        synchronous: str = "FULL",
        clock: Clock | None = None,
    ) -> None:
        self.path = sqlite_path(url)
        self._signing = SigningSecrets(signing_secret, previous_signing_secret)
        self.signing_key_matches = True
        self._synchronous = synchronous.upper()
        if self._synchronous not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigurationError("synchronous must be FULL, EXTRA or NORMAL")
        self.clock: Clock = clock or SystemClock()
        self._writer_conn: Conn | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        self._init_waiters()
        self._poller: asyncio.Task[None] | None = None
        self._seq = itertools.count(1)

    async def open(self) -> None:
        # made 0600 before SQLite opens it: SQLite gives the -wal and -shm files the same mode
        try:
            private_dirs(self.path.parent)
            private_file(self.path)
        except OSError as exc:  # a read-only folder, a file where a folder should be, ...
            raise StorageError(refusal("open the SQLite database", self.path, exc)) from exc
        try:
            await wait_out_busy(self._connect)
        except sqlite3.Error as exc:
            raise self._open_failed(exc) from exc
        assert self._writer_conn is not None
        self._writer = GroupCommitWriter(self._writer_conn)
        self._writer.start()

    async def _connect(self) -> None:
        """Both connections, migrated; neither is left open when this fails."""
        try:
            self._writer_conn = await anyio.to_thread.run_sync(self._open_writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            for pragma in _pragmas(self._synchronous):
                await self._reader.execute(pragma)
        except BaseException:
            await self.close()
            raise

    def _open_failed(self, exc: sqlite3.Error) -> Exception:
        """The error of a file SQLite could not open, naming it (SQLite's own message does
        not) and, when the folder is the reason (say, a read-only mount), that reason."""
        error = translate(exc)
        if isinstance(error, StorageUnavailableError):  # busy: transient, said as such
            return error
        message = f"cannot open the SQLite database {self.path.absolute()}: {exc}"
        if self.path.is_dir():
            return StorageError(f"{message} (it is a folder, not a file)")
        problem = folder_problem(self.path.absolute().parent)
        if problem is not None:
            message += f" (its folder: {problem})"
        return StorageError(message)

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

    async def migrate(self) -> int:
        """Migrations ran when the file was opened; the schema version they reached."""
        found = await self._read(rows("PRAGMA user_version"))
        return int(found[0]["user_version"])

    def _open_writer(self) -> sqlite3.Connection:
        """The writer connection (used by one thread at a time), with migrations applied."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            for pragma in _pragmas(self._synchronous):
                conn.execute(pragma)
            _migrate(conn)
            self.signing_key_matches = _settle_signing_check(conn, self._signing, self.path)
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

    async def _transact(
        self, op: Callable[[int], Op[T]], *, notify: bool = True, control: bool = False
    ) -> T:
        if self._writer is None:
            raise ConfigurationError("the storage is not open")
        result = await self._writer.run(lambda conn: drive_sync(conn, op(self.now_ms())))
        if notify:
            self._notify()
        return result

    async def _read(self, sql: Sql, *, control: bool = False) -> list[RowLike]:
        reader = self._reader
        if reader is None:
            raise ConfigurationError("the storage is not open")
        statement = sqlite_statement(sql)
        try:
            return list(await wait_out_busy(lambda: reader.execute_fetchall(*statement)))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _next_seq(self) -> int:
        return next(self._seq)

    def _watch_other_processes(self) -> None:
        if self._poller is None and self._reader is not None:
            self._poller = asyncio.create_task(self._poll_data_version(), name="waitpoint-poll")

    async def _poll_data_version(self) -> None:
        """``PRAGMA data_version`` moves when any other connection commits to the file."""
        last: int | None = None
        try:
            while self._reader is not None:
                try:
                    found = await self._read(rows("PRAGMA data_version"))
                except Exception:  # closing; the loop ends with the reader
                    return
                version = int(found[0]["data_version"])
                if last is not None and version != last:
                    self._forget_task_registry()
                    self._notify()
                last = version
                self._following = True
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            self._following = False


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
            if number == 4:
                _forget_signing_secret(conn)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _forget_signing_secret(conn: Conn) -> None:
    """Migration 4: keep a hash of each token's signature instead of the plaintext secret.

    Before it, the callback signing secret was a row of ``meta``: whoever could read the
    database could sign a URL for any token. URLs already handed out must keep working, so
    each token keeps the SHA-256 of the signature its URL carries (which verifies that URL
    and signs nothing else); the secret itself is deleted, with ``secure_delete`` so that its
    bytes do not linger in the page.
    """
    rows = conn.execute("SELECT value FROM meta WHERE key = 'signing_secret'").fetchall()
    if not rows:
        return
    secret = str(rows[0][0])
    ids = [row[0] for row in conn.execute("SELECT id FROM waitpoints WHERE kind = 'MANUAL'")]
    conn.executemany(
        "UPDATE waitpoints SET legacy_signature_hash = ? WHERE id = ?",
        [(legacy_signature_hash(secret, token_id), token_id) for token_id in ids],
    )
    was = int(_first(conn.execute("PRAGMA secure_delete").fetchall())[0])
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("DELETE FROM meta WHERE key = 'signing_secret'")
    conn.execute(f"PRAGMA secure_delete = {was}")


def _settle_signing_check(conn: Conn, signing: SigningSecrets, path: Path) -> bool:
    """Record which key signs this database's URLs (``signing.settle``); False when this
    process signs with another one than the recorded key."""
    conn.execute("BEGIN IMMEDIATE")  # processes starting at once settle it in turn
    try:
        rows = conn.execute("SELECT value FROM meta WHERE key = ?", (SIGNING_CHECK,)).fetchall()
        outcome, value = settle(str(rows[0][0]) if rows else None, signing)
        if value is not None:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (SIGNING_CHECK, value)
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log_outcome(outcome, database=str(path))
    return outcome != "mismatch"


def _first(found: Iterable[sqlite3.Row]) -> sqlite3.Row:
    for row in found:
        return row
    raise StorageError("the database returned no row where one was expected")


__all__ = ["SQLiteStorage", "sqlite_path"]
