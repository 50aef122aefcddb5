"""SQLite locks held by another process: reads and opening wait them out instead of failing.

``busy_timeout`` is not enough: SQLite fails at once where waiting could deadlock and while a
connection rebuilds the WAL index after a crash (a read-only ``waitpoint workers`` once failed
with "database is locked" beside a killed worker). Each test here holds a real lock on a real
file for longer than the storage's ``busy_timeout`` (cut to 20 ms) and lets go.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from engine.storage import sqlite as sqlite_storage
from engine.storage.sql import rows
from engine.storage.sqlite import SQLiteStorage
from engine.storage.writer import wait_out_busy

SECRET = "s" * 32


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage's own ``busy_timeout`` (5 s) cut to 20 ms: a lock held 0.5 s outlasts it."""
    real = sqlite_storage._pragmas

    def pragmas(synchronous: str) -> list[str]:
        return ["PRAGMA busy_timeout = 20", *real(synchronous)[1:]]

    assert real("FULL")[0].startswith("PRAGMA busy_timeout")
    monkeypatch.setattr(sqlite_storage, "_pragmas", pragmas)


def hold(path: Path, *, seconds: float, wal: bool) -> tuple[threading.Event, threading.Thread]:
    """Another connection takes an exclusive lock on ``path``, keeps it ``seconds``, lets go."""
    locked = threading.Event()

    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            if wal:  # in WAL mode only an exclusive locking mode keeps readers out
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE IF NOT EXISTS holder (x)")
                conn.execute("COMMIT")
            else:
                conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            threading.Event().wait(seconds)
        finally:
            conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    return locked, thread


async def test_opening_waits_out_another_connection_s_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    sqlite3.connect(path).close()  # a file in rollback-journal mode, as a new one is
    locked, holder = hold(path, seconds=0.5, wal=False)
    assert locked.wait(10)
    storage = SQLiteStorage(f"sqlite:///{path}", signing_secret=SECRET)
    try:
        await storage.open()  # before wait_out_busy: StorageUnavailableError, "locked"
        assert await storage.migrate() == len(sqlite_storage.MIGRATIONS)
    finally:
        await storage.close()
        await asyncio.to_thread(holder.join)


async def test_a_read_waits_out_another_connection_s_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    storage = SQLiteStorage(f"sqlite:///{path}", signing_secret=SECRET)
    await storage.open()
    try:
        await storage.close()  # no connection of ours open while the holder takes the file
        locked, holder = hold(path, seconds=0.5, wal=True)
        assert locked.wait(10)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite3.connect(path, timeout=0.02).execute("SELECT 1 FROM runs").fetchall()
        await storage.open()
        found = await storage._read(rows("SELECT count(*) AS n FROM runs"))
        assert found[0]["n"] == 0
    finally:
        await storage.close()
        await asyncio.to_thread(holder.join)


async def test_wait_out_busy_repeats_only_busy_failures_and_gives_up_after_its_budget() -> None:
    calls: list[int] = []

    async def busy_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "read"

    assert await wait_out_busy(busy_twice) == "read" and len(calls) == 3

    async def broken() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: runs")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await wait_out_busy(broken)
    assert len(calls) == 1  # not repeated: only a lock is worth waiting for

    async def always_busy() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await wait_out_busy(always_busy, seconds=0.05)
