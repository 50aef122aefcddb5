"""Item 0: the physical limit, the database alone without the engine.

SQLite: plain ``sqlite3`` on the same disk, one-row commits and rows in one transaction.
PostgreSQL: plain asyncpg (``backends.pg_baseline``): one-row commits on one connection, on 8
at once, with ``pg_notify`` in each, and rows in one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from backends import pg_baseline
from harness import Context, say
from report import Results


def bench_sqlite_baseline(
    ctx: Context, commits: int = 2_000, rows: int = 100_000
) -> dict[str, Any]:
    """Plain sqlite3 on the same disk, WAL + synchronous=FULL: one-row commits per second, and
    rows per second inserted in one transaction (the ceiling group commit can approach)."""
    ctx.counter += 1
    path = ctx.dir / f"{ctx.counter:03d}-sqlite-baseline.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    body = "x" * 200
    started = time.perf_counter()
    for _ in range(commits):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
        conn.execute("COMMIT")
    commit_rate = commits / (time.perf_counter() - started)
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (body) VALUES (?)", ((body,) for _ in range(rows)))
    conn.execute("COMMIT")
    row_rate = rows / (time.perf_counter() - started)
    conn.close()
    return {"commits_per_s": commit_rate, "rows_per_s": row_rate}


async def run(ctx: Context, results: Results) -> None:
    if ctx.backend == "sqlite":
        m = bench_sqlite_baseline(ctx)
        results.add_raw("sqlite_baseline", m)
        for key, metric, value in (
            ("0.commits", "one-row commits/s (sqlite3, no engine)", m["commits_per_s"]),
            ("0.rows", "rows/s in one transaction (sqlite3, no engine)", m["rows_per_s"]),
        ):
            row = results.row(
                key,
                label="SQLite on this disk, WAL, FULL",
                metric=metric,
                worker="-",
                unit="/s",
            )
            row.samples.append(value)
        say(f"  0 sqlite: {m['commits_per_s']:.0f} commits/s, {m['rows_per_s']:.0f} rows/s")
        return
    m = await pg_baseline(ctx.args.pg_url)
    results.add_raw("pg_baseline", m)
    lanes = m["lanes"]
    for key, metric, value in (
        ("0.pg.commits", "one-row commits/s, 1 connection (asyncpg)", m["commits_per_s"]),
        (
            "0.pg.lanes",
            f"one-row commits/s, {lanes} connections at once",
            m["concurrent_commits_per_s"],
        ),
        (
            "0.pg.notify",
            f"one-row commits/s + pg_notify, {lanes} connections at once",
            m["concurrent_notify_commits_per_s"],
        ),
        ("0.pg.rows", "rows/s in one transaction", m["rows_per_s"]),
    ):
        row = results.row(
            key, label="PostgreSQL alone, no engine", metric=metric, worker="-", unit="/s"
        )
        row.samples.append(value)
    say(
        f"  0 postgres: {m['commits_per_s']:.0f} commits/s on 1 connection,"
        f" {m['concurrent_commits_per_s']:.0f} on {lanes},"
        f" {m['concurrent_notify_commits_per_s']:.0f} with NOTIFY;"
        f" {m['rows_per_s']:.0f} rows/s"
    )
