"""Evidence for the PostgreSQL timer lateness: what firing due timeouts costs, statement by
statement, when nothing else runs.

    python benchmarks/micro_pg_timers.py [--n 3000] [--url postgresql://...]

Parks N ``bench-timer`` runs (a worker in this process) on tokens due in one hour, in a schema
of its own (dropped at the end), and stops the worker. Then, each in a transaction that is
rolled back, with the clock two hours ahead:

- closes a batch of due tokens with the statement of ``Timers._time_out_tokens``
  (``engine/storage/timers.py``, built by ``StorageCore._time_out`` of ``core.py``; at most
  1,000, the worker's batch), then times the engine's re-queue (the lock of the runs and the
  UPDATE that ``StorageCore._requeue_blocked`` of ``engine/storage/core.py`` yields), with the
  plan of the re-queue; the statements come from the engine through ``engine_sql.py``;
- times the same re-queue with ``rw.waitpoint_id = ANY(:ids)`` in its ``mode = 'any'`` EXISTS
  written ``(rw.waitpoint_id || '') = ANY(:ids)``, which keeps PostgreSQL from probing the
  ``(run_id, waitpoint_id)`` key once per closed id for every run (quadratic in the batch).

It also times one completion's re-queue (one token closed, as ``complete_token`` does) with the
engine's statement and with ``OFFSET 0`` in its ``NOT EXISTS``, against the number of runs
WAITING. It prints the re-queue's plan with ``plan_cache_mode`` forced to custom and to generic (the
plan a prepared statement may get from its 6th execution on). A variant whose fragment is no
longer in the engine's text is reported as not applying and left out. Finally it calls the
engine's own ``storage.fire_due_timers(1000)`` until done (committed), as the worker's timer
loop does, and prints each call's time; then parks N runs again in a second schema and does the
same with ``plan_cache_mode=force_custom_plan`` in the database URL. The engine is not modified.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import DEFAULT_PG_URL, drop_schema, with_schema
from engine_sql import POSTGRES, Sql, pg, pg_names, requeue, time_out_due, vary
from micro_timers import Shifted, fire, park

from engine.logs import configure_logging


def _variant(engine: Sql, name: str, old: str, new: str) -> dict[str, Sql]:
    variant = vary(engine, old, new)
    if variant is None:
        print(f"  variant {name} does not apply: the engine's re-queue has no {old!r}")
        return {}
    return {name: variant}


def _print_plan(plan: list[Any]) -> None:
    for line in plan:  # the id arrays make some lines very long
        text = line[0]
        print("      " + (text if len(text) <= 140 else text[:137] + "..."))


async def _lock(conn: Any, lock: Sql | None, ids: list[str]) -> list[str]:
    """The engine's lock of the runs to re-queue, as ``_requeue_blocked`` takes it."""
    if lock is None:  # pragma: no cover - the engine locks on PostgreSQL
        return []
    return [r["id"] for r in await conn.fetch(*_args(lock, ids=ids))]


def _args(sql: Sql, **params: Any) -> list[Any]:
    text, args = pg(sql, **params)
    return [text, *args]


async def time_requeue(url: str, schema: str, batch: int) -> None:
    lock, engine_sql = requeue(POSTGRES)
    close = time_out_due(POSTGRES)
    variants = {"engine": engine_sql} | _variant(
        engine_sql,
        "(rw.waitpoint_id || '')",
        "AND rw.waitpoint_id = ANY(:ids::text[])",
        "AND (rw.waitpoint_id || '') = ANY(:ids::text[])",
    )
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for name, sql in variants.items():
            now = Shifted(2 * 3600).now_ms()
            tx = conn.transaction()
            await tx.start()
            try:
                t = time.perf_counter()
                rows = await conn.fetch(*_args(close, now=now, limit=batch))
                close_ms = (time.perf_counter() - t) * 1000
                ids = [r["id"] for r in rows]
                t = time.perf_counter()
                locked = await _lock(conn, lock, ids)
                lock_ms = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                status = await conn.execute(*_args(sql, ids=ids, runs=locked, now=now))
                requeue_ms = (time.perf_counter() - t) * 1000
                text, args = pg(sql, ids=ids, runs=locked, now=now)
                plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + text, *args)
            finally:
                await tx.rollback()
            print(
                f"  batch of {len(ids):,}, {name:>24}: close {close_ms:7.1f} ms,"
                f" lock runs {lock_ms:7.1f} ms, re-queue {requeue_ms:8.1f} ms ({status})"
            )
            if name == "engine":
                _print_plan(plan)
    finally:
        await conn.close()


async def time_completion(url: str, schema: str, repeat: int = 20) -> None:
    """One token completed, as ``complete_token`` re-queues its run: the engine's statements,
    and the re-queue with ``OFFSET 0`` in its ``NOT EXISTS`` (which keeps PostgreSQL from
    turning it into a hashed subplan: a join of every ``run_waits`` row with every WAITING
    waitpoint, built once per statement, so once per completion)."""
    lock, engine_sql = requeue(POSTGRES)
    variants = {"engine": engine_sql} | _variant(
        engine_sql,
        "OFFSET 0",
        "AND w.status = 'WAITING'))",
        "AND w.status = 'WAITING' OFFSET 0))",
    )
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        waiting = await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'WAITING'")
        tokens = [
            r["waitpoint_id"]
            for r in await conn.fetch("SELECT waitpoint_id FROM run_waits LIMIT $1", repeat)
        ]
        for name, sql in variants.items():
            times = []
            plan: list[Any] = []
            for token in tokens:
                now = Shifted(0).now_ms()
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.execute(
                        "UPDATE waitpoints SET status = 'COMPLETED', completed_at = $1"
                        " WHERE id = $2",
                        now,
                        token,
                    )
                    locked = await _lock(conn, lock, [token])
                    text, args = pg(sql, ids=[token], runs=locked, now=now)
                    t = time.perf_counter()
                    await conn.execute(text, *args)
                    times.append((time.perf_counter() - t) * 1000)
                    if not plan:
                        plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + text, *args)
                finally:
                    await tx.rollback()
            times.sort()
            print(
                f"  one completion's re-queue, {waiting:,} runs WAITING, {name:>8}:"
                f" median {times[len(times) // 2]:.2f} ms over {len(times)} tokens"
            )
            _print_plan(plan)
    finally:
        await conn.close()


_TYPES = {"ids": "text[]", "runs": "text[]", "now": "bigint"}
"""The SQL types of the re-queue's parameters, for ``PREPARE``."""


async def generic_plan(url: str, schema: str, batch: int = 1000) -> None:
    """The re-queue of one batch with a custom plan and with the generic plan PostgreSQL
    switches to after a prepared statement's 5th execution (``force_generic_plan`` shows it at
    once), each ``EXPLAIN ANALYZE``d in a transaction that is rolled back."""
    lock, engine_sql = requeue(POSTGRES)
    close = time_out_due(POSTGRES)
    text, names = pg(engine_sql)[0], pg_names(engine_sql)

    def literal(value: Any) -> str:
        if isinstance(value, list):
            return "ARRAY[" + ",".join(f"'{v}'" for v in value) + "]::text[]"
        return str(int(value))

    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            now = Shifted(2 * 3600).now_ms()
            tx = conn.transaction()
            await tx.start()
            try:
                ids = [r["id"] for r in await conn.fetch(*_args(close, now=now, limit=batch))]
                locked = await _lock(conn, lock, ids)
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                types = ", ".join(_TYPES[n] for n in names)
                await conn.execute(  # a prepared statement outlives a rollback
                    f"PREPARE requeue_{mode}({types}) AS {text}"
                )
                values = {"ids": ids, "runs": locked, "now": now}
                plan = await conn.fetch(
                    f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE requeue_{mode}"
                    f"({', '.join(literal(values[n]) for n in names)})"
                )
            finally:
                await tx.rollback()
            print(f"  re-queue of {len(ids):,} runs, plan_cache_mode = {mode}:")
            _print_plan(plan)
    finally:
        await conn.close()


async def fire_all(url: str, limit: int) -> None:
    total, calls, fired = await fire(url, limit)
    per_call = ", ".join(f"{c:.0f}" for c in calls)
    print(
        f"fire_due_timers({limit:,}) until done: fired {fired:,} tokens (and re-queued their"
        f" runs) in {total:.0f} ms; per call ms: {per_call}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3_000)
    parser.add_argument("--url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    configure_logging("json", 30)
    schema = f"bench_{uuid.uuid4().hex}"
    url = with_schema(args.url, schema)
    try:
        asyncio.run(park(url, args.n))
        print(f"{args.n:,} runs parked on tokens due at the same second")
        asyncio.run(time_completion(args.url, schema))
        for batch in sorted({100, 1000, args.n}):
            asyncio.run(time_requeue(args.url, schema, batch))
        asyncio.run(generic_plan(args.url, schema))
        asyncio.run(fire_all(url, 1000))
    finally:
        asyncio.run(drop_schema(args.url, schema))
    schema = f"bench_{uuid.uuid4().hex}"
    url = with_schema(args.url, schema) + "&plan_cache_mode=force_custom_plan"
    try:
        asyncio.run(park(url, args.n))
        print(f"again, {args.n:,} runs parked, plan_cache_mode=force_custom_plan in the URL:")
        asyncio.run(fire_all(url, 1000))
    finally:
        asyncio.run(drop_schema(args.url, schema))


if __name__ == "__main__":
    main()
