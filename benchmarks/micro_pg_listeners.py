"""Evidence for one PostgreSQL cost: each listening backend commits a transaction per
notifying commit, whatever channels it listens to.

    python benchmarks/micro_pg_listeners.py [--url postgresql://postgres@127.0.0.1:5432/test]

A backend that has run ``LISTEN`` is signalled when a transaction of its database that sent a
``NOTIFY`` commits (``SignalBackends`` in PostgreSQL's ``async.c`` signals every listener of
the database that has not read the queue up to its head, without looking at channels), and it
reads the queue inside a transaction of its own, which ``pg_stat_database.xact_commit``
counts. So every engine process that listens (each worker, each client that waits) costs the
server one transaction per notifying commit of any process: with 4 workers and a client, the
capacity benchmark's ``xact_commit`` per run grows by about 4 per added worker while the
statements the engine sends barely grow.

This script sends N notifying commits (``SELECT pg_notify('b', 'x')``, autocommit) with 0
listeners, with some listening to another channel, and with some listening to that one, and
prints ``xact_commit`` per notifying commit of the database (every connection is closed
before the count is read, so that its statistics are flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import asyncpg

DEFAULT_URL = os.environ.get(
    "WAITPOINT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def xact_commit(admin: asyncpg.Connection, database: str) -> int:
    await asyncio.sleep(1.0)  # closed backends' statistics reach the server
    value = await admin.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
    )
    return int(value)


async def trial(url: str, database: str, listeners: int, channel: str, n: int) -> float:
    admin = await asyncpg.connect(url)
    try:
        listening = [await asyncpg.connect(url) for _ in range(listeners)]
        for conn in listening:
            await conn.add_listener(channel, lambda *_: None)
        sender = await asyncpg.connect(url)
        before = await xact_commit(admin, database)
        for _ in range(n):
            await sender.execute("SELECT pg_notify('b', 'x')")
        await asyncio.sleep(0.5)  # the listeners read what was sent
        for conn in [sender, *listening]:
            await conn.close()
        after = await xact_commit(admin, database)
    finally:
        await admin.close()
    # the admin's own two reads are in the count: leave them out
    return (after - before - 2) / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--n", type=int, default=500, help="notifying commits per trial")
    parser.add_argument("--listeners", type=int, default=4)
    args = parser.parse_args()
    conn = await asyncpg.connect(args.url)
    database = await conn.fetchval("SELECT current_database()")
    await conn.close()
    print(f"{args.n} notifying commits on channel 'b', database {database}")
    print(f"{'listeners':<32}{'xact_commit per notifying commit':>34}")
    k = args.listeners
    for label, listeners, channel in [
        ("none", 0, "a"),
        (f"{k} on another channel ('a')", k, "a"),
        (f"{k} on that channel ('b')", k, "b"),
    ]:
        per = await trial(args.url, database, listeners, channel, args.n)
        print(f"{label:<32}{per:>34.2f}")


if __name__ == "__main__":
    asyncio.run(main())
