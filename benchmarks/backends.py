"""The two backends as the benchmark driver sees them: a fresh database per measurement, a
read-only reader for the driver's polling, and (PostgreSQL) the server's side of the cost.

- SQLite: a new file in the scratch directory; the reader is a plain ``sqlite3`` connection.
- PostgreSQL: a new schema ``bench_<uuid hex>`` on the server (``--pg-url``, default
  ``postgresql://postgres@127.0.0.1:5432/test``), dropped with ``DROP SCHEMA ... CASCADE``
  when the measurement ends; the reader is one ``asyncpg`` connection with that schema on its
  ``search_path``.

Readers take SQL with ``?`` placeholders (numbered ``$1..`` for PostgreSQL) and offer the two
expressions whose spelling differs (a payload field, a list of ids). The engine's tables have
the same columns on both backends (``engine/storage/postgres_schema.py``), so the rest of the
driver's SQL is shared.

``PgMeter`` reads what a measurement cost the server: the CPU of the server processes that
serve our connections (matched by client port in ``pg_stat_activity``), the CPU of every
PostgreSQL process (from ``/proc``, including the postmaster's reaped children: this counts
other clients of the server too), ``xact_commit`` of the database (``pg_stat_database``, also
shared with other clients) and the WAL written (cluster-wide).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

DEFAULT_PG_URL = os.environ.get(
    "WAITPOINT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
READER_NAME = "waitpoint-bench-reader"  # application_name of the driver's reader connection


class Reader(Protocol):
    """Read-only access for the driver's polling (never writes the engine's tables)."""

    backend: str
    payload_i: str  # the payload's "i" as an integer, for a row of runs aliased r

    async def value(self, sql: str, *params: Any) -> Any: ...

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]: ...

    def ids_in(self, column: str, ids: list[str]) -> tuple[str, Any]:
        """A condition ``column`` is one of ``ids``, and its parameter."""
        ...

    async def close(self) -> None: ...


class SQLiteReader:
    """A plain sqlite3 connection, opened on first use (after the engine made the file)."""

    backend = "sqlite"
    payload_i = "json_extract(r.payload, '$.i')"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA busy_timeout = 30000")
        return self._conn

    async def value(self, sql: str, *params: Any) -> Any:
        return self.conn.execute(sql, params).fetchone()[0]

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def ids_in(self, column: str, ids: list[str]) -> tuple[str, Any]:
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(ids)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def numbered(sql: str) -> str:
    """``?`` placeholders to ``$1, $2, ...`` (the driver's SQL has no ``?`` in literals)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))


class PostgresReader:
    """One asyncpg connection with the measurement's schema on its search_path, opened on
    first use."""

    backend = "postgres"
    payload_i = "(r.payload::json ->> 'i')::bigint"

    def __init__(self, server_url: str, schema: str) -> None:
        self.server_url = server_url
        self.schema = schema
        self._conn: Any = None

    async def _get(self) -> Any:
        if self._conn is None:
            import asyncpg

            settings = {"search_path": self.schema, "application_name": READER_NAME}
            self._conn = await asyncpg.connect(self.server_url, server_settings=settings)
        return self._conn

    async def value(self, sql: str, *params: Any) -> Any:
        return await (await self._get()).fetchval(numbered(sql), *params)

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await (await self._get()).fetch(numbered(sql), *params)]

    def ids_in(self, column: str, ids: list[str]) -> tuple[str, Any]:
        return f"{column} = ANY(?::text[])", ids

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@dataclass
class Database:
    """One fresh database (a SQLite file or a PostgreSQL schema) for one measurement."""

    backend: str
    url: str
    reader: Reader
    schema: str | None = None  # PostgreSQL
    room: dict[str, int] | None = None  # PostgreSQL: free connection slots when it started

    async def status_counts(self, table: str = "runs") -> dict[str, int]:
        rows = await self.reader.rows(f"SELECT status, count(*) FROM {table} GROUP BY status")
        return {str(s): int(n) for s, n in rows}


def with_schema(server_url: str, schema: str) -> str:
    separator = "&" if urlsplit(server_url).query else "?"
    return f"{server_url}{separator}schema={schema}"


CONNECTIONS_PER_PROCESS = 11  # the engine's pool (10) and its LISTEN connection


async def wait_for_room(server_url: str, needed: int, timeout: float = 300) -> dict[str, int]:
    """Wait until the server has ``needed`` connection slots free (the server is shared:
    taking the last slots would fail other people's tests, and ours). Returns what it saw."""
    import asyncpg

    started = time.monotonic()
    while True:
        conn = await asyncpg.connect(server_url)
        try:
            free = int(
                await conn.fetchval(
                    "SELECT current_setting('max_connections')::int"
                    " - current_setting('superuser_reserved_connections')::int"
                    " - (SELECT count(*) FROM pg_stat_activity"
                    "    WHERE backend_type = 'client backend')"
                )
            )
        finally:
            await conn.close()
        waited = time.monotonic() - started
        if free >= needed or waited > timeout:
            return {"free_slots": free, "needed_slots": needed, "waited_s": int(waited)}
        await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def fresh_database(
    backend: str, directory: Path, name: str, pg_url: str, processes: int = 2
) -> AsyncIterator[Database]:
    """A new database; its reader is closed (and a PostgreSQL schema dropped) on exit.

    The engine creates the tables when the first process opens the URL, so callers open an
    Engine or a worker before the reader's first query. On PostgreSQL it first waits for room
    on the server for ``processes`` engine processes.
    """
    if backend == "sqlite":
        path = directory / f"{name}.db"
        db = Database(backend, f"sqlite:///{path}", SQLiteReader(path))
        try:
            yield db
        finally:
            await db.reader.close()
        return
    room = await wait_for_room(pg_url, processes * CONNECTIONS_PER_PROCESS + 3)
    schema = f"bench_{uuid.uuid4().hex}"
    db = Database(backend, with_schema(pg_url, schema), PostgresReader(pg_url, schema), schema)
    db.room = room
    try:
        yield db
    finally:
        await db.reader.close()
        await drop_schema(pg_url, schema)


async def drop_schema(server_url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute("SET lock_timeout = '30s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def postgres_problem(server_url: str) -> str | None:
    """None if the benchmarks can use this server, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[postgres]')"
    try:
        conn = await asyncpg.connect(server_url, timeout=5)
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {server_url}: {exc}"
    return None


# --- what the server spends ------------------------------------------------------------


def proc_cpu_s(pid: int, children: bool = False) -> float:
    """User+system CPU seconds of a process (plus its reaped children's, if asked)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def socket_ports(pids: Iterable[int], server_port: int) -> set[int]:
    """Local TCP ports of these processes' connections to ``server_port``."""
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                if remote_port == server_port and int(parts[9]) in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class PgSnapshot:
    at: float
    ours: dict[int, float]  # backend pid -> CPU s, for backends serving the engine's processes
    reader: dict[int, float]  # the same for the driver's reader (polling, not the engine)
    all_cpu: float  # every PostgreSQL process, reaped children included
    xact_commit: int
    xact_rollback: int
    wal_bytes: int
    other_backends: int  # client backends not serving us (other users of the server)


class PgMeter:
    """The server's side of a measurement; needs the server on this machine (reads /proc)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        parts = urlsplit(server_url)
        self.port = parts.port or 5432
        self.database = (parts.path or "/postgres").lstrip("/") or "postgres"
        self.conn: Any = None
        self.postmaster: int | None = None

    async def open(self) -> None:
        import asyncpg

        settings = {"application_name": "waitpoint-bench-meter"}
        self.conn = await asyncpg.connect(self.server_url, server_settings=settings)
        with contextlib.suppress(Exception):
            backend = int(await self.conn.fetchval("SELECT pg_backend_pid()"))
            self.postmaster = _ppid(backend)
            proc_cpu_s(self.postmaster)  # readable: the server runs on this machine

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def snapshot(self, client_pids: Iterable[int]) -> PgSnapshot:
        ports = socket_ports(client_pids, self.port)
        rows = await self.conn.fetch(
            "SELECT pid, client_port, application_name FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        ours: dict[int, float] = {}
        reader: dict[int, float] = {}
        others = 0
        for row in rows:
            if row["client_port"] in ports:
                side = reader if row["application_name"] == READER_NAME else ours
                with contextlib.suppress(OSError):
                    side[row["pid"]] = proc_cpu_s(row["pid"])
            else:
                others += 1
        stats = await self.conn.fetchrow(
            "SELECT xact_commit, xact_rollback, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal"
            " FROM pg_stat_database WHERE datname = $1",
            self.database,
        )
        return PgSnapshot(
            at=time.monotonic(),
            ours=ours,
            reader=reader,
            all_cpu=self._all_cpu(),
            xact_commit=int(stats["xact_commit"]),
            xact_rollback=int(stats["xact_rollback"]),
            wal_bytes=int(stats["wal"]),
            other_backends=others,
        )

    def _all_cpu(self) -> float:
        if self.postmaster is None:
            return float("nan")
        total = proc_cpu_s(self.postmaster, children=True)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if _ppid(int(entry)) == self.postmaster:
                        total += proc_cpu_s(int(entry))
        return total

    @staticmethod
    def delta(before: PgSnapshot, after: PgSnapshot) -> dict[str, float]:
        """The server's cost between two snapshots (``pg_cpu_ours_s`` counts a backend that
        appeared in between from zero)."""
        ours = sum(cpu - before.ours.get(pid, 0.0) for pid, cpu in after.ours.items())
        reader = sum(cpu - before.reader.get(pid, 0.0) for pid, cpu in after.reader.items())
        return {
            "pg_cpu_ours_s": ours,
            "pg_cpu_reader_s": reader,
            "pg_cpu_all_s": after.all_cpu - before.all_cpu,
            "pg_xact_commit": after.xact_commit - before.xact_commit,
            "pg_xact_rollback": after.xact_rollback - before.xact_rollback,
            "pg_wal_bytes": after.wal_bytes - before.wal_bytes,
            "pg_backends_ours": len(after.ours),
            "pg_other_backends": max(before.other_backends, after.other_backends),
        }


async def sample_waits(
    meter: PgMeter, client_pids: list[int], stop: asyncio.Event, every: float = 0.05
) -> dict[str, int]:
    """Until ``stop``: every ``every`` seconds, what each backend serving these processes is
    doing (``pg_stat_activity``: state, and wait event if any), counted over all samples.

    ``active`` with no wait event is running on a CPU (or waiting for one); ``idle in
    transaction`` is a transaction waiting for the client's next statement (a round trip
    with its row locks held); ``Lock:object`` is the lock that serialises notifying commits;
    ``IO:WALSync``/``LWLock:WALWrite`` are commits waiting for the WAL flush."""
    counts: dict[str, int] = {}
    backends: list[int] = []
    refreshed = 0.0
    conn = meter.conn
    while not stop.is_set():
        if time.monotonic() - refreshed > 1.0:
            ports = socket_ports(client_pids, meter.port)
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])"
                " AND pid <> pg_backend_pid() AND application_name <> $2",
                list(ports),
                READER_NAME,
            )
            backends = [r["pid"] for r in rows]
            refreshed = time.monotonic()
        for row in await conn.fetch(
            "SELECT state, wait_event_type, wait_event, left(query, 90) AS query"
            " FROM pg_stat_activity WHERE pid = ANY($1::int[])",
            backends,
        ):
            state = row["state"] or "?"
            if row["wait_event_type"] and not (
                state == "idle" and row["wait_event"] == "ClientRead"
            ):
                key = f"{state}: {row['wait_event_type']}:{row['wait_event']}"
            else:
                key = state
            counts[key] = counts.get(key, 0) + 1
            if state == "active":  # a sampling profile of the statements the server runs
                query = "sql: " + " ".join((row["query"] or "").split())
                counts[query] = counts.get(query, 0) + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return counts


async def wait_for_stats_flush(meter: PgMeter, client_pids: list[int], timeout: float) -> None:
    """Wait until no server backend serves these (stopped) processes any more: a backend
    flushes its statistics (xact_commit) when it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = socket_ports(client_pids, meter.port)
        if not ports:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


async def describe_postgres(server_url: str) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        out: dict[str, Any] = {"version": await conn.fetchval("SHOW server_version")}
        for setting in (
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "commit_delay",
            "shared_buffers",
            "max_connections",
            "wal_level",
        ):
            out[setting] = await conn.fetchval(f"SHOW {setting}")
        out["asyncpg"] = asyncpg.__version__
        return out
    finally:
        await conn.close()


# --- 0. the physical limit on PostgreSQL -----------------------------------------------


async def pg_baseline(
    server_url: str,
    commits: int = 2_000,
    lanes: int = 8,
    lane_commits: int = 400,
    rows: int = 100_000,
) -> dict[str, float]:
    """Plain asyncpg against the server, no engine, in a schema of its own:

    - one-row commits/s on one connection, one after the other (a commit's round trip and
      WAL flush);
    - one-row commits/s from ``lanes`` connections at once (the server's group commit);
    - the same with one ``pg_notify`` in each transaction, which is what every engine write
      that may make work does (a notifying commit takes a cluster-wide lock);
    - rows/s inserted in one transaction.
    """
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex}"
    settings = {"search_path": schema, "application_name": "waitpoint-bench-baseline"}
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.execute(
            f'CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, body text NOT NULL)'
        )
    finally:
        await admin.close()
    body = "x" * 200
    conns = [await asyncpg.connect(server_url, server_settings=settings) for _ in range(lanes)]
    try:
        one = conns[0]
        started = time.perf_counter()
        for _ in range(commits):
            async with one.transaction():
                await one.execute("INSERT INTO t (body) VALUES ($1)", body)
        sequential = commits / (time.perf_counter() - started)

        async def lane(conn: Any, notify: bool) -> None:
            for _ in range(lane_commits):
                async with conn.transaction():
                    await conn.execute("INSERT INTO t (body) VALUES ($1)", body)
                    if notify:
                        await conn.execute("SELECT pg_notify($1, '')", schema)

        rates = {}
        for notify in (False, True):
            started = time.perf_counter()
            await asyncio.gather(*(lane(c, notify) for c in conns))
            rates[notify] = lanes * lane_commits / (time.perf_counter() - started)

        started = time.perf_counter()
        async with one.transaction():
            await one.executemany("INSERT INTO t (body) VALUES ($1)", [(body,)] * rows)
        row_rate = rows / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()
        await drop_schema(server_url, schema)
    return {
        "commits_per_s": sequential,
        "concurrent_commits_per_s": rates[False],
        "concurrent_notify_commits_per_s": rates[True],
        "rows_per_s": row_rate,
        "lanes": lanes,
    }
