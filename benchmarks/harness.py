"""What every measurement shares: the sizes, the worker processes, the timing helpers.

``Sizes`` holds each item's N (full and ``--quick``). ``Context`` is one invocation's state: the
arguments, the scratch directory, the backend being measured now and the PostgreSQL server's
meter; it hands out fresh databases, worker subprocesses (``benchmarks/worker_proc.py``, started
and stopped by PID, asked for their counters over SIGUSR1) and in-process workers. The rest
are small helpers: percentiles, polling the database until a condition holds, triggering with a
bounded number in flight, and reading CPU, RSS and the machine's load from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_tasks
from backends import Database, PgMeter, fresh_database

from engine import Engine, Worker

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

# the "worker" column: one worker process, or a Worker on the driver's Engine and event loop
SUBPROCESS, IN_PROCESS = "subprocess", "in-process"

# what the driver polls for through its own reader
FINISHED = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
WAITING_RUNS = "SELECT count(*) FROM runs WHERE status = 'WAITING'"
WAITING_TOKENS = (
    "SELECT rw.waitpoint_id FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id"
    " WHERE w.status = 'WAITING'"
)

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


def cpu_s() -> float:
    """User+system CPU seconds this process used so far (all threads); another process's:
    ``process_usage``."""
    t = os.times()
    return t.user + t.system


def process_usage(pid: int) -> Counter[str]:
    """A process's user and system CPU seconds, and its threads' voluntary and involuntary
    context switches (a process woken per event switches more than one woken per batch)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    usage = Counter[str](user_s=user, system_s=system, cpu_s=user + system)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for line in status.splitlines():
            kind, _, value = line.partition("_ctxt_switches:")
            if value:
                usage[f"switches_{kind.strip()}"] += int(value)
    return usage


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs so far, from /proc/stat (iowait counts as
    idle; steal, the time the hypervisor gave this VM's CPUs to others, as busy: a figure
    measured while it grew is not comparable with one measured while it did not)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total, values[7]


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
        self.callgrind_path = ctx.dir / f"{label}.callgrind"
        # under callgrind (instructions.py) the worker runs ~50x slower: so may its answers
        self.callgrind = bool(getattr(ctx.args, "callgrind", False))
        self.patience = 20 if self.callgrind else 1
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
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
        if self.ctx.args.profile:  # the worker profiles itself (profiler.py) until it exits
            cmd += ["--profile", str(Path(self.ctx.args.profile) / f"{self.label}.prof")]
        if self.callgrind:  # counts the instructions it executes, written when it exits
            out = f"--callgrind-out-file={self.callgrind_path}"
            cmd = ["valgrind", "--tool=callgrind", out, *cmd]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            cmd, stdout=subprocess.PIPE, stderr=log, env=self.ctx.env, cwd=self.ctx.dir
        )
        log.close()
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(
            loop.run_in_executor(None, self.proc.stdout.readline), 60 * self.patience
        )
        if line.strip() != b"ready":
            raise RuntimeError(f"worker did not start: {line!r}; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stats(self) -> dict[str, Any]:
        """Ask the worker for a snapshot (SIGUSR1) and wait for it."""
        self.seq += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30 * self.patience
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
            await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), 30 * self.patience)
        except TimeoutError:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def instructions(self) -> int:
        """The instructions the stopped worker executed, start to exit (``callgrind``)."""
        for line in self.callgrind_path.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {self.callgrind_path}; see {self.log_path}")


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

    def usage(self) -> Counter[str]:
        """User and system CPU seconds (and ``cpu_s``, their sum) and context switches, summed
        over the workers."""
        total = Counter[str]()
        for w in self.workers:
            total.update(process_usage(w.pid))
        return total

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


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
