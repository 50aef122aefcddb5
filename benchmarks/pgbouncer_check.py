"""Does Waitpoint work through PgBouncer in transaction mode? Three checks, printed as text.

    python benchmarks/pgbouncer_check.py --direct postgresql://postgres@127.0.0.1:5432/test \\
        --pooled postgresql://postgres@127.0.0.1:6433/test

``--pooled`` is a PgBouncer (``pool_mode = transaction``) in front of the ``--direct`` server;
both on this machine. Each check uses a schema of its own, dropped at the end.

1. LISTEN through the pooler: a client LISTENs through PgBouncer while other pooled clients
   run short transactions; a direct connection sends 20 NOTIFYs. How many arrive?
2. The engine's own connections through the pooler, as it opens them (``search_path`` and
   ``application_name`` as startup parameters, asyncpg's prepared-statement cache on); with
   ``--pooled-ignoring`` also through a second PgBouncer that has
   ``ignore_startup_parameters = search_path``.
3. Plain asyncpg with its statement cache on (the default, as the engine uses it), 200
   prepared queries from 8 pooled connections at once.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

import asyncpg


async def check_listen(direct: str, pooled: str, notifies: int = 20) -> str:
    channel = f"bench_{uuid.uuid4().hex[:12]}"
    got: list[str] = []
    listener = await asyncpg.connect(pooled, statement_cache_size=0)
    others = [await asyncpg.connect(pooled, statement_cache_size=0) for _ in range(4)]
    sender = await asyncpg.connect(direct)
    try:
        await listener.add_listener(channel, lambda *args: got.append(args[3]))
        stop = asyncio.Event()

        async def busy(conn: Any) -> None:  # other clients sharing the pool's server connections
            while not stop.is_set():
                async with conn.transaction():
                    await conn.fetchval("SELECT 1")
                await asyncio.sleep(0.001)

        load = [asyncio.create_task(busy(c)) for c in others]
        for k in range(notifies):
            await sender.execute(f"NOTIFY {channel}, '{k}'")
            await asyncio.sleep(0.05)
            if k % 5 == 4:  # the listener uses its connection now and then, as a worker would
                await listener.fetchval("SELECT 1")
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*load)
    finally:
        for conn in (listener, *others, sender):
            await conn.close()
    return (
        f"1. LISTEN through PgBouncer (transaction mode): {len(got)} of {notifies} notifications"
        " reached the listener"
    )


async def check_engine(direct: str, pooled: str, label: str = "2.") -> str:

    schema = f"bench_{uuid.uuid4().hex}"
    try:
        return await _engine(pooled, schema, label)
    finally:
        conn = await asyncpg.connect(direct)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def _engine(pooled: str, schema: str, label: str) -> str:
    from engine import Engine

    try:
        async with Engine(f"{pooled}?schema={schema}") as engine:
            runs = await asyncio.gather(
                *(engine.trigger("bench-trivial", {"i": i}) for i in range(50)),
                return_exceptions=True,
            )
            errors = [r for r in runs if isinstance(r, BaseException)]
            first = f"; first error: {errors[0]}" if errors else ""
            return (
                f"{label} Engine through PgBouncer: opened; {len(runs) - len(errors)} of 50"
                f" triggers succeeded{first}"
            )
    except Exception as exc:
        return f"{label} Engine through PgBouncer: cannot open: {type(exc).__name__}: {exc}"


async def check_prepared(pooled: str) -> str:
    conns = [await asyncpg.connect(pooled) for _ in range(8)]  # statement cache on (default)
    errors: list[BaseException] = []

    async def lane(conn: Any, k: int) -> None:
        for i in range(25):
            try:
                await conn.fetchval(f"SELECT $1::int + {k}", i)
            except Exception as exc:
                errors.append(exc)

    try:
        await asyncio.gather(*(lane(c, k) for k, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    first = f"; first error: {type(errors[0]).__name__}: {errors[0]}" if errors else ""
    return (
        f"3. asyncpg prepared statements through PgBouncer: {200 - len(errors)} of 200 queries"
        f" succeeded{first}"
    )


async def main(args: argparse.Namespace) -> None:
    print(await check_listen(args.direct, args.pooled))
    print(await check_engine(args.direct, args.pooled))
    if args.pooled_ignoring:
        print(await check_engine(args.direct, args.pooled_ignoring, "2b. (search_path ignored)"))
    print(await check_prepared(args.pooled))


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_tasks  # noqa: F401 - registers bench-trivial

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direct", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--pooled", default="postgresql://postgres@127.0.0.1:6433/test")
    parser.add_argument(
        "--pooled-ignoring", help="a PgBouncer with ignore_startup_parameters = search_path"
    )
    asyncio.run(main(parser.parse_args()))
