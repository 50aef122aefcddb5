"""Evidence for one bottleneck: the cost of the worker's claim query against the queue length.

    python benchmarks/micro_claim.py [--queued 100 1000 10000 100000]

Fills a fresh database with Q QUEUED runs (through ``Engine.trigger``), then times the
claim statement of ``engine/storage/sqlite_runs.py`` (``LIMIT 100``, rolled back so the queue
stays the same) with the engine's schema, and again with one extra index
``runs (status, available_at, id)``, which lets SQLite read the first 100 rows in order
instead of sorting every QUEUED run. Prints the query plan and milliseconds per claim.
The engine is not modified: the extra index is created in the scratch database only.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks  # noqa: F401  (registers the bench-* tasks)

from engine import Engine
from engine.logs import configure_logging

# the claim statement as engine/storage/sqlite_runs.py has it (read 2026-11-28)
CLAIM = (
    "UPDATE runs SET status = 'EXECUTING', lease_owner = :owner,"
    " lease_epoch = lease_epoch + 1, lease_expires_at = :expires,"
    " attempt_count = max(attempt_count, 1), started_at = coalesce(started_at, :now),"
    " updated_at = :now"
    " WHERE id IN (SELECT id FROM runs WHERE status = 'QUEUED' AND available_at <= :now"
    "              AND task_id IN (SELECT value FROM json_each(:tasks))"
    "              AND (expires_at IS NULL OR expires_at > :now)"
    "              ORDER BY available_at, id LIMIT :limit)"
    " RETURNING id, task_id, payload, attempt_count, lease_epoch, max_attempts,"
    " executing_ms, max_duration_ms"
)
PARAMS = {
    "owner": "bench",
    "expires": 2**62,
    "now": 2**61,
    "limit": 100,
    "tasks": '["bench-trivial"]',
}


def time_claim(path: Path, repeats: int = 15) -> tuple[float, list[str]]:
    conn = sqlite3.connect(path, isolation_level=None)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + CLAIM, PARAMS)]
    times = []
    for _ in range(repeats):
        conn.execute("BEGIN IMMEDIATE")
        t = time.perf_counter()
        rows = conn.execute(CLAIM, PARAMS).fetchall()
        times.append((time.perf_counter() - t) * 1000)
        conn.execute("ROLLBACK")
        assert len(rows) == min(100, conn.execute("SELECT count(*) FROM runs").fetchone()[0])
    conn.close()
    return statistics.median(times), plan


async def fill(url: str, n: int) -> None:
    async with Engine(url) as engine:
        for start in range(0, n, 5000):
            chunk = range(start, min(n, start + 5000))
            await asyncio.gather(*(engine.trigger("bench-trivial", {"i": i}) for i in chunk))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    args = parser.parse_args()
    configure_logging("json", 30)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        print(f"{'queued':>8}  {'claim ms (engine schema)':>25}  {'claim ms (+ index)':>20}")
        plans: dict[str, list[str]] = {}
        for n in args.queued:
            path = Path(tmp) / f"claim{n}.db"
            asyncio.run(fill(f"sqlite:///{path}", n))
            before, plans["engine schema"] = time_claim(path)
            conn = sqlite3.connect(path)
            conn.execute("CREATE INDEX runs_queue_order ON runs (status, available_at, id)")
            conn.close()
            after, plans["+ index"] = time_claim(path)
            print(f"{n:>8,}  {before:>25.2f}  {after:>20.2f}")
        for name, plan in plans.items():
            print(f"plan ({name}): " + " | ".join(plan))


if __name__ == "__main__":
    main()
