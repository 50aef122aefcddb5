"""The reads SQLite repeats all the time do not walk a table that grows.

Without statistics SQLite's planner takes an index on a column of few values (a status, a
kind) where the rows are better found by id, and then walks every row of that value. The
work here is counted in SQLite VM instructions (``set_progress_handler``), not timed: it
must not grow with the rows that have nothing to do with the read.

The timer loop: each timer turn asks whether a delayed run, a run's time to live, a token's
timeout or a lease fell due, and when the next one does. The planner answered ``status IN
('QUEUED', 'DELAYED') AND expires_at <= :now`` through ``runs_status`` and walked every
queued run, on every turn: with 5,000 runs queued each read cost 1.4 ms, and the timer loop
of a busy worker turns dozens of times a second.

The claim: it reads the closed tokens its runs were parked on (``ClaimedRun.closed_tokens``)
through the runs' edges; through ``waitpoints_status`` it walked every closed token, on
every claim (a worker at 300 runs/s instead of 680).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.models import CompletionSource
from engine.storage.base import NewRun, NewToken
from engine.storage.sqlite import SQLiteStorage

SECRET = "s" * 32


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(f"sqlite:///{tmp_path / 'timers.db'}", signing_secret=SECRET)
    await storage.open()
    await storage.migrate()
    try:
        yield storage
    finally:
        await storage.close()


def copy_rows(path: Path, table: str, row_id: str, copies: int) -> None:
    """``copies`` more rows of ``table`` like ``row_id`` (new ids), written straight into
    the file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(f"CREATE TEMP TABLE model AS SELECT * FROM {table} WHERE id = ?", (row_id,))
        for i in range(copies):
            conn.execute("UPDATE model SET id = ?", (f"{table}_copy{i:06d}",))
            conn.execute(f"INSERT INTO {table} SELECT * FROM model")
        conn.execute("COMMIT")
    finally:
        conn.close()


class Steps:
    """A progress handler of SQLite: called every N VM instructions, it counts the calls."""

    def __init__(self) -> None:
        self.taken = 0

    def __call__(self) -> int:
        self.taken += 1
        return 0  # go on


async def instructions_of_a_timer_turn(storage: SQLiteStorage) -> int:
    """SQLite VM instructions (in thousands) the timer loop's reads execute once."""
    reader = storage._reader
    assert reader is not None
    steps = Steps()
    await reader.set_progress_handler(steps, 1000)
    try:
        assert not (await storage.timer_outlook(["t"])).due  # every turn's first read
        assert await storage.fire_due_timers(100) == 0
        assert await storage.rescue_expired_leases() == 0
        await storage.next_timer_ms()
    finally:
        await reader.set_progress_handler(None, 1000)
    return steps.taken


async def test_the_timer_reads_cost_the_same_with_5000_runs_queued(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    run = await storage.create_run(NewRun("t", {}))
    few = await instructions_of_a_timer_turn(storage)
    copy_rows(tmp_path / "timers.db", "runs", run.id, 5_000)
    many = await instructions_of_a_timer_turn(storage)
    # before the reads named their indexes: few 0, many 50 (thousands of instructions)
    assert many <= few + 1, f"{few}k instructions with 1 run queued, {many}k with 5,001"


async def instructions_of_a_claim(storage: SQLiteStorage) -> int:
    """SQLite VM instructions (in hundreds) of a claim that takes two queued runs (one
    would be found by ``id = ?``, several are a list the planner may start elsewhere)."""
    await storage.create_run(NewRun("t", {}))
    await storage.create_run(NewRun("t", {}))
    writer = storage._writer_conn
    assert writer is not None
    steps = Steps()
    writer.set_progress_handler(steps, 100)
    try:
        assert len(await storage.claim_runs("w", 10, 60_000, ["t"])) == 2
    finally:
        writer.set_progress_handler(None, 100)
    return steps.taken


async def test_a_claim_costs_the_same_with_5000_tokens_closed(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    token = await storage.create_token(NewToken())
    await storage.complete_token(token.id, {"ok": True}, CompletionSource.API)
    few = await instructions_of_a_claim(storage)
    copy_rows(tmp_path / "timers.db", "waitpoints", token.id, 5_000)
    many = await instructions_of_a_claim(storage)
    # through waitpoints_status: few 6, many 1,056 (hundreds of instructions)
    assert many <= few + 2, f"{few}00 instructions with 1 token closed, {many}00 with 5,001"
