"""Waitpoint benchmarks: throughput, resume latency, memory, timers, replay, and DBOS.

    python benchmarks/run.py [--quick] [--backend sqlite] [--json out.json] [--repeat N]

Prints a table of medians over ``--repeat`` runs (default 3; ``--quick``: 1 repeat and small
sizes, under a minute). Every measurement uses a fresh SQLite file (WAL, ``synchronous=FULL``)
under ``--dir`` (default: a temporary directory next to this script, removed at the end) and
the real worker code, ``Worker(engine, tasks)``: either in a worker *subprocess* started and
stopped by PID (``benchmarks/worker_proc.py``), or *in-process* next to the driver, as the
"worker" column says. See benchmarks/README.md for the method and the results.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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
)


# --- plumbing --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Reader:
    """A plain sqlite3 connection for the driver's polling (never writes)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA busy_timeout = 30000")

    def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(sql, tuple(params)).fetchone()[0]

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def status_counts(self, table: str = "runs") -> dict[str, int]:
        return dict(self.rows(f"SELECT status, count(*) FROM {table} GROUP BY status"))

    def close(self) -> None:
        self.conn.close()


async def wait_for(
    check: Callable[[], bool], timeout: float, what: str, poll: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


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
    """``--workers`` worker processes on one database (items 1 and 2)."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    async def commits(self) -> int:
        return sum([(await w.stats())["commits"] for w in self.workers])

    def cpu(self) -> float:
        return sum(cpu_s(w.pid) for w in self.workers)


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    def fresh_db(self, name: str) -> tuple[str, Path]:
        self.counter += 1
        path = self.dir / f"{self.counter:03d}-{name}.db"
        return f"sqlite:///{path}", path

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
    async def worker_group(self, db_url: str, label: str) -> AsyncIterator[WorkerGroup]:
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(self.worker_process(db_url, f"{label}-w{k}"))
                for k in range(self.args.workers)
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


def check_all_completed(reader: Reader, n: int, what: str) -> None:
    counts = reader.status_counts()
    if counts.get("COMPLETED", 0) != n:
        raise RuntimeError(f"{what}: expected {n} COMPLETED runs, found {counts}")


# --- 0. the physical limit -------------------------------------------------------------


def bench_sqlite_baseline(
    ctx: Context, commits: int = 2_000, rows: int = 100_000
) -> dict[str, Any]:
    """Plain sqlite3 on the same disk, WAL + synchronous=FULL: one-row commits per second, and
    rows per second inserted in one transaction (the ceiling group commit can approach)."""
    _, path = ctx.fresh_db("sqlite-baseline")
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


# --- 1. trivial runs -------------------------------------------------------------------


async def bench_trivial(ctx: Context, n: int) -> dict[str, Any]:
    url, path = ctx.fresh_db("trivial")
    async with ctx.worker_group(url, "trivial") as wp, Engine(url) as engine:
        reader = Reader(path)
        w0, c0 = await wp.commits(), engine.storage.commits  # type: ignore[attr-defined]
        cpu0 = (wp.cpu(), cpu_s())
        started = time.time()
        await trigger_many(engine, "bench-trivial", [{"i": i} for i in range(n)])
        client_commits = engine.storage.commits - c0  # type: ignore[attr-defined]
        sql = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
        await wait_for(lambda: reader.value(sql) >= n, 120 + n / 50, "trivial runs")
        finished = reader.value("SELECT max(finished_at) FROM runs") / 1000
        worker_commits = await wp.commits() - w0
        cpu1 = (wp.cpu(), cpu_s())
        check_all_completed(reader, n, "trivial")
        reader.close()
    return {
        "runs_per_s": n / (finished - started),
        "seconds": finished - started,
        "cpu_worker_s": cpu1[0] - cpu0[0],
        "cpu_driver_s": cpu1[1] - cpu0[1],
        "commits_worker": worker_commits / n,
        "commits_client": client_commits / n,
    }


# --- 2. token-wait runs ----------------------------------------------------------------

_WAITING_TOKENS = (
    "SELECT rw.waitpoint_id FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id"
    " WHERE w.status = 'WAITING'"
)


async def complete_parked(
    engine: Engine, reader: Reader, n: int, limit: int = 200, timeout: float = 600
) -> None:
    """Complete every token a *parked* run waits on (run_waits row committed), until n done."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(done) < n:
        fresh = [tid for (tid,) in reader.rows(_WAITING_TOKENS) if tid not in done]
        if not fresh:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {n} tokens completed")
            await asyncio.sleep(0.005)
            continue
        done.update(fresh)
        await bounded(fresh, limit, lambda tid: engine.tokens.complete(tid, {"ok": True}))


async def bench_token_wait(ctx: Context, n: int) -> dict[str, Any]:
    url, path = ctx.fresh_db(f"wait{n}")
    async with ctx.worker_group(url, f"wait{n}") as wp, Engine(url) as engine:
        reader = Reader(path)
        w0, c0 = await wp.commits(), engine.storage.commits  # type: ignore[attr-defined]
        cpu0 = (wp.cpu(), cpu_s())
        started = time.time()
        payloads = [{"i": i} for i in range(n)]
        await asyncio.gather(
            trigger_many(engine, "bench-wait", payloads),
            complete_parked(engine, reader, n, timeout=120 + n / 20),
        )
        sql = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
        await wait_for(lambda: reader.value(sql) >= n, 120 + n / 20, "token-wait runs")
        finished = reader.value("SELECT max(finished_at) FROM runs") / 1000
        worker_commits = await wp.commits() - w0
        client_commits = engine.storage.commits - c0  # type: ignore[attr-defined]
        cpu1 = (wp.cpu(), cpu_s())
        check_all_completed(reader, n, "token-wait")
        reader.close()
    return {
        "runs_per_s": n / (finished - started),
        "seconds": finished - started,
        "cpu_worker_s": cpu1[0] - cpu0[0],
        "cpu_driver_s": cpu1[1] - cpu0[1],
        "commits_worker": worker_commits / n,
        "commits_client": client_commits / n,
    }


# --- 3. resume latency -----------------------------------------------------------------


async def park_marked_runs(
    engine: Engine, reader: Reader, n: int, task_id: str = "bench-wait", **extra: Any
) -> dict[int, str]:
    """Trigger n runs of ``task_id`` and wait until all are parked; token id by payload i."""
    await trigger_many(engine, task_id, [{"i": i, "mark": True, **extra} for i in range(n)])
    await wait_for(
        lambda: reader.value("SELECT count(*) FROM runs WHERE status = 'WAITING'") >= n,
        60 + n / 20,
        f"{n} runs parked",
    )
    rows = reader.rows(
        "SELECT json_extract(r.payload, '$.i'), rw.waitpoint_id FROM run_waits rw"
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
    url, path = ctx.fresh_db("latency-in")
    side = ctx.side_file("latency-in")
    async with Engine(url) as engine, ctx.in_process_worker(engine):
        reader = Reader(path)
        tokens = await park_marked_runs(engine, reader, n)
        returned = await complete_paced(engine, tokens, ctx.sizes.latency_rate)
        await wait_for(lambda: count_lines(side) >= n, 60, "resumed runs")
        reader.close()
    lat = latencies_ms(returned, read_side(side))
    return {**spread(lat), "n": len(lat)}


async def bench_latency_cross_process(ctx: Context, n: int) -> dict[str, Any]:
    url, path = ctx.fresh_db("latency-x")
    side = ctx.side_file("latency-x")
    async with ctx.worker_process(url, "latency-x"), Engine(url) as engine:
        reader = Reader(path)
        tokens = await park_marked_runs(engine, reader, n)
        returned = await complete_paced(engine, tokens, ctx.sizes.latency_rate)
        await wait_for(lambda: count_lines(side) >= n, 60, "resumed runs")
        lat = latencies_ms(returned, read_side(side))
        cli = await cli_latency(ctx, engine, reader, url, side, ctx.sizes.cli_samples)
        reader.close()
    return {**spread(lat), "n": len(lat), **cli}


async def cli_latency(
    ctx: Context, engine: Engine, reader: Reader, url: str, side: Path, samples: int
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
    await wait_for(
        lambda: len(reader.rows(_WAITING_TOKENS)) >= samples, 60, "CLI sample runs parked"
    )
    rows = reader.rows(
        "SELECT json_extract(r.payload, '$.i'), rw.waitpoint_id FROM run_waits rw"
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
                [exe, "tokens", "complete", tid, "--data", '{"ok": true}', "--database", url],
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
    url, path = ctx.fresh_db(f"memory{n}")
    result: dict[str, Any] = {}
    async with Engine(url) as engine:
        reader = Reader(path)
        async with ctx.worker_process(url, f"memory{n}") as wp:
            started = time.monotonic()
            if n:
                await asyncio.gather(
                    trigger_many(engine, "bench-park", [{"i": i} for i in range(n)]),
                    wait_for(
                        lambda: (
                            reader.value("SELECT count(*) FROM runs WHERE status = 'WAITING'") >= n
                        ),
                        120 + n / 20,
                        f"{n} runs WAITING",
                        poll=0.5,
                    ),
                )
            park_seconds = time.monotonic() - started
            await _until_idle(wp)
            snapshot = await wp.stats()
            counts = reader.status_counts()
            result = {
                "rss_mb": rss_kb(wp.pid) / 1024,
                "hwm_mb": rss_kb(wp.pid, "VmHWM") / 1024,
                "park_seconds": park_seconds,
                "park_rate": n / park_seconds if n else math.nan,
                "waiting": counts.get("WAITING", 0),
                "running": snapshot["running"],
            }
        # a worker started after the runs parked: what waiting costs a fresh process
        async with ctx.worker_process(url, f"memory{n}-fresh") as fresh:
            await _until_idle(fresh)
            result["fresh_rss_mb"] = rss_kb(fresh.pid) / 1024
        reader.close()
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
    url, path = ctx.fresh_db(f"timers{n}")
    async with ctx.worker_process(url, f"timers{n}"), Engine(url) as engine:
        reader = Reader(path)
        lead = 4 + n / max(park_rate, 50)
        deadline_s = math.ceil(time.time() + lead)
        deadline = datetime.fromtimestamp(deadline_s, tz=UTC)
        t0 = time.monotonic()
        await trigger_many(engine, "bench-timer", [{"deadline": deadline.isoformat()}] * n)
        await wait_for(
            lambda: (
                reader.value("SELECT count(*) FROM runs WHERE status = 'WAITING'") >= n
                or time.time() >= deadline_s
            ),
            lead + 60,
            "timer runs parked",
        )
        parked_before = reader.value("SELECT count(*) FROM runs WHERE status = 'WAITING'")
        park_rate = parked_before / (time.monotonic() - t0)
        spare = deadline_s - time.time()
        await wait_for(
            lambda: reader.value("SELECT count(*) FROM waitpoints WHERE status = 'TIMED_OUT'") >= n,
            lead + 120,
            "tokens timed out",
            poll=0.1,
        )
        # only tokens created before the deadline count (a later one is due when created)
        rows = reader.rows(
            "SELECT completed_at - timeout_at, timeout_at FROM waitpoints"
            " WHERE created_at < timeout_at"
        )
        sql = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
        await wait_for(lambda: reader.value(sql) >= n, 120 + n / 20, "timer runs finished")
        all_done = reader.value("SELECT max(finished_at) FROM runs") / 1000 - deadline_s
        check_all_completed(reader, n, "timers")
        reader.close()
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
    url, path = ctx.fresh_db("replay")
    side = ctx.side_file("replay")
    out: dict[str, Any] = {}
    async with Engine(url) as engine, ctx.in_process_worker(engine):
        reader = Reader(path)
        base = 0
        for steps in steps_list:
            payloads = [{"i": base + k, "steps": steps} for k in range(samples)]
            run_ids = await trigger_many(engine, "bench-replay", payloads)
            await wait_for(
                lambda ids=run_ids: (
                    reader.value(
                        "SELECT count(*) FROM runs WHERE status = 'WAITING' AND id IN"
                        " (SELECT value FROM json_each(?))",
                        [json.dumps(ids)],
                    )
                    >= len(ids)
                ),
                120 + steps * samples / 100,
                f"replay runs with {steps} steps parked",
            )
            first_line: list[float] = []
            to_completed: list[float] = []
            for k, run_id in enumerate(run_ids):
                tid = reader.value("SELECT waitpoint_id FROM run_waits WHERE run_id = ?", [run_id])
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
        reader.close()
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
    commits: list[tuple[float, float]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
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
            "cpu_ms_per_run_worker_client": self.cpu,
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


def _pair(pairs: list[tuple[float, float]], spec: str) -> str:
    """Medians of (worker, client) pairs as 'w+c'."""
    if not pairs:
        return ""
    w = statistics.median(p[0] for p in pairs)
    c = statistics.median(p[1] for p in pairs)
    return f"{spec.format(w)}+{spec.format(c)}"


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
        ("CPU ms/run w+c", "right"),
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

    for dist in ("waitpoint", "aiosqlite", "anyio", "structlog", "pydantic", "dbos", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {
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


async def run_all(ctx: Context, results: Results, only: set[str] | None) -> None:
    s, repeat = ctx.sizes, ctx.args.repeat

    def want(key: str) -> bool:
        return only is None or key in only

    dbos_problem = dbos_status()
    sub, inproc = "subprocess", "in-process"
    subs = sub if ctx.args.workers == 1 else f"{ctx.args.workers} subprocesses"
    park_rate = 700.0  # runs parked per second, to set the timers' deadline (then measured)

    async def item0() -> None:
        m = bench_sqlite_baseline(ctx)
        results.add_raw("sqlite_baseline", m)
        for key, metric, value in (
            ("0.commits", "one-row commits/s (sqlite3, no engine)", m["commits_per_s"]),
            ("0.rows", "rows/s in one transaction (sqlite3, no engine)", m["rows_per_s"]),
        ):
            row = results.row(
                key, label="SQLite on this disk, WAL, FULL", metric=metric, worker="-", unit="/s"
            )
            row.samples.append(value)
        say(f"  0 sqlite: {m['commits_per_s']:.0f} commits/s, {m['rows_per_s']:.0f} rows/s")

    async def item1() -> None:
        m = await bench_trivial(ctx, s.trivial)
        results.add_raw("trivial", m)
        row = results.row(
            "1",
            label=f"trivial runs, N={s.trivial:,}",
            metric="runs/s",
            worker=subs,
            unit="/s",
            target=">= 2,000/s",
            good=lambda v: v >= 2000,
        )
        row.samples.append(m["runs_per_s"])
        row.commits.append((m["commits_worker"], m["commits_client"]))
        n = s.trivial
        row.cpu.append((m["cpu_worker_s"] * 1000 / n, m["cpu_driver_s"] * 1000 / n))
        say(
            f"  1 trivial: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
            f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f}"
        )

    async def item2(n: int) -> None:
        m = await bench_token_wait(ctx, n)
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
        row.cpu.append((m["cpu_worker_s"] * 1000 / n, m["cpu_driver_s"] * 1000 / n))
        say(
            f"  2 token-wait N={n}: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
            f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f}"
        )

    async def item7(workload: str) -> None:
        n = s.dbos_wait_n if workload == "wait" else s.dbos_trivial_n
        d = await bench_dbos(ctx, workload, n)
        results.add_raw(f"dbos_{workload}", d)
        keys = [f"2.{k}" for k in s.token_wait] if workload == "wait" else ["1"]
        for key in keys:
            if key in results.rows:
                results.rows[key].dbos.append(d["runs_per_s"])
        say(f"  7 DBOS {workload} N={n}: {d['runs_per_s']:.1f} runs/s")

    async def item3() -> None:
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
        nonlocal park_rate
        m = await bench_timers(ctx, s.timers, park_rate)
        park_rate = 0.7 * m["park_rate"]
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

    async def guarded(name: str, make: Awaitable[None]) -> None:
        """One failing measurement is reported and the others still run."""
        try:
            await make
        except Exception as exc:
            say(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            results.notes.append(f"ERROR in {name}: {type(exc).__name__}: {exc}")

    timed = [k for k in ("0", "1", "2", "3", "5", "6", "7") if want(k)]
    for r in range(repeat if timed else 0):
        say(f"repeat {r + 1}/{repeat}")
        if want("0"):
            await guarded("0 sqlite baseline", item0())
        if want("1"):
            await guarded("1 trivial", item1())
        if want("2"):
            for n in s.token_wait:
                await guarded(f"2 token-wait N={n}", item2(n))
        if dbos_problem is None and want("7"):
            if want("2"):
                await guarded("7 DBOS wait", item7("wait"))
            if want("1"):
                await guarded("7 DBOS trivial", item7("trivial"))
        if want("3"):
            await guarded("3 resume latency", item3())
        if want("5"):
            await guarded("5 timers", item5())
        if want("6"):
            await guarded("6 replay", item6())
    if want("4"):
        for _ in range(s.memory_repeats):
            for n in s.memory:
                await guarded(f"4 memory {n}", item4(n))
    results.notes.extend(_notes(ctx, results))


def _notes(ctx: Context, results: Results) -> list[str]:
    notes = [
        "commits/run w+c: SQLite write transactions per run committed by the worker process"
        " + by the driver process (trigger, completion), from engine.storage.commits;"
        " CPU ms/run w+c: user+system CPU of the worker process (all threads, /proc/PID/stat)"
        " + of the driver process, per run.",
        "subprocess: one worker process (benchmarks/worker_proc.py: Worker(engine, tasks)),"
        " driver (trigger/complete) in this process; in-process: the Worker runs on this"
        " process's Engine and event loop.",
    ]
    raw = results.raw
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
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (~1 min)")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="repeats (median; default 3)")
    parser.add_argument("--only", help="comma-separated items to run, e.g. 1,2,7")
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
    if args.backend == "postgres":
        print(
            "the PostgreSQL backend does not exist in this engine yet"
            " (engine/storage: 'the PostgreSQL backend is not available yet'); nothing to measure",
            file=sys.stderr,
        )
        sys.exit(2)
    sizes = QUICK if args.quick else Sizes()
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
    results = Results()
    only = set(args.only.split(",")) if args.only else None
    machine = describe_machine()
    started = time.monotonic()
    try:
        asyncio.run(run_all(ctx, results, only))
    finally:
        driver_log.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)
    elapsed = time.monotonic() - started
    title = (
        f"Waitpoint benchmarks, SQLite WAL synchronous=FULL, medians of {args.repeat}"
        f" ({'quick' if args.quick else 'full'}, {elapsed:.0f} s) - {machine['nproc']} x"
        f" {machine['cpu']}, Python {machine['python']}, SQLite {machine['sqlite']}"
    )
    print_table(results, title, dbos_status())
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": {k: v for k, v in vars(args).items()},
                    "elapsed_s": elapsed,
                    "rows": [r.as_json() for r in results.rows.values()],
                    "raw": results.raw,
                    "notes": results.notes,
                    "dbos": dbos_status() or "ok",
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
