"""Round trips per token-wait run on PostgreSQL, by storage operation, and who sent them.

    .venv/bin/python benchmarks/pg_round_trips.py --n 300

Runs ``bench-wait`` (a step, a token, a wait, the end) N times with one in-process worker
and a second Engine as the client (trigger, complete), on a fresh schema, one run at a time
so that nothing is shared between runs. Counts every statement each Engine's connections
send (asyncpg's ``execute``/``fetch``/...; ``BEGIN`` and ``COMMIT`` included) under the
storage operation that sent it, and the server's ``xact_commit`` for the schema's database.
Prints a table per side: operation, calls per run, statements per run. It is a counter, not
a timer: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import inspect
import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import bench_tasks  # noqa: F401  (registers the tasks)

from engine import Engine, Worker
from engine.registry import REGISTRY

DEFAULT_URL = os.environ.get(
    "WAITPOINT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "op", default=None
)
statements: Counter[tuple[str, str]] = Counter()
calls: Counter[tuple[str, str]] = Counter()


def count_statements() -> None:
    from asyncpg.connection import Connection

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        fn = getattr(Connection, name)

        def counted(fn: Any = fn) -> Any:
            @functools.wraps(fn)
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                statements[_current.get() or ("?", "?")] += 1
                return await fn(self, *args, **kwargs)

            return call

        setattr(Connection, name, counted())


def label_operations(storage: Any, side: str) -> None:
    """Every public storage coroutine runs with its name (and side) in ``_current``."""
    for name in dir(type(storage)):
        if name.startswith("_"):
            continue
        attr = getattr(storage, name)
        if not inspect.iscoroutinefunction(attr):
            continue

        def labelled(name: str = name, fn: Any = attr) -> Any:
            @functools.wraps(fn)
            async def call(*args: Any, **kwargs: Any) -> Any:
                outer = _current.get()
                if outer is not None:  # an operation inside another counts as the outer one
                    return await fn(*args, **kwargs)
                token = _current.set((side, name))
                calls[(side, name)] += 1
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)

            return call

        setattr(storage, name, labelled())


async def xact_commit(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        value = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await conn.close()


async def main(url: str, n: int) -> None:
    schema = f"rt_{uuid.uuid4().hex[:12]}"
    db_url = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    count_statements()
    try:
        async with Engine(db_url) as worker_engine, Engine(db_url) as client:
            label_operations(worker_engine.storage, "worker")
            label_operations(client.storage, "client")
            worker = Worker(worker_engine, {"bench-wait": REGISTRY["bench-wait"]})
            runner = asyncio.create_task(worker.run())
            await worker.started.wait()
            harness = await asyncpg.connect(url, server_settings={"search_path": schema})
            for i in range(5):  # warm up: prepared statements, the task registry's cache
                await one_run(client, harness, i)
            await asyncio.sleep(0.5)
            statements.clear()
            calls.clear()
            before = await xact_commit(url)
            for i in range(n):
                await one_run(client, harness, i)
            await asyncio.sleep(0.2)  # the worker's last finish
            after = await xact_commit(url)
            harness_reads = statements[("?", "?")]
            await harness.close()
            worker.stop()
            await runner
    finally:
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    # the harness's reads and the two flushes are transactions too
    report(n, (after - before - 2 - harness_reads) / n)


async def one_run(client: Engine, harness: asyncpg.Connection, i: int) -> None:
    """Trigger, complete the token once the run parked on it, wait for the end (the harness
    watches on a connection of its own; its statements are not counted)."""
    run = await client.trigger("bench-wait", {"i": i})
    # polled on the harness's own connection on purpose: no notification of the engine's
    # may be taken, or its statements counted, to find out when to go on
    while not (  # noqa: ASYNC110
        token := await harness.fetchval(
            "SELECT waitpoint_id FROM run_waits WHERE run_id = $1", run.id
        )
    ):
        await asyncio.sleep(0.001)
    await client.tokens.complete(token, {"ok": True})
    status = "SELECT status FROM runs WHERE id = $1"
    while await harness.fetchval(status, run.id) != "COMPLETED":  # noqa: ASYNC110
        await asyncio.sleep(0.001)


def report(n: int, commits: float) -> None:
    for side in ("worker", "client"):
        print(f"\n{side}: per run")
        print(f"{'operation':<28}{'calls':>8}{'statements':>12}")
        total = 0.0
        names = sorted(
            {name for s, name in statements if s == side} | {name for s, name in calls if s == side}
        )
        for name in names:
            per = statements[(side, name)] / n
            total += per
            print(f"{name:<28}{calls[(side, name)] / n:>8.2f}{per:>12.2f}")
        print(f"{'total':<28}{'':>8}{total:>12.2f}")
    print(f"\nxact_commit per run (the server's count, both sides): {commits:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.n))
