"""Evidence for the timer lateness: what firing N due timeouts costs when nothing else runs.

    python benchmarks/micro_timers.py [--n 10000]

Parks N ``bench-timer`` runs (a worker in this process) on tokens due in one hour, stops the
worker, then opens copies of the database with a clock moved two hours ahead and calls the
engine's own ``storage.fire_due_timers(limit)`` until it returns less than ``limit``, as the
worker's timer loop does, once with the worker's batch (1,000) and once with ``limit = N``
(everything in one transaction). Nothing else runs, so the difference with the lateness that
``run.py`` measures (the batches are ~0.25 s apart there) is the time the timer loop waits
behind the runs that each batch just re-queued.

It then times the re-queue statement alone (``StorageCore._requeue_blocked`` of
``engine/storage/core.py``, obtained from the engine through ``engine_sql.py``) for batches of
waitpoints closed by the timer's own statement (``Timers._time_out_tokens``, ``timers.py``),
next to the same statement with ``rw.waitpoint_id`` written ``+rw.waitpoint_id`` in its
``mode = 'any'`` EXISTS, which stops SQLite from probing the (run_id, waitpoint_id) index once
per id in the batch for every run (quadratic) and makes it scan the run's few edges instead.
The engine's statement has the ``+`` now: the script says so and times it against the same
statement without it. Both run in a transaction that is rolled back; the engine is not modified.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks
from engine_sql import SQLITE, Sql, lite, requeue, time_out_due, vary

from engine import Engine, Worker
from engine.logs import configure_logging


class Shifted:
    def __init__(self, seconds: float) -> None:
        self.offset_ms = int(seconds * 1000)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


async def park(url: str, n: int) -> None:
    deadline = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    async with Engine(url) as engine:
        worker = Worker(engine, bench_tasks.BENCH_TASKS)
        runner = asyncio.create_task(worker.run())
        await worker.started.wait()
        for start in range(0, n, 2000):
            await asyncio.gather(
                *(
                    engine.trigger("bench-timer", {"deadline": deadline.isoformat()})
                    for _ in range(start, min(n, start + 2000))
                )
            )
        while await _busy(engine):  # noqa: ASYNC110 (polling the database)
            await asyncio.sleep(0.2)
        worker.stop()
        await runner


async def _busy(engine: Engine) -> bool:
    for status in ("QUEUED", "EXECUTING"):
        if (await engine.runs.list(status=status, limit=1)).data:
            return True
    return False


async def fire(url: str, limit: int) -> tuple[float, list[float], int]:
    async with Engine(url, clock=Shifted(2 * 3600)) as engine:
        storage = engine.storage
        calls: list[float] = []
        fired = 0
        started = time.perf_counter()
        while True:
            t = time.perf_counter()
            count = await storage.fire_due_timers(limit)
            calls.append((time.perf_counter() - t) * 1000)
            fired += count
            if count < limit:
                break
        return (time.perf_counter() - started) * 1000, calls, fired


def requeue_variants() -> dict[str, Sql]:
    """The engine's re-queue on SQLite and the variants of it that apply to its text."""
    _, engine = requeue(SQLITE)
    variants = {"engine": engine}
    plus = vary(engine, "AND rw.waitpoint_id IN", "AND +rw.waitpoint_id IN")
    if plus is not None:
        variants["+rw.waitpoint_id"] = plus
    else:
        print(
            "  variant +rw.waitpoint_id does not apply: the engine's re-queue has no"
            " 'AND rw.waitpoint_id IN'"
        )
        bare = vary(engine, "AND +rw.waitpoint_id IN", "AND rw.waitpoint_id IN")
        if bare is not None:
            print("  (the engine writes +rw.waitpoint_id; timed against rw.waitpoint_id)")
            variants["rw.waitpoint_id"] = bare
    return variants


def time_requeue(path: Path, batch: int, variants: dict[str, Sql]) -> None:
    close = time_out_due(SQLITE)
    for name, sql in variants.items():
        conn = sqlite3.connect(path, isolation_level=None)
        now = time.time_ns() // 1_000_000 + 2 * 3600 * 1000
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute(*lite(close, now=now, limit=batch))]
        t = time.perf_counter()
        conn.execute(*lite(sql, now=now, ids=ids, runs=[]))
        ms = (time.perf_counter() - t) * 1000
        queued = conn.execute("SELECT count(*) FROM runs WHERE status = 'QUEUED'").fetchone()[0]
        conn.execute("ROLLBACK")
        conn.close()
        print(
            f"  re-queue of {len(ids):,} closed waitpoints, {name:>17}: {ms:8.1f} ms"
            f" ({queued:,} runs queued)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--keep", help="also copy the parked database (before firing) here")
    args = parser.parse_args()
    configure_logging("json", 30)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        base = Path(tmp) / "parked.db"
        asyncio.run(park(f"sqlite:///{base}", args.n))
        if args.keep:
            shutil.copy(base, args.keep)
        for limit in (1000, args.n):
            copy = Path(tmp) / f"fire{limit}.db"
            shutil.copy(base, copy)
            total, calls, fired = asyncio.run(fire(f"sqlite:///{copy}", limit))
            per_call = ", ".join(f"{c:.0f}" for c in calls)
            print(
                f"fire_due_timers, limit {limit:>6,}: fired {fired:,} tokens"
                " (and re-queued their runs) in"
                f" {total:.0f} ms; per call ms: {per_call}"
            )
        variants = requeue_variants()
        for batch in sorted({1000, min(3000, args.n), args.n}):
            time_requeue(base, batch, variants)


if __name__ == "__main__":
    main()
