"""Evidence for one bottleneck: the cost of the worker's claim against the queue length.

    python benchmarks/micro_claim.py [--queued 100 1000 10000 100000]

Fills a database with Q QUEUED runs (through ``Engine.trigger``), then calls the engine's own
``storage.claim_runs(owner, 100, ...)`` up to ten times (each claims 100 runs, so the queue barely
changes) and reports the median milliseconds per claim, on a copy of the database with the
engine's schema and on a copy with one extra index ``runs (status, available_at, id)`` (made
in the scratch copy only; the engine is not modified). The query plan of the candidate query
(``ORDER BY available_at, id`` over the QUEUED runs) is printed for both.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

from engine import Engine
from engine.logs import configure_logging

CANDIDATES = (
    "SELECT id FROM runs WHERE status = 'QUEUED' AND available_at <= :now"
    " AND task_id IN (SELECT value FROM json_each(:tasks))"
    " AND (expires_at IS NULL OR expires_at > :now) ORDER BY available_at, id LIMIT 1000"
)


async def fill(url: str, n: int) -> None:
    async with Engine(url) as engine:
        await engine.storage.register_tasks([bench_tasks.bench_trivial.info])
        for start in range(0, n, 5000):
            chunk = range(start, min(n, start + 5000))
            await asyncio.gather(*(engine.trigger("bench-trivial", {"i": i}) for i in chunk))


async def time_claims(url: str, claims: int = 10) -> float:
    async with Engine(url) as engine:
        times = []
        for _ in range(claims):
            t = time.perf_counter()
            got = await engine.storage.claim_runs("bench", 100, 60_000, ["bench-trivial"])
            times.append((time.perf_counter() - t) * 1000)
            assert got, "nothing claimed"
        return statistics.median(times)


def plan(path: Path) -> str:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "EXPLAIN QUERY PLAN " + CANDIDATES, {"now": 2**62, "tasks": '["bench-trivial"]'}
    ).fetchall()
    conn.close()
    return " | ".join(r[3] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    args = parser.parse_args()
    configure_logging("json", 30)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        head = ("queued", "ms per claim (engine schema)", "ms per claim (+ index)")
        print(f"{head[0]:>8}  {head[1]:>29}  {head[2]:>23}")
        plans: dict[str, str] = {}
        for n in args.queued:
            base = Path(tmp) / f"claim{n}.db"
            asyncio.run(fill(f"sqlite:///{base}", n))
            plain, indexed = Path(tmp) / f"plain{n}.db", Path(tmp) / f"indexed{n}.db"
            shutil.copy(base, plain)
            shutil.copy(base, indexed)
            conn = sqlite3.connect(indexed)
            conn.execute("CREATE INDEX bench_runs_queue_order ON runs (status, available_at, id)")
            conn.close()
            claims = max(1, min(10, n // 100))
            before = asyncio.run(time_claims(f"sqlite:///{plain}", claims))
            after = asyncio.run(time_claims(f"sqlite:///{indexed}", claims))
            plans["engine schema"], plans["+ index"] = plan(plain), plan(indexed)
            print(f"{n:>8,}  {before:>29.2f}  {after:>23.2f}")
        for name, text in plans.items():
            print(f"plan of the candidate query ({name}): {text}")


if __name__ == "__main__":
    main()
