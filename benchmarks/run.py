"""Waitpoint benchmarks: throughput, resume latency, memory, timers, replay, and DBOS.

    python benchmarks/run.py [--quick] [--backend sqlite|postgres|both] [--json out.json]

Prints a table of medians over ``--repeat`` runs (default 3; ``--quick``: 1 repeat and small
sizes, about a minute per backend). Every measurement uses a fresh database: a SQLite file
(WAL, ``synchronous=FULL``) under ``--dir`` (default: a temporary directory next to this
script, removed at the end), or a PostgreSQL schema ``bench_<uuid hex>`` on ``--pg-url``
(dropped at the end of the measurement). The runs go through the real worker code,
``Worker(engine, tasks)``: either in worker *subprocesses* started and stopped by PID
(``benchmarks/worker_proc.py``), or *in-process* next to the driver, as the "worker" column
says. With ``--backend both`` every item runs on SQLite and then on PostgreSQL before the next
item starts, so the two see the same machine, and a last table puts them side by side. Item 8
(capacity) runs the token-wait workload with 1, 2 and 4 worker processes on each backend.
See benchmarks/README.md for the method and the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["WAITPOINT_SQLITE_SYNCHRONOUS"] = "FULL"
os.environ.setdefault("WAITPOINT_LOG_FORMAT", "json")

import bench_tasks  # noqa: E402
from backends import (  # noqa: E402
    DEFAULT_PG_URL,
    Database,
    PgMeter,
    describe_postgres,
    fresh_database,
    pg_baseline,
    postgres_problem,
    sample_waits,
    wait_for_stats_flush,
)

from engine import Engine, Worker  # noqa: E402
from engine.logs import configure_logging  # noqa: E402

PYTHON = sys.executable


# --- sizes -----------------------------------------------------------------------------


@dataclass
class Sizes:
    trivial: int = 5_000
    token_wait: tuple[int, ...] = (1_000, 10_000)
    latency_n: int = 1_000
    latency_rate: float = 100.0  # completions per second, open loop
    cli_samples: int = 10
    memory: tuple[int, ...] = (0, 10_000, 100_000)
    timers: int = 10_000
    replay_steps: tuple[int, ...] = (0, 10, 100, 1_000)
    replay_samples: int = 11
    dbos_wait_n: int = 500
    dbos_trivial_n: int = 1_000
    memory_repeats: int = 1  # the 100,000-run memory level takes minutes; measured once
    scaling_n: int = 5_000  # 8. token-wait runs per measurement of the capacity item
    scaling_workers: tuple[int, ...] = (1, 2, 4)


QUICK = Sizes(
    trivial=1_000,
    token_wait=(500,),
    latency_n=200,
    latency_rate=200.0,
    cli_samples=3,
    memory=(0, 10_000),
    timers=2_000,
    replay_steps=(0, 10, 100),
    replay_samples=5,
    dbos_wait_n=150,
    dbos_trivial_n=200,
    scaling_n=600,
)


# --- plumbing --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def wait_for(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, poll: float = 0.02
) -> None:
    """Poll ``check`` (a function, or a coroutine function) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


async def at_least(db: Database, sql: str, n: int, *params: Any) -> bool:
    return int(await db.reader.value(sql, *params)) >= n


async def bounded(items: list[Any], limit: int, fn: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    """``fn`` over items with at most ``limit`` in flight; results in order."""
    results: list[Any] = [None] * len(items)
    it = iter(enumerate(items))

    async def lane() -> None:
        for index, item in it:
            results[index] = await fn(item)

    await asyncio.gather(*(lane() for _ in range(min(limit, len(items)) or 1)))
    return results


async def trigger_many(
    engine: Engine, task_id: str, payloads: list[dict[str, Any]], limit: int = 500
) -> list[str]:
    runs = await bounded(payloads, limit, lambda p: engine.trigger(task_id, p))
    return [r.id for r in runs]


def cpu_s(pid: int | None = None) -> float:
    """User+system CPU seconds used so far by a process (default: this one, all threads)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat (iowait counts as idle)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


class WorkerProcess:
    """``benchmarks/worker_proc.py`` in a subprocess, stopped by its PID."""

    def __init__(self, ctx: Context, db_url: str, label: str) -> None:
        self.ctx = ctx
        self.db_url = db_url
        ctx.counter += 1
        label = f"{ctx.counter:03d}-{label}"
        self.stats_path = ctx.dir / f"{label}.stats.json"
        self.log_path = ctx.dir / f"{label}.worker.log"
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.seq = 0

    async def start(self) -> None:
        cmd = [
            PYTHON,
            str(HERE / "worker_proc.py"),
            "--database",
            self.db_url,
            "--stats",
            str(self.stats_path),
            "--log-level",
            self.ctx.args.log_level,
        ]
        if self.ctx.args.uvloop:
            cmd.append("--uvloop")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            cmd, stdout=subprocess.PIPE, stderr=log, env=self.ctx.env, cwd=self.ctx.dir
        )
        log.close()
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker did not start: {line!r}; see {self.log_path}")
        if self.ctx.args.profile:
            # py-spy attached to the worker; it writes collapsed stacks when the worker exits
            out = Path(self.ctx.args.profile) / f"{self.label}.collapsed.txt"
            self.spy = subprocess.Popen(  # noqa: ASYNC220
                [
                    str(Path(PYTHON).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(self.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                    *(["--gil"] if self.ctx.args.profile_gil else []),
                    *(["--idle"] if self.ctx.args.profile_idle else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(0.5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stats(self) -> dict[str, Any]:
        """Ask the worker for a snapshot (SIGUSR1) and wait for it."""
        self.seq += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                snapshot = json.loads(self.stats_path.read_text())
                if snapshot["seq"] >= self.seq:
                    self.seq = snapshot["seq"]
                    return snapshot
            await asyncio.sleep(0.005)
        raise TimeoutError("the worker did not answer SIGUSR1")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), 30)
        except TimeoutError:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.spy is not None:
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.spy.wait), 30)
            except TimeoutError:
                os.kill(self.spy.pid, signal.SIGKILL)
                self.spy.wait()


class WorkerGroup:
    """Worker processes on one database (items 1, 2 and 8)."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    async def commits(self) -> int:
        return sum([(await w.stats())["commits"] for w in self.workers])

    async def counts(self) -> tuple[int, Counter[str]]:
        """Write transactions, and calls of each storage operation (plus SQL statements on
        PostgreSQL), summed over the workers."""
        commits, calls = 0, Counter[str]()
        for w in self.workers:
            snapshot = await w.stats()
            commits += snapshot["commits"]
            calls.update(snapshot.get("calls", {}))
        return commits, calls

    def cpu(self) -> float:
        return sum(cpu_s(w.pid) for w in self.workers)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    backend: str = "sqlite"  # the backend the current measurement runs on
    meter: PgMeter | None = None  # the server's side of PostgreSQL measurements

    def database(
        self, name: str, processes: int = 2
    ) -> contextlib.AbstractAsyncContextManager[Database]:
        """A fresh database on the current backend (a file, or a schema dropped at the end);
        ``processes``: how many engine processes will connect (PostgreSQL waits for room)."""
        self.counter += 1
        label = f"{self.counter:03d}-{name}"
        return fresh_database(self.backend, self.dir, label, self.args.pg_url, processes)

    def side_file(self, name: str) -> Path:
        self.counter += 1
        path = self.dir / f"{self.counter:03d}-{name}.side"
        path.write_text("")
        os.environ["BENCH_SIDE_FILE"] = str(path)
        self.env["BENCH_SIDE_FILE"] = str(path)
        bench_tasks.reset_side_channel()
        return path

    @contextlib.asynccontextmanager
    async def worker_process(self, db_url: str, label: str) -> AsyncIterator[WorkerProcess]:
        worker = WorkerProcess(self, db_url, label)
        try:
            await worker.start()
            yield worker
        finally:
            await worker.stop()

    @contextlib.asynccontextmanager
    async def worker_group(
        self, db_url: str, label: str, count: int | None = None
    ) -> AsyncIterator[WorkerGroup]:
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(self.worker_process(db_url, f"{label}-w{k}"))
                for k in range(count or self.args.workers)
            ]
            yield WorkerGroup(workers)

    @contextlib.asynccontextmanager
    async def in_process_worker(self, engine: Engine) -> AsyncIterator[Worker]:
        worker = Worker(engine, bench_tasks.BENCH_TASKS)
        runner = asyncio.create_task(worker.run())
        await worker.started.wait()
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 60)


def read_side(path: Path) -> dict[int, float]:
    stamps: dict[int, float] = {}
    for line in path.read_text().splitlines():
        i, t = line.split()
        stamps.setdefault(int(i), float(t))
    return stamps


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


async def check_all_completed(db: Database, n: int, what: str) -> None:
    counts = await db.status_counts()
    if counts.get("COMPLETED", 0) != n:
        raise RuntimeError(f"{what}: expected {n} COMPLETED runs, found {counts}")


# --- 0. the physical limit -------------------------------------------------------------


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


# --- 1, 2 and 8: throughput ------------------------------------------------------------

_FINISHED = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
_WAITING_TOKENS = (
    "SELECT rw.waitpoint_id FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id"
    " WHERE w.status = 'WAITING'"
)


async def complete_parked(
    engine: Engine, db: Database, n: int, limit: int = 200, timeout: float = 600
) -> None:
    """Complete every token a *parked* run waits on (run_waits row committed), until n done."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(done) < n:
        fresh = [tid for (tid,) in await db.reader.rows(_WAITING_TOKENS) if tid not in done]
        if not fresh:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {n} tokens completed")
            await asyncio.sleep(0.005)
            continue
        done.update(fresh)
        await bounded(fresh, limit, lambda tid: engine.tokens.complete(tid, {"ok": True}))


async def bench_throughput(
    ctx: Context, task_id: str, n: int, label: str, workers: int | None = None
) -> dict[str, Any]:
    """N runs of ``task_id`` from the first trigger to the last ``finished_at``, with the
    driver completing the tokens of parked runs when the task waits (``bench-wait``).

    On PostgreSQL it also reads the server's cost (``PgMeter``): the CPU of the backends that
    serve the workers and the driver (at the last run's end, before anything closes), and
    ``xact_commit``/WAL once the workers and the driver disconnected (a backend flushes its
    statistics when it exits)."""
    waits = task_id == "bench-wait"
    meter = ctx.meter if ctx.backend == "postgres" else None
    async with ctx.database(label, (workers or ctx.args.workers) + 1) as db:
        async with ctx.worker_group(db.url, label, workers) as wp, Engine(db.url) as engine:
            pids = [*wp.pids, os.getpid()]
            (w0, calls0), c0 = await wp.counts(), engine.storage.commits  # type: ignore[attr-defined]
            cpu0 = (wp.cpu(), cpu_s())
            ticks0 = machine_ticks()
            server0 = await meter.snapshot(pids) if meter else None
            stop_sampling = asyncio.Event()
            sampler = None
            if meter and ctx.args.pg_waits:
                sampler = asyncio.create_task(sample_waits(meter, pids, stop_sampling))
            started = time.time()
            payloads = [{"i": i} for i in range(n)]
            if waits:
                await asyncio.gather(
                    trigger_many(engine, task_id, payloads),
                    complete_parked(engine, db, n, timeout=120 + n / 20),
                )
            else:
                await trigger_many(engine, task_id, payloads)
            client_commits = engine.storage.commits - c0  # type: ignore[attr-defined]
            timeout = 120 + n / (20 if waits else 50)
            await wait_for(lambda: at_least(db, _FINISHED, n), timeout, f"{label} runs")
            finished = await db.reader.value("SELECT max(finished_at) FROM runs") / 1000
            w1, calls1 = await wp.counts()
            worker_commits = w1 - w0
            if waits:  # the completions made after the last trigger returned
                client_commits = engine.storage.commits - c0  # type: ignore[attr-defined]
            cpu1 = (wp.cpu(), cpu_s())
            ticks1 = machine_ticks()
            stop_sampling.set()
            waits_seen = await sampler if sampler else None
            server1 = await meter.snapshot(pids) if meter else None
            await check_all_completed(db, n, label)
        result: dict[str, Any] = {
            "n": n,
            "runs_per_s": n / (finished - started),
            "seconds": finished - started,
            "workers": len(pids) - 1,
            "machine_busy": (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]),
            "cpu_worker_s": cpu1[0] - cpu0[0],
            "cpu_driver_s": cpu1[1] - cpu0[1],
            "commits_worker": worker_commits / n,
            "commits_client": client_commits / n,
            "worker_calls_per_run": {
                name: round((calls1[name] - calls0[name]) / n, 3)
                for name in sorted(calls1)
                if calls1[name] > calls0[name]
            },
        }
        if meter and server0 and server1:
            await wait_for_stats_flush(meter, pids[:-1], timeout=10)
            server2 = await meter.snapshot([])
            cpu = PgMeter.delta(server0, server1)
            stats = PgMeter.delta(server0, server2)
            result.update(
                pg_cpu_ours_s=cpu["pg_cpu_ours_s"],
                pg_cpu_reader_s=cpu["pg_cpu_reader_s"],
                pg_cpu_all_s=cpu["pg_cpu_all_s"],
                pg_backends=cpu["pg_backends_ours"],
                pg_other_backends=stats["pg_other_backends"],
                pg_xact_commit=stats["pg_xact_commit"] / n,
                pg_xact_rollback=stats["pg_xact_rollback"] / n,
                pg_wal_bytes=stats["pg_wal_bytes"] / n,
            )
        if waits_seen:
            result["pg_backend_states"] = waits_seen
        if db.room:
            result["pg_room"] = db.room
    return result


def cpu_ms(m: dict[str, Any], n: int) -> tuple[float, ...]:
    """CPU ms per run: worker(s), driver, and (PostgreSQL) the backends serving them."""
    parts = [m["cpu_worker_s"] * 1000 / n, m["cpu_driver_s"] * 1000 / n]
    if "pg_cpu_ours_s" in m:
        parts.append(m["pg_cpu_ours_s"] * 1000 / n)
    return tuple(parts)


# --- 3. resume latency -----------------------------------------------------------------


_WAITING_RUNS = "SELECT count(*) FROM runs WHERE status = 'WAITING'"


async def park_marked_runs(
    engine: Engine, db: Database, n: int, task_id: str = "bench-wait", **extra: Any
) -> dict[int, str]:
    """Trigger n runs of ``task_id`` and wait until all are parked; token id by payload i."""
    await trigger_many(engine, task_id, [{"i": i, "mark": True, **extra} for i in range(n)])
    await wait_for(lambda: at_least(db, _WAITING_RUNS, n), 60 + n / 20, f"{n} runs parked")
    rows = await db.reader.rows(
        f"SELECT {db.reader.payload_i}, rw.waitpoint_id FROM run_waits rw"
        " JOIN runs r ON r.id = rw.run_id"
    )
    return {int(i): tid for i, tid in rows}


async def complete_paced(engine: Engine, tokens: dict[int, str], rate: float) -> dict[int, float]:
    """Complete tokens one by one, open loop at ``rate``/s; time.time() as each call returns."""
    returned: dict[int, float] = {}
    start = time.monotonic() + 0.05
    for k, (i, tid) in enumerate(sorted(tokens.items())):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await engine.tokens.complete(tid, {"ok": True})
        returned[i] = time.time()
    return returned


def spread(lat: list[float]) -> dict[str, float]:
    return {
        "p10_ms": pct(lat, 10),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat),
    }


def latencies_ms(returned: dict[int, float], stamps: dict[int, float]) -> list[float]:
    return [(stamps[i] - t) * 1000 for i, t in returned.items() if i in stamps]


async def bench_latency_in_process(ctx: Context, n: int) -> dict[str, Any]:
    side = ctx.side_file("latency-in")
    async with ctx.database("latency-in") as db:
        async with Engine(db.url) as engine, ctx.in_process_worker(engine):
            tokens = await park_marked_runs(engine, db, n)
            returned = await complete_paced(engine, tokens, ctx.sizes.latency_rate)
            await wait_for(lambda: count_lines(side) >= n, 60, "resumed runs")
    lat = latencies_ms(returned, read_side(side))
    return {**spread(lat), "n": len(lat)}


async def bench_latency_cross_process(ctx: Context, n: int) -> dict[str, Any]:
    side = ctx.side_file("latency-x")
    async with ctx.database("latency-x") as db:
        async with ctx.worker_process(db.url, "latency-x"), Engine(db.url) as engine:
            tokens = await park_marked_runs(engine, db, n)
            returned = await complete_paced(engine, tokens, ctx.sizes.latency_rate)
            await wait_for(lambda: count_lines(side) >= n, 60, "resumed runs")
            lat = latencies_ms(returned, read_side(side))
            cli = await cli_latency(ctx, engine, db, side, ctx.sizes.cli_samples)
    return {**spread(lat), "n": len(lat), **cli}


async def cli_latency(
    ctx: Context, engine: Engine, db: Database, side: Path, samples: int
) -> dict[str, Any]:
    """``waitpoint tokens complete`` in its own process: its wall time, and the resume
    measured from the moment the CLI process exited (the CLI prints nothing we could stamp
    at the instant its completion returned, so this is an upper bound on the CLI's share)."""
    if samples <= 0:
        return {}
    base = 1_000_000
    await trigger_many(
        engine, "bench-wait", [{"i": base + k, "mark": True} for k in range(samples)]
    )
    waiting = f"SELECT count(*) FROM ({_WAITING_TOKENS}) AS waiting"
    await wait_for(lambda: at_least(db, waiting, samples), 60, "CLI sample runs parked")
    rows = await db.reader.rows(
        f"SELECT {db.reader.payload_i}, rw.waitpoint_id FROM run_waits rw"
        " JOIN runs r ON r.id = rw.run_id JOIN waitpoints w ON w.id = rw.waitpoint_id"
        " WHERE w.status = 'WAITING'"
    )
    exe = str(Path(PYTHON).with_name("waitpoint"))
    wall: list[float] = []
    launched: dict[int, float] = {}
    exited: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    for i, tid in rows:
        t0 = time.time()
        proc = await loop.run_in_executor(
            None,
            lambda tid=tid: subprocess.run(
                [exe, "tokens", "complete", tid, "--data", '{"ok": true}', "--database", db.url],
                capture_output=True,
                env=ctx.env,
                timeout=60,
            ),
        )
        exited[int(i)] = time.time()
        launched[int(i)] = t0
        if proc.returncode != 0:
            raise RuntimeError(f"waitpoint tokens complete failed: {proc.stderr.decode()}")
        wall.append((exited[int(i)] - t0) * 1000)
        await asyncio.sleep(0.1)
    await wait_for(lambda: all(i in read_side(side) for i in exited), 30, "CLI-completed runs")
    after_exit = latencies_ms(exited, read_side(side))
    after_start = latencies_ms(launched, read_side(side))
    return {
        "cli_wall_p50_ms": pct(wall, 50),
        "cli_resume_after_exit_p50_ms": pct(after_exit, 50),
        "cli_resume_after_start_p50_ms": pct(after_start, 50),
    }


# --- 4. memory -------------------------------------------------------------------------


async def bench_memory(ctx: Context, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with ctx.database(f"memory{n}") as db, Engine(db.url) as engine:
        async with ctx.worker_process(db.url, f"memory{n}") as wp:
            started = time.monotonic()
            if n:
                await asyncio.gather(
                    trigger_many(engine, "bench-park", [{"i": i} for i in range(n)]),
                    wait_for(
                        lambda: at_least(db, _WAITING_RUNS, n),
                        120 + n / 20,
                        f"{n} runs WAITING",
                        poll=0.5,
                    ),
                )
            park_seconds = time.monotonic() - started
            await _until_idle(wp)
            snapshot = await wp.stats()
            counts = await db.status_counts()
            result = {
                "rss_mb": rss_kb(wp.pid) / 1024,
                "hwm_mb": rss_kb(wp.pid, "VmHWM") / 1024,
                "park_seconds": park_seconds,
                "park_rate": n / park_seconds if n else math.nan,
                "waiting": counts.get("WAITING", 0),
                "running": snapshot["running"],
            }
        # a worker started after the runs parked: what waiting costs a fresh process
        async with ctx.worker_process(db.url, f"memory{n}-fresh") as fresh:
            await _until_idle(fresh)
            result["fresh_rss_mb"] = rss_kb(fresh.pid) / 1024
    if n and result["waiting"] != n:
        raise RuntimeError(f"memory: expected {n} WAITING runs, found {result['waiting']}")
    return result


async def _until_idle(wp: WorkerProcess, settle: float = 2.0) -> None:
    """No attempt running, and RSS steady (within 1%) over ``settle`` seconds."""
    deadline = time.monotonic() + 120
    last = -1
    while time.monotonic() < deadline:
        snapshot = await wp.stats()
        rss = rss_kb(wp.pid)
        if snapshot["running"] == 0 and last > 0 and abs(rss - last) <= last * 0.01:
            return
        last = rss if snapshot["running"] == 0 else -1
        await asyncio.sleep(settle)


# --- 5. timers -------------------------------------------------------------------------


async def bench_timers(ctx: Context, n: int, park_rate: float) -> dict[str, Any]:
    async with ctx.database(f"timers{n}") as db:
        async with ctx.worker_process(db.url, f"timers{n}"), Engine(db.url) as engine:
            lead = 4 + n / max(park_rate, 50)
            deadline_s = math.ceil(time.time() + lead)
            deadline = datetime.fromtimestamp(deadline_s, tz=UTC)
            t0 = time.monotonic()
            await trigger_many(engine, "bench-timer", [{"deadline": deadline.isoformat()}] * n)

            async def parked_or_due() -> bool:
                return time.time() >= deadline_s or await at_least(db, _WAITING_RUNS, n)

            await wait_for(parked_or_due, lead + 60, "timer runs parked")
            parked_before = int(await db.reader.value(_WAITING_RUNS))
            park_rate = parked_before / (time.monotonic() - t0)
            spare = deadline_s - time.time()
            timed_out = "SELECT count(*) FROM waitpoints WHERE status = 'TIMED_OUT'"
            await wait_for(
                lambda: at_least(db, timed_out, n), lead + 120, "tokens timed out", poll=0.1
            )
            # only tokens created before the deadline count (a later one is due when created)
            rows = await db.reader.rows(
                "SELECT completed_at - timeout_at, timeout_at FROM waitpoints"
                " WHERE created_at < timeout_at"
            )
            await wait_for(lambda: at_least(db, _FINISHED, n), 120 + n / 20, "timer runs finished")
            all_done = await db.reader.value("SELECT max(finished_at) FROM runs") / 1000
            all_done -= deadline_s
            await check_all_completed(db, n, "timers")
    late = [float(r[0]) for r in rows]
    if len({r[1] for r in rows}) != 1:
        raise RuntimeError("timers: the tokens do not share one deadline")
    # tokens closed by the same timer transaction share completed_at: one entry per batch
    batches = sorted(Counter(late).items())
    return {
        "batches": [{"late_ms": ms, "tokens": k} for ms, k in batches],
        "p50_ms": pct(late, 50),
        "p99_ms": pct(late, 99),
        "max_ms": max(late),
        "early": sum(1 for x in late if x < 0),
        "parked_before_deadline": parked_before,
        "tokens_measured": len(late),
        "park_rate": park_rate,
        "spare_s": spare,
        "all_runs_done_s": all_done,
    }


# --- 6. replay -------------------------------------------------------------------------


async def bench_replay(ctx: Context, steps_list: tuple[int, ...], samples: int) -> dict[str, Any]:
    side = ctx.side_file("replay")
    out: dict[str, Any] = {}
    async with ctx.database("replay") as db:
        async with Engine(db.url) as engine, ctx.in_process_worker(engine):
            base = 0
            for steps in steps_list:
                payloads = [{"i": base + k, "steps": steps} for k in range(samples)]
                run_ids = await trigger_many(engine, "bench-replay", payloads)
                among, ids = db.reader.ids_in("id", run_ids)
                sql = f"SELECT count(*) FROM runs WHERE status = 'WAITING' AND {among}"
                await wait_for(
                    lambda sql=sql, ids=ids, k=samples: at_least(db, sql, k, ids),
                    120 + steps * samples / 100,
                    f"replay runs with {steps} steps parked",
                )
                first_line: list[float] = []
                to_completed: list[float] = []
                for k, run_id in enumerate(run_ids):
                    tid = await db.reader.value(
                        "SELECT waitpoint_id FROM run_waits WHERE run_id = ?", run_id
                    )
                    await engine.tokens.complete(tid, {"ok": True})
                    t0 = time.time()
                    await engine.wait_for_run(run_id, timeout=60)  # woken by the worker's commit
                    t1 = time.time()
                    stamp = read_side(side)[base + k]
                    first_line.append((stamp - t0) * 1000)
                    to_completed.append((t1 - t0) * 1000)
                out[steps] = {
                    "first_line_ms": statistics.median(first_line),
                    "completed_ms": statistics.median(to_completed),
                }
                base += samples
    zero = out[steps_list[0]]
    for steps in steps_list:
        out[steps]["replay_ms"] = out[steps]["first_line_ms"] - zero["first_line_ms"]
        out[steps]["replay_completed_ms"] = out[steps]["completed_ms"] - zero["completed_ms"]
    return out


# --- 7. DBOS ---------------------------------------------------------------------------


def dbos_status() -> str | None:
    """None if DBOS can run here, else why not."""
    try:
        import dbos  # noqa: F401
    except Exception as exc:
        return f"dbos is not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return None


async def bench_dbos(ctx: Context, workload: str, n: int) -> dict[str, Any]:
    ctx.counter += 1
    db = ctx.dir / f"{ctx.counter:03d}-dbos-{workload}.sqlite"
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(
        None,
        lambda: subprocess.run(
            [
                PYTHON,
                str(HERE / "dbos_bench.py"),
                "--db",
                str(db),
                "--workload",
                workload,
                "--n",
                str(n),
            ],
            capture_output=True,
            env=ctx.env,
            cwd=ctx.dir,
            timeout=600,
        ),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"DBOS run failed: {proc.stderr.decode()[-2000:]}")
    line = proc.stdout.decode().strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(line)
    return result


# --- the table -------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    metric: str
    worker: str
    unit: str = ""
    target: str = ""
    good: Callable[[float], bool] | None = None
    higher_is_better: bool = True
    samples: list[float] = field(default_factory=list)
    commits: list[tuple[float, ...]] = field(default_factory=list)
    cpu: list[tuple[float, ...]] = field(default_factory=list)
    dbos: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        vals = [v for v in self.samples if not math.isnan(v)]
        return statistics.median(vals) if vals else math.nan

    @property
    def met(self) -> str:
        if self.good is None or math.isnan(self.median):
            return ""
        return "met" if self.good(self.median) else "MISSED"

    @property
    def dbos_median(self) -> float:
        return statistics.median(self.dbos) if self.dbos else math.nan

    @property
    def ratio(self) -> float:
        if not self.dbos or math.isnan(self.median):
            return math.nan
        return self.median / self.dbos_median

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "metric": self.metric,
            "worker": self.worker,
            "unit": self.unit,
            "median": self.median,
            "samples": self.samples,
            "target": self.target,
            "met": self.met,
            "commits_per_run_worker_client": self.commits,
            "cpu_ms_per_run_worker_client_db": self.cpu,
            "dbos_median": None if not self.dbos else self.dbos_median,
            "dbos_samples": self.dbos,
            "ratio_vs_dbos": None if not self.dbos else self.ratio,
            "note": self.note,
        }


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.raw: dict[str, list[Any]] = {}

    def row(self, key: str, **kwargs: Any) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key=key, **kwargs)
        return self.rows[key]

    def add_raw(self, key: str, value: Any) -> None:
        self.raw.setdefault(key, []).append(value)


def _pair(pairs: list[tuple[float, ...]], spec: str) -> str:
    """Medians of (worker, client[, db]) tuples as 'w+c[+db]'."""
    if not pairs:
        return ""
    width = min(len(p) for p in pairs)
    return "+".join(spec.format(statistics.median(p[k] for p in pairs)) for k in range(width))


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def print_table(results: Results, title: str, dbos_note: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name, justify in [
        ("#", "left"),
        ("measurement", "left"),
        ("worker", "left"),
        ("median", "right"),
        ("min-max", "right"),
        ("commits/run w+c", "right"),
        ("CPU ms/run w+c(+db)", "right"),
        ("target", "left"),
        ("", "left"),
        ("DBOS", "right"),
        ("ratio", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in results.rows.values():
        vals = [v for v in row.samples if not math.isnan(v)]
        spread = f"{fmt(min(vals))}-{fmt(max(vals))}" if len(vals) > 1 else ""
        dbos = fmt(row.dbos_median, row.unit) if row.dbos else ""
        ratio = f"{row.ratio:.1f}x" if row.dbos else ""
        if not row.dbos and dbos_note and row.key.startswith("2"):
            dbos, ratio = "n/a", "n/a"
        met = row.met
        style = {"met": "green", "MISSED": "bold red"}.get(met, "")
        table.add_row(
            row.key,
            f"{row.label}: {row.metric}",
            row.worker,
            fmt(row.median, row.unit),
            spread,
            _pair(row.commits, "{:.2f}"),
            _pair(row.cpu, "{:.2f}"),
            row.target,
            f"[{style}]{met}[/{style}]" if style else met,
            dbos,
            ratio,
        )
    console = Console(width=200)
    console.print(table)
    for note in results.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    if dbos_note:
        console.print(f"  DBOS: {dbos_note}", style="yellow", soft_wrap=True)


def _median_spread(row: Row | None) -> tuple[str, str]:
    if row is None:
        return "-", ""
    vals = [v for v in row.samples if not math.isnan(v)]
    spread = f"{fmt(min(vals))}-{fmt(max(vals))}" if len(vals) > 1 else ""
    return fmt(row.median, row.unit), spread


def print_side_by_side(by_backend: dict[str, Results], title: str) -> None:
    """SQLite and PostgreSQL medians of the same invocation, and their ratio."""
    from rich.console import Console
    from rich.table import Table

    lite, pg = by_backend["sqlite"].rows, by_backend["postgres"].rows
    keys = list(lite) + [k for k in pg if k not in lite]
    table = Table(title=title)
    for name, justify in [
        ("#", "left"),
        ("measurement", "left"),
        ("SQLite", "right"),
        ("min-max", "right"),
        ("", "left"),
        ("PostgreSQL", "right"),
        ("min-max", "right"),
        ("", "left"),
        ("PG / SQLite", "right"),
        ("target", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key in keys:
        a, b = lite.get(key), pg.get(key)
        row = a or b
        assert row is not None
        ratio = ""
        if a is not None and b is not None and a.median and not math.isnan(a.median):
            ratio = f"{b.median / a.median:.2f}x"
        table.add_row(
            key,
            f"{row.label}: {row.metric}",
            *_median_spread(a),
            a.met if a else "",
            *_median_spread(b),
            b.met if b else "",
            ratio,
            row.target,
        )
    Console(width=200).print(table)


def capacity_rows(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Item 8's samples grouped by worker count: medians of each figure per run."""
    out = []
    counts = sorted({m["workers"] for m in raw})
    base = None
    for k in counts:
        ms = [m for m in raw if m["workers"] == k]
        n = ms[0]["n"]

        def med(key: str, ms: list[dict[str, Any]] = ms) -> float:
            vals = [m[key] for m in ms if key in m]
            return statistics.median(vals) if vals else math.nan

        rate = med("runs_per_s")
        base = rate if base is None else base
        row = {
            "workers": k,
            "n": n,
            "runs_per_s": rate,
            "min": min(m["runs_per_s"] for m in ms),
            "max": max(m["runs_per_s"] for m in ms),
            "speedup": rate / base,
            "cpu_worker_ms": med("cpu_worker_s") * 1000 / n,
            "cpu_driver_ms": med("cpu_driver_s") * 1000 / n,
            "cpu_db_ms": med("pg_cpu_ours_s") * 1000 / n,
            "cpu_reader_ms": med("pg_cpu_reader_s") * 1000 / n,
            "cpu_db_all_ms": med("pg_cpu_all_s") * 1000 / n,
            "machine_busy": med("machine_busy"),
            "commits_worker": med("commits_worker"),
            "commits_client": med("commits_client"),
            "xact_commit": med("pg_xact_commit"),
            "wal_bytes": med("pg_wal_bytes"),
            "other_backends": max((m.get("pg_other_backends", 0) for m in ms), default=0),
            "worker_statements": statistics.median(
                m.get("worker_calls_per_run", {}).get("sql_statements", math.nan) for m in ms
            ),
            "worker_calls": {
                name: statistics.median(m["worker_calls_per_run"].get(name, 0.0) for m in ms)
                for name in sorted({c for m in ms for c in m.get("worker_calls_per_run", {})})
            },
            "samples": len(ms),
        }
        ours = row["cpu_worker_ms"] + row["cpu_driver_ms"]
        if not math.isnan(row["cpu_db_ms"]):
            ours += row["cpu_db_ms"]
        row["cpu_total_ms"] = ours
        out.append(row)
    return out


def print_capacity(by_backend: dict[str, Results], nproc: int) -> None:
    """Item 8: token-wait throughput against the number of worker processes."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="8. capacity: token-wait runs with 1, 2, 4 worker processes")
    for name in [
        "backend",
        "workers",
        "N",
        "runs/s",
        "min-max",
        "vs 1",
        "CPU ms/run: workers",
        "driver",
        "db (engine)",
        "db (reader)",
        "all postgres",
        "sum w+c+db",
        "machine busy",
        "write tx/run w+c",
        "worker SQL stmts/run",
        "xact_commit/run",
        "WAL KB/run",
    ]:
        table.add_column(name, justify="left" if name == "backend" else "right")
    for backend, results in by_backend.items():
        raw = results.raw.get("scaling")
        if not raw:
            continue
        for r in capacity_rows(raw):
            pgish = backend == "postgres"
            table.add_row(
                backend,
                str(r["workers"]),
                f"{r['n']:,}",
                fmt(r["runs_per_s"]),
                f"{fmt(r['min'])}-{fmt(r['max'])}" if r["samples"] > 1 else "",
                f"{r['speedup']:.2f}x",
                f"{r['cpu_worker_ms']:.2f}",
                f"{r['cpu_driver_ms']:.2f}",
                f"{r['cpu_db_ms']:.2f}" if pgish else "-",
                f"{r['cpu_reader_ms']:.2f}" if pgish else "-",
                f"{r['cpu_db_all_ms']:.2f}" if pgish else "-",
                f"{r['cpu_total_ms']:.2f}",
                f"{r['machine_busy'] * 100:.0f}% of {nproc}",
                f"{r['commits_worker']:.2f}+{r['commits_client']:.2f}",
                f"{r['worker_statements']:.1f}" if pgish else "-",
                f"{r['xact_commit']:.1f}" if pgish else "-",
                f"{r['wal_bytes'] / 1024:.1f}" if pgish else "-",
            )
    console = Console(width=200)
    console.print(table)
    console.print(
        "  CPU per run from /proc: the worker processes, the driver (triggers, completions,"
        " polling), the PostgreSQL backends serving the workers and the driver's Engine (matched"
        " by client port), the backend serving the driver's polling reader, and every"
        " PostgreSQL process (other clients of the server included). machine busy: non-idle"
        " share of all CPUs over the measurement (/proc/stat), whoever used it. write tx/run:"
        " the engine's own write transactions (engine.storage.commits); worker SQL stmts/run:"
        " statements the worker processes sent (BEGIN and COMMIT included); xact_commit/run:"
        " pg_stat_database of the whole database (reads and other clients included).",
        highlight=False,
        soft_wrap=True,
    )
    for backend, results in by_backend.items():
        for r in capacity_rows(results.raw.get("scaling", [])):
            calls = ", ".join(f"{k} {v:.2f}" for k, v in r["worker_calls"].items() if v >= 0.01)
            console.print(
                f"  {backend}, {r['workers']} worker(s), storage calls per run: {calls}",
                highlight=False,
                soft_wrap=True,
            )


def print_backend_states(by_backend: dict[str, Results]) -> None:
    """What ``--pg-waits`` saw, per measurement."""
    from rich.console import Console

    console = Console(width=200)
    for backend, results in by_backend.items():
        for key, ms in results.raw.items():
            for m in ms if isinstance(ms, list) else []:
                if isinstance(m, dict) and m.get("pg_backend_states"):
                    console.print(
                        f"  {backend}, {key}, {m.get('workers', 1)} worker(s): "
                        + backend_states_text(m["pg_backend_states"]),
                        highlight=False,
                        soft_wrap=True,
                    )


def backend_states_text(states: dict[str, int], top: int = 8) -> str:
    """``--pg-waits`` samples as shares: backend states, then the statements active backends
    were running (a sampling profile of the server's work)."""
    plain = {k: v for k, v in states.items() if not k.startswith("sql: ")}
    sql = {k[5:]: v for k, v in states.items() if k.startswith("sql: ")}
    total, active = sum(plain.values()) or 1, sum(sql.values()) or 1
    parts = [
        f"{k} {v / total:.0%}"
        for k, v in sorted(plain.items(), key=lambda kv: -kv[1])
        if v / total >= 0.005
    ]
    hot = [f"{v / active:.0%} {k!r}" for k, v in sorted(sql.items(), key=lambda kv: -kv[1])]
    return "backend samples: " + ", ".join(parts) + "; active statements: " + "; ".join(hot[:top])


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for dist in (
        "waitpoint",
        "aiosqlite",
        "asyncpg",
        "anyio",
        "structlog",
        "pydantic",
        "dbos",
        "uvloop",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    import engine

    root = Path(engine.__file__).resolve().parent.parent
    stamp = root / "ENGINE_COMMIT"
    if stamp.exists():
        source = f"{root} (exported from commit {stamp.read_text().strip()})"
    else:
        git = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h", "--", "engine"],
            capture_output=True,
            text=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "engine"],
            capture_output=True,
            text=True,
        )
        source = f"{root} (commit {git.stdout.strip() or '?'}"
        source += ", with uncommitted changes)" if dirty.stdout.strip() else ")"
    return {
        "engine": source,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "packages": versions,
    }


# --- main ------------------------------------------------------------------------------


def _spread_text(m: dict[str, Any]) -> str:
    return " ".join(f"{q} {m[q + '_ms']:.1f}" for q in ("p10", "p50", "p90", "p99", "max")) + " ms"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_all(ctx: Context, by_backend: dict[str, Results], only: set[str] | None) -> None:
    s, repeat = ctx.sizes, ctx.args.repeat
    backends = list(by_backend)

    def want(key: str) -> bool:
        return only is None or key in only

    def res() -> Results:
        """The results of the backend being measured now."""
        return by_backend[ctx.backend]

    dbos_problem = dbos_status()
    sub, inproc = "subprocess", "in-process"
    subs = sub if ctx.args.workers == 1 else f"{ctx.args.workers} subprocesses"
    # runs parked per second, to set the timers' deadline (then measured), per backend
    park_rates = {b: 700.0 if b == "sqlite" else 300.0 for b in backends}
    if "postgres" in backends:
        ctx.meter = PgMeter(ctx.args.pg_url)
        await ctx.meter.open()

    async def item0() -> None:
        results = res()
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

    def server_text(m: dict[str, Any]) -> str:
        if "pg_cpu_ours_s" not in m:
            return ""
        return (
            f"; server CPU s engine {m['pg_cpu_ours_s']:.1f} reader {m['pg_cpu_reader_s']:.1f}"
            f" all {m['pg_cpu_all_s']:.1f},"
            f" xact_commit/run {m['pg_xact_commit']:.1f}"
        )

    async def item1() -> None:
        n = s.trivial
        m = await bench_throughput(ctx, "bench-trivial", n, "trivial")
        results = res()
        results.add_raw("trivial", m)
        row = results.row(
            "1",
            label=f"trivial runs, N={n:,}",
            metric="runs/s",
            worker=subs,
            unit="/s",
            target=">= 2,000/s",
            good=lambda v: v >= 2000,
        )
        row.samples.append(m["runs_per_s"])
        row.commits.append((m["commits_worker"], m["commits_client"]))
        row.cpu.append(cpu_ms(m, n))
        say(
            f"  1 trivial: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
            f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f}" + server_text(m)
        )

    async def item2(n: int) -> None:
        m = await bench_throughput(ctx, "bench-wait", n, f"wait{n}")
        results = res()
        results.add_raw(f"token_wait_{n}", m)
        row = results.row(
            f"2.{n}",
            label=f"token-wait runs, N={n:,}",
            metric="runs/s",
            worker=subs,
            unit="/s",
            target=">= 1,000/s",
            good=lambda v: v >= 1000,
        )
        row.samples.append(m["runs_per_s"])
        row.commits.append((m["commits_worker"], m["commits_client"]))
        row.cpu.append(cpu_ms(m, n))
        say(
            f"  2 token-wait N={n}: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
            f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f}" + server_text(m)
        )

    async def item8(k: int) -> None:
        n = s.scaling_n
        m = await bench_throughput(ctx, "bench-wait", n, f"scale{k}", workers=k)
        results = res()
        results.add_raw("scaling", m)
        plural = "es" if k > 1 else ""
        row = results.row(
            f"8.{k}",
            label=f"capacity: token-wait runs, N={n:,}, {k} worker process{plural}",
            metric="runs/s",
            worker=f"{k} subprocess{plural}",
            unit="/s",
        )
        row.samples.append(m["runs_per_s"])
        row.commits.append((m["commits_worker"], m["commits_client"]))
        row.cpu.append(cpu_ms(m, n))
        say(
            f"  8 capacity, {k} workers: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
            f" CPU s workers {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f},"
            f" machine busy {m['machine_busy'] * 100:.0f}%" + server_text(m)
        )

    async def item7(workload: str) -> None:
        n = s.dbos_wait_n if workload == "wait" else s.dbos_trivial_n
        d = await bench_dbos(ctx, workload, n)
        keys = [f"2.{k}" for k in s.token_wait] if workload == "wait" else ["1"]
        for results in by_backend.values():  # one DBOS measurement, a ratio for each backend
            results.add_raw(f"dbos_{workload}", d)
            for key in keys:
                if key in results.rows:
                    results.rows[key].dbos.append(d["runs_per_s"])
        say(f"  7 DBOS {workload} N={n}: {d['runs_per_s']:.1f} runs/s")

    async def item3() -> None:
        results = res()
        m = await bench_latency_in_process(ctx, s.latency_n)
        results.add_raw("latency_in_process", m)
        for q, target, limit in (("p50", "< 5 ms", 5.0), ("p99", "", None)):
            row = results.row(
                f"3.in.{q}",
                label=f"resume latency, completer in the worker's process, N={s.latency_n:,}",
                metric=q,
                worker=inproc,
                unit="ms",
                target=target,
                good=(lambda v, lim=limit: v < lim) if limit else None,
                higher_is_better=False,
            )
            row.samples.append(m[f"{q}_ms"])
        say("  3 latency in-process: " + _spread_text(m))
        m = await bench_latency_cross_process(ctx, s.latency_n)
        results.add_raw("latency_cross_process", m)
        for q, target, limit in (("p50", "< 25 ms", 25.0), ("p99", "", None)):
            row = results.row(
                f"3.x.{q}",
                label=f"resume latency, completer = Engine in another process, N={s.latency_n:,}",
                metric=q,
                worker=sub,
                unit="ms",
                target=target,
                good=(lambda v, lim=limit: v < lim) if limit else None,
                higher_is_better=False,
            )
            row.samples.append(m[f"{q}_ms"])
        if "cli_wall_p50_ms" in m:
            row = results.row(
                "3.cli",
                label=f"`waitpoint tokens complete` in a shell, {s.cli_samples} samples",
                metric="CLI start -> first line after the wait, p50",
                worker=sub,
                unit="ms",
            )
            row.samples.append(m["cli_resume_after_start_p50_ms"])
        say("  3 latency cross-process: " + _spread_text(m))

    async def item5() -> None:
        results = res()
        m = await bench_timers(ctx, s.timers, park_rates[ctx.backend])
        park_rates[ctx.backend] = 0.7 * m["park_rate"]
        results.add_raw("timers", m)
        for q, target, limit in (("p50", "", None), ("p99", "< 250 ms", 250.0), ("max", "", None)):
            row = results.row(
                f"5.{q}",
                label=f"timer lateness, {s.timers:,} tokens due the same ms",
                metric=q,
                worker=sub,
                unit="ms",
                target=target,
                good=(lambda v, lim=limit: v < lim) if limit else None,
                higher_is_better=False,
            )
            row.samples.append(m[f"{q}_ms"])
        row = results.row(
            "5.early",
            label="timer lateness",
            metric="tokens fired early",
            worker=sub,
            target="0",
            good=lambda v: v == 0,
        )
        row.samples.append(float(m["early"]))
        say(
            f"  5 timers: p50 {m['p50_ms']:.0f} p99 {m['p99_ms']:.0f} max {m['max_ms']:.0f} ms;"
            " batches (ms late: tokens) "
            + ", ".join(f"{b['late_ms']:.0f}: {b['tokens']}" for b in m["batches"][:12])
        )

    async def item6() -> None:
        results = res()
        m = await bench_replay(ctx, s.replay_steps, s.replay_samples)
        results.add_raw("replay", m)
        for steps in s.replay_steps[1:]:
            row = results.row(
                f"6.{steps}",
                label=f"replay of {steps:,} journaled steps",
                metric="extra resume cost vs 0 steps",
                worker=inproc,
                unit="ms",
            )
            row.samples.append(m[steps]["replay_ms"])
        say("  6 replay: " + ", ".join(f"{k}: {v['replay_ms']:.1f} ms" for k, v in m.items()))

    async def item4(n: int) -> None:
        results = res()
        say(f"memory with {n:,} runs WAITING")
        m = await bench_memory(ctx, n)
        results.add_raw(f"memory_{n}", m)
        row = results.row(
            f"4.{n}",
            label=f"worker RSS, {n:,} runs WAITING",
            metric="VmRSS",
            worker=sub,
            unit="MB",
            target="< 150 MB" if n >= 100_000 else "",
            good=(lambda v: v < 150) if n >= 100_000 else None,
            higher_is_better=False,
        )
        row.samples.append(m["rss_mb"])
        say(
            f"  4 memory {n}: rss {m['rss_mb']:.0f} MB"
            f" (fresh worker {m['fresh_rss_mb']:.0f} MB), parked at {m['park_rate']:.0f}/s"
        )

    async def guarded(name: str, make: Callable[[], Awaitable[None]]) -> None:
        """One failing measurement is reported and the others still run."""
        try:
            await make()
        except Exception as exc:
            say(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            res().notes.append(f"ERROR in {name}: {type(exc).__name__}: {exc}")

    async def each_backend(name: str, make: Callable[[], Awaitable[None]]) -> None:
        """One item on every backend, one after the other (the same machine state)."""
        for backend in backends:
            ctx.backend = backend
            await guarded(f"{name} ({backend})", make)

    timed = [k for k in ("0", "1", "2", "3", "5", "6", "7", "8") if want(k)]
    try:
        for r in range(repeat if timed else 0):
            say(f"repeat {r + 1}/{repeat}")
            if want("0"):
                await each_backend("0 baseline", item0)
            if want("1"):
                await each_backend("1 trivial", item1)
            if want("2"):
                for n in s.token_wait:
                    await each_backend(f"2 token-wait N={n}", lambda n=n: item2(n))
            if dbos_problem is None and want("7"):
                if want("2"):
                    await guarded("7 DBOS wait", lambda: item7("wait"))
                if want("1"):
                    await guarded("7 DBOS trivial", lambda: item7("trivial"))
            if want("3"):
                await each_backend("3 resume latency", item3)
            if want("5"):
                await each_backend("5 timers", item5)
            if want("6"):
                await each_backend("6 replay", item6)
            if want("8"):
                for k in s.scaling_workers:
                    await each_backend(f"8 capacity, {k} workers", lambda k=k: item8(k))
        if want("4"):
            for _ in range(s.memory_repeats):
                for n in s.memory:
                    await each_backend(f"4 memory {n}", lambda n=n: item4(n))
    finally:
        if ctx.meter is not None:
            await ctx.meter.close()
    for backend, results in by_backend.items():
        ctx.backend = backend
        results.notes.extend(_notes(ctx, results))


def _notes(ctx: Context, results: Results) -> list[str]:
    kind = "SQLite" if ctx.backend == "sqlite" else "PostgreSQL"
    notes = [
        f"commits/run w+c: {kind} write transactions per run committed by the worker process"
        " + by the driver process (trigger, completion), from engine.storage.commits;"
        " CPU ms/run w+c: user+system CPU of the worker process (all threads, /proc/PID/stat)"
        " + of the driver process, per run"
        + (
            "; +db: the PostgreSQL backends serving the worker and the driver's Engine (matched"
            " by client port; the driver's polling reader is not counted)."
            if ctx.backend == "postgres"
            else "."
        ),
        "subprocess: one worker process (benchmarks/worker_proc.py: Worker(engine, tasks)),"
        " driver (trigger/complete) in this process; in-process: the Worker runs on this"
        " process's Engine and event loop.",
    ]
    raw = results.raw
    server = []
    for key in ["trivial", *(k for k in raw if k.startswith("token_wait_"))]:
        ms = [m for m in raw.get(key, []) if "pg_xact_commit" in m]
        if not ms:
            continue
        xact = statistics.median(m["pg_xact_commit"] for m in ms)
        wal = statistics.median(m["pg_wal_bytes"] for m in ms) / 1024
        cpu_all = statistics.median(m["pg_cpu_all_s"] * 1000 / m["n"] for m in ms)
        reader = statistics.median(m.get("pg_cpu_reader_s", math.nan) * 1000 / m["n"] for m in ms)
        others = max(m["pg_other_backends"] for m in ms)
        server.append(
            f"{key}: xact_commit/run {xact:.1f}, WAL {wal:.1f} KB/run, the reader's backend"
            f" {reader:.2f} CPU ms/run, all postgres processes"
            f" {cpu_all:.2f} CPU ms/run, other client backends on the server up to {others}"
        )
    if server:
        notes.append(
            "server side (pg_stat_database of the whole database and cluster-wide WAL, so other"
            " clients count too): " + "; ".join(server) + "."
        )
    if "latency_cross_process" in raw and raw["latency_cross_process"][0].get("cli_wall_p50_ms"):
        walls = [m["cli_wall_p50_ms"] for m in raw["latency_cross_process"]]
        exits = [m["cli_resume_after_exit_p50_ms"] for m in raw["latency_cross_process"]]
        notes.append(
            f"CLI `waitpoint tokens complete`: process wall time p50 {statistics.median(walls):.0f}"
            f" ms; the run's first line after the wait ran {statistics.median(exits):+.0f} ms"
            " relative to the CLI process exiting (negative: before it exited)."
        )
    mems = {k: v for k, v in raw.items() if k.startswith("memory_")}
    if mems:
        parts = []
        for k, v in mems.items():
            m = v[0]
            parts.append(
                f"{int(k.split('_')[1]):,}: RSS {m['rss_mb']:.0f} MB, VmHWM {m['hwm_mb']:.0f} MB,"
                f" fresh worker on the same DB {m['fresh_rss_mb']:.0f} MB"
                + (
                    f", parked at {m['park_rate']:.0f} runs/s"
                    if m["park_rate"] == m["park_rate"]
                    else ""
                )
            )
        notes.append("memory (measured once): " + "; ".join(parts) + ".")
    if "timers" in raw:
        t = raw["timers"]
        notes.append(
            "timers: all runs resumed and COMPLETED "
            + ", ".join(f"{m['all_runs_done_s']:.1f}" for m in t)
            + " s after the deadline; runs parked before the deadline: "
            + ", ".join(str(m["parked_before_deadline"]) for m in t)
            + "; tokens created before the deadline (measured): "
            + ", ".join(str(m["tokens_measured"]) for m in t)
            + "."
        )
    if "replay" in raw:
        parts = []
        for steps in ctx.sizes.replay_steps:
            firsts = [m[steps]["first_line_ms"] for m in raw["replay"]]
            dones = [m[steps]["completed_ms"] for m in raw["replay"]]
            parts.append(
                f"{steps}: first line {statistics.median(firsts):.1f} ms,"
                f" COMPLETED {statistics.median(dones):.1f} ms"
            )
        notes.append("replay, completion -> (in-process worker): " + "; ".join(parts) + ".")
    if "dbos_wait" in raw:
        d = raw["dbos_wait"][0]
        notes.append(
            f"DBOS {d.get('dbos_version')}: token-wait workload with N={d['n']}"
            " (recv_async/send_async, one process), trivial with N="
            + (str(raw["dbos_trivial"][0]["n"]) if "dbos_trivial" in raw else "-")
            + "; ratio = Waitpoint / DBOS (runs/s)."
        )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one repeat (~1 min per backend)"
    )
    parser.add_argument(
        "--backend",
        default="sqlite",
        choices=["sqlite", "postgres", "both"],
        help="where the runs are stored; both: each item on SQLite, then on PostgreSQL",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="the PostgreSQL server (each measurement makes and drops a schema of its own;"
        " default $WAITPOINT_BENCH_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (median; default 3)")
    parser.add_argument("--only", help="comma-separated items to run, e.g. 1,2,7")
    parser.add_argument(
        "--scaling-n", type=int, default=None, help="token-wait runs per item-8 measurement"
    )
    parser.add_argument(
        "--pg-waits",
        action="store_true",
        help="sample pg_stat_activity (state, wait event) of the engine's backends during items"
        " 1, 2 and 8 every 50 ms",
    )
    parser.add_argument("--dir", help="where the databases go (default: a temp dir here)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["info", "warning"],
        help="the worker's log level (info, as `waitpoint worker` runs, is the default)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run the worker on uvloop")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes for items 1 and 2 (default 1)"
    )
    parser.add_argument(
        "--profile", help="attach py-spy to every worker process; collapsed stacks go here"
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy --gil: only the thread holding the GIL"
    )
    parser.add_argument(
        "--profile-idle", action="store_true", help="py-spy --idle: sample waiting threads too"
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    postgres: dict[str, Any] = {}
    if "postgres" in backends:
        problem = asyncio.run(postgres_problem(args.pg_url))
        if problem is not None:
            print(f"cannot benchmark PostgreSQL: {problem}", file=sys.stderr)
            sys.exit(2)
        postgres = asyncio.run(describe_postgres(args.pg_url))
    sizes = QUICK if args.quick else Sizes()
    if args.scaling_n:
        sizes.scaling_n = args.scaling_n
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    base = Path(args.dir) if args.dir else HERE
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
    # this process's engine logs (and the in-process worker's) go to a file, at the same level
    # as the worker processes' logs
    configure_logging("json", logging.INFO if args.log_level == "info" else logging.WARNING)
    driver_log = (workdir / "driver.log").open("a")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=driver_log))
    env = {**os.environ, "WAITPOINT_SQLITE_SYNCHRONOUS": "FULL", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    ctx = Context(args=args, sizes=sizes, dir=workdir, env=env)
    by_backend = {b: Results() for b in backends}
    only = set(args.only.split(",")) if args.only else None
    machine = describe_machine()
    started = time.monotonic()
    try:
        asyncio.run(run_all(ctx, by_backend, only))
    finally:
        driver_log.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)
    elapsed = time.monotonic() - started
    how = (
        f"medians of {args.repeat} ({'quick' if args.quick else 'full'}, {elapsed:.0f} s"
        f"{', SQLite and PostgreSQL interleaved' if len(backends) > 1 else ''}) -"
        f" {machine['nproc']} x {machine['cpu']}, Python {machine['python']}"
    )
    names = {
        "sqlite": f"SQLite {machine['sqlite']} WAL synchronous=FULL",
        "postgres": f"PostgreSQL {postgres.get('version')} at {_host(args.pg_url)}"
        f" (synchronous_commit={postgres.get('synchronous_commit')},"
        f" fsync={postgres.get('fsync')}), asyncpg {postgres.get('asyncpg')}",
    }
    for backend, results in by_backend.items():
        print_table(results, f"Waitpoint benchmarks, {names[backend]}, {how}", dbos_status())
    if len(backends) > 1:
        print_side_by_side(by_backend, f"SQLite and PostgreSQL side by side, {how}")
    if any("scaling" in r.raw for r in by_backend.values()):
        print_capacity(by_backend, machine["nproc"])
    if args.pg_waits:
        print_backend_states(by_backend)
    print(f"  engine measured: {machine['engine']}")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "postgres": postgres,
                    "args": {k: v for k, v in vars(args).items()},
                    "elapsed_s": elapsed,
                    "backends": {
                        backend: {
                            "rows": [r.as_json() for r in results.rows.values()],
                            "raw": results.raw,
                            "notes": results.notes,
                            "capacity": capacity_rows(results.raw.get("scaling", [])),
                        }
                        for backend, results in by_backend.items()
                    },
                    "dbos": dbos_status() or "ok",
                },
                indent=1,
                default=str,
            )
        )


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


if __name__ == "__main__":
    main()
