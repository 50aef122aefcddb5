"""SQLite group commit: one transaction per batch, and what a batch does when it fails.

Driven on a real file through the writer itself (``GroupCommitWriter`` on a connection of its
own), so a test decides exactly which operations share a batch: an operation that holds the
writer's thread keeps the next ones queued behind it, and they run as one batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import StorageError, StorageUnavailableError
from engine.storage.writer import GroupCommitWriter

Note = Callable[[sqlite3.Connection], int]


def connect(path: Path) -> sqlite3.Connection:
    """A writer connection set up as the SQLite storage sets up its own (WAL, autocommit)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT NOT NULL)")
    return conn


def note(body: str, ran: list[str] | None = None) -> Note:
    def op(conn: sqlite3.Connection) -> int:
        if ran is not None:
            ran.append(body)
        cursor = conn.execute("INSERT INTO notes (body) VALUES (?)", (body,))
        return int(cursor.lastrowid or 0)

    return op


def committed(path: Path) -> list[str]:
    """What another connection reads: only what was committed."""
    with sqlite3.connect(path) as reader:
        return [row[0] for row in reader.execute("SELECT body FROM notes ORDER BY rowid")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "writer.db"


async def test_a_write_too_big_for_a_full_database_fails_alone_and_its_batch_commits(
    path: Path,
) -> None:
    """SQLITE_FULL rolls back the whole transaction, savepoints and all: the batch cannot tell
    which operation was at fault, so each runs again alone and only the big one fails."""
    conn = connect(path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # room for a row, not for 100 kB
    writer = GroupCommitWriter(conn)
    writer.start()
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the next operations queued behind it
        entered.set()
        gate.wait(10)

    try:
        holding = asyncio.create_task(writer.run(hold))
        assert await asyncio.to_thread(entered.wait, 10)
        small = asyncio.create_task(writer.run(note("small")))
        big = asyncio.create_task(writer.run(note("x" * 100_000)))
        await asyncio.sleep(0)  # both are queued: one batch once the writer is free
        gate.set()
        await holding
        assert await small > 0
        assert committed(path) == ["small"]  # durable when its caller heard of it
        with pytest.raises(StorageError, match="database or disk is full"):
            await big
        assert not conn.in_transaction
        await writer.run(note("after"))  # the writer goes on
    finally:
        gate.set()
        await writer.close()
        conn.close()
    assert committed(path) == ["small", "after"]


async def test_an_operation_that_raises_fails_alone_and_the_rest_of_its_batch_commits(
    path: Path,
) -> None:
    """A batch runs without savepoints: when one operation raises (after writing), the
    transaction rolls back and the batch runs again in parts, in order: the operations
    before it together, it alone (its error is its outcome, its write is gone), the rest
    together. The ones after it still see what the ones before it wrote."""
    conn = connect(path)
    writer = GroupCommitWriter(conn)
    writer.start()
    entered, gate = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    def failing(conn: sqlite3.Connection) -> int:
        ran.append("failing")
        conn.execute("INSERT INTO notes (body) VALUES ('half-done')")
        raise StorageError("this operation fails")

    def count_notes(conn: sqlite3.Connection) -> int:
        ran.append("count")
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])

    try:
        holding = asyncio.create_task(writer.run(hold))
        assert await asyncio.to_thread(entered.wait, 10)
        before = writer.commits
        ops = [note("a", ran), note("b", ran), failing, note("c", ran), count_notes]
        tasks = [asyncio.create_task(writer.run(op)) for op in ops]
        await asyncio.sleep(0)  # all queued: one batch once the writer is free
        gate.set()
        await holding
        a, b, c, notes = [await tasks[i] for i in (0, 1, 3, 4)]
        assert a > 0 and b > 0 and c > 0
        assert notes == 3  # a, b and c, not the failing operation's half-done write
        with pytest.raises(StorageError, match="this operation fails"):
            await tasks[2]
        # the first try ran a, b and failing; then a and b, failing alone, c and the count
        assert ran == ["a", "b", "failing", "a", "b", "failing", "c", "count"]
        # hold's transaction, [a, b] and [c, count]; the failing one rolled back twice
        assert writer.commits - before == 3
    finally:
        gate.set()
        await writer.close()
        conn.close()
    assert committed(path) == ["a", "b", "c"]


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO notes (body) VALUES ('holder')")
print("locked", flush=True)
sys.stdin.readline()  # hold the write lock until the test lets go
conn.execute("ROLLBACK")
"""


async def test_writes_fail_unavailable_while_another_process_holds_the_lock_past_the_budget(
    path: Path,
) -> None:
    """Every operation of the batch fails at once (none ran, nothing is written), and the same
    writes succeed once the other process let go."""
    conn = connect(path)
    conn.execute("PRAGMA busy_timeout = 0")  # the writer's own budget is the only wait
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    writer = GroupCommitWriter(conn, busy_seconds=0.2)
    writer.start()
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        ran: list[str] = []
        outcomes = await asyncio.gather(
            *(writer.run(note(body, ran)) for body in ("a", "b", "c")), return_exceptions=True
        )
        assert all(isinstance(o, StorageUnavailableError) for o in outcomes), outcomes
        assert "write lock" in str(outcomes[0])
        assert ran == []  # no operation ran: nothing can be half-written
        assert not conn.in_transaction

        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 30) == 0
        rows = await asyncio.gather(*(writer.run(note(body, ran)) for body in ("a", "b", "c")))
        assert all(row > 0 for row in rows)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await writer.close()
        conn.close()
    assert committed(path) == ["a", "b", "c"]  # the holder's row was rolled back
