"""Evidence for one PostgreSQL bound: transactions that NOTIFY commit one at a time.

    python benchmarks/micro_pg_notify.py [--url postgresql://postgres@127.0.0.1:5432/test]

Every engine write that may make work runs ``SELECT pg_notify(...)`` inside its transaction
(``PostgresStorage._transaction`` and ``_announce`` in ``engine/storage/postgres.py``).
PostgreSQL serialises the commits of notifying transactions: ``PreCommit_Notify`` takes a
cluster-wide lock that is held until the commit (and its WAL flush) is done, so that
notifications queue in commit order. Plain commits from several connections share WAL flushes
(group commit); notifying ones cannot.

This script commits one-row INSERTs from 1, 2, 4, 8 and 16 connections at once (asyncpg, no
engine, a schema of its own, dropped at the end), plain and with one ``pg_notify`` each, and
prints commits/s for each.
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

from backends import DEFAULT_PG_URL, drop_schema


async def rate(conns: list[Any], per_lane: int, notify: bool, channel: str) -> float:
    async def lane(conn: Any) -> None:
        for _ in range(per_lane):
            async with conn.transaction():
                await conn.execute("INSERT INTO t (body) VALUES ($1)", "x" * 200)
                if notify:
                    await conn.execute("SELECT pg_notify($1, '')", channel)

    started = time.perf_counter()
    await asyncio.gather(*(lane(c) for c in conns))
    return len(conns) * per_lane / (time.perf_counter() - started)


async def main(url: str, lanes: list[int], seconds: float, repeat: int) -> None:
    schema = f"bench_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.execute(f'CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, body text)')
    await admin.close()
    settings = {"search_path": schema}
    conns = [await asyncpg.connect(url, server_settings=settings) for _ in range(max(lanes))]
    try:
        print(f"{'connections':>11} {'plain commits/s':>16} {'with pg_notify':>15} {'ratio':>6}")
        for k in lanes:
            per_lane = max(50, int(seconds * 2000 / k))
            plain, notified = [], []
            for _ in range(repeat):  # alternate, so both see the same machine
                plain.append(await rate(conns[:k], per_lane, False, schema))
                notified.append(await rate(conns[:k], per_lane, True, schema))
            p, n = sorted(plain)[len(plain) // 2], sorted(notified)[len(notified) // 2]
            print(f"{k:>11} {p:>16,.0f} {n:>15,.0f} {n / p:>6.2f}")
    finally:
        for conn in conns:
            await conn.close()
        await drop_schema(url, schema)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_PG_URL)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=0.5, help="about this long per sample")
    parser.add_argument("--repeat", type=int, default=3, help="samples per cell (median)")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.lanes, args.seconds, args.repeat))
