"""Evidence for the PostgreSQL timer lateness: what firing due timeouts costs, statement by
statement, when nothing else runs.

    python benchmarks/micro_pg_timers.py [--n 3000] [--url postgresql://...]

Parks N ``bench-timer`` runs (a worker in this process) on tokens due in one hour, in a schema
of its own (dropped at the end), and stops the worker. Then, each in a transaction that is
rolled back, with the clock two hours ahead:

- closes a batch of due tokens as ``_time_out_tokens`` does (``TIME_OUT`` of
  ``engine/storage/postgres_tokens.py``, at most 1,000, the worker's batch), then times the
  engine's re-queue (``_LOCK_BLOCKED`` and ``_REQUEUE_BLOCKED`` of ``postgres_base.py``),
  with the plan of the re-queue;
- times the same re-queue with ``rw.waitpoint_id = ANY($1)`` in its ``mode = 'any'`` EXISTS
  written ``(rw.waitpoint_id || '') = ANY($1)``, which keeps PostgreSQL from probing the
  ``(run_id, waitpoint_id)`` key once per closed id for every run (quadratic in the batch).

It also times one completion's re-queue (one token closed, as ``complete_token`` does) with the
engine's statement and with ``OFFSET 0`` in its ``NOT EXISTS``, against the number of runs
WAITING. It prints the re-queue's plan with ``plan_cache_mode`` forced to custom and to generic (the
plan a prepared statement may get from its 6th execution on). Finally it calls the engine's own
``storage.fire_due_timers(1000)`` until done (committed), as the worker's timer loop does, and
prints each call's time; then parks N runs again in a second schema and does the same with
``plan_cache_mode=force_custom_plan`` in the database URL. The engine is not modified.
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
from micro_timers import Shifted, fire, park

from engine.logs import configure_logging


async def time_requeue(url: str, schema: str, batch: int) -> None:
    from engine.storage import postgres_base, postgres_tokens

    engine_sql = postgres_base._REQUEUE_BLOCKED
    variant = engine_sql.replace(
        "AND rw.waitpoint_id = ANY($1::text[])", "AND (rw.waitpoint_id || '') = ANY($1::text[])"
    )
    variants = {"engine": engine_sql}
    if variant != engine_sql:
        variants["(rw.waitpoint_id || '')"] = variant
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for name, sql in variants.items():
            now = Shifted(2 * 3600).now_ms()
            tx = conn.transaction()
            await tx.start()
            try:
                t = time.perf_counter()
                rows = await conn.fetch(
                    postgres_tokens.TIME_OUT
                    + " WHERE id IN (SELECT id FROM waitpoints WHERE status = 'WAITING'"
                    "  AND timeout_at <= $1 ORDER BY timeout_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    " RETURNING id",
                    now,
                    batch,
                )
                close_ms = (time.perf_counter() - t) * 1000
                ids = [r["id"] for r in rows]
                t = time.perf_counter()
                locked = [r["id"] for r in await conn.fetch(postgres_base._LOCK_BLOCKED, ids)]
                lock_ms = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                status = await conn.execute(sql, ids, locked, now)
                requeue_ms = (time.perf_counter() - t) * 1000
                plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, ids, locked, now)
            finally:
                await tx.rollback()
            print(
                f"  batch of {len(ids):,}, {name:>24}: close {close_ms:7.1f} ms,"
                f" lock runs {lock_ms:7.1f} ms, re-queue {requeue_ms:8.1f} ms ({status})"
            )
            if name == "engine":
                for line in plan:  # the id arrays make some lines very long
                    text = line[0]
                    print("      " + (text if len(text) <= 140 else text[:137] + "..."))
    finally:
        await conn.close()


async def time_completion(url: str, schema: str, repeat: int = 20) -> None:
    """One token completed, as ``complete_token`` re-queues its run: the engine's statements,
    and the re-queue with ``OFFSET 0`` in its ``NOT EXISTS`` (which keeps PostgreSQL from
    turning it into a hashed subplan: a join of every ``run_waits`` row with every WAITING
    waitpoint, built once per statement, so once per completion)."""
    from engine.storage import postgres_base

    engine_sql = postgres_base._REQUEUE_BLOCKED
    variant = engine_sql.replace(
        "WHERE rw.run_id = runs.id AND w.status = 'WAITING'))",
        "WHERE rw.run_id = runs.id AND w.status = 'WAITING' OFFSET 0))",
    )
    variants = {"engine": engine_sql}
    if variant != engine_sql:
        variants["OFFSET 0"] = variant
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
                    locked = [
                        r["id"] for r in await conn.fetch(postgres_base._LOCK_BLOCKED, [token])
                    ]
                    t = time.perf_counter()
                    await conn.execute(sql, [token], locked, now)
                    times.append((time.perf_counter() - t) * 1000)
                    if not plan:
                        plan = await conn.fetch(
                            "EXPLAIN (ANALYZE, COSTS OFF) " + sql, [token], locked, now
                        )
                finally:
                    await tx.rollback()
            times.sort()
            print(
                f"  one completion's re-queue, {waiting:,} runs WAITING, {name:>8}:"
                f" median {times[len(times) // 2]:.2f} ms over {len(times)} tokens"
            )
            for line in plan:
                text = line[0]
                print("      " + (text if len(text) <= 140 else text[:137] + "..."))
    finally:
        await conn.close()


async def generic_plan(url: str, schema: str, batch: int = 1000) -> None:
    """The re-queue of one batch with a custom plan and with the generic plan PostgreSQL
    switches to after a prepared statement's 5th execution (``force_generic_plan`` shows it at
    once), each ``EXPLAIN ANALYZE``d in a transaction that is rolled back."""
    from engine.storage import postgres_base, postgres_tokens

    close = (
        postgres_tokens.TIME_OUT + " WHERE id IN (SELECT id FROM waitpoints WHERE status ="
        " 'WAITING' AND timeout_at <= $1 ORDER BY timeout_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " RETURNING id"
    )
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            now = Shifted(2 * 3600).now_ms()
            tx = conn.transaction()
            await tx.start()
            try:
                ids = [r["id"] for r in await conn.fetch(close, now, batch)]
                locked = [r["id"] for r in await conn.fetch(postgres_base._LOCK_BLOCKED, ids)]
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                await conn.execute(
                    f"PREPARE requeue_{mode}(text[], text[], bigint) AS"  # outlives a rollback
                    f" {postgres_base._REQUEUE_BLOCKED}"
                )

                def array(values: list[str]) -> str:
                    return "ARRAY[" + ",".join(f"'{v}'" for v in values) + "]::text[]"

                plan = await conn.fetch(
                    f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE requeue_{mode}"
                    f"({array(ids)}, {array(locked)}, {now})"
                )
            finally:
                await tx.rollback()
            print(f"  re-queue of {len(ids):,} runs, plan_cache_mode = {mode}:")
            for line in plan:
                text = line[0]
                print("      " + (text if len(text) <= 140 else text[:137] + "..."))
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
