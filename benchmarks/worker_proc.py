"""One worker process for the benchmarks: ``Worker(engine, BENCH_TASKS)`` until SIGTERM.

    python benchmarks/worker_proc.py --database sqlite:////tmp/x.db --stats /tmp/stats.json

Prints ``ready`` on stdout once the worker is claiming. SIGUSR1 writes a JSON snapshot to
``--stats`` (this process's write transactions, attempts running, RSS, how often each
storage operation was called, each thread's CPU and the context switches); SIGTERM stops
gracefully. On PostgreSQL the snapshot also counts the SQL statements this process sent
(each one a round trip; ``BEGIN`` and ``COMMIT`` too). ``--profile FILE`` profiles every
thread (``profiler.py``) into FILE at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks
from harness import process_usage
from profiler import start_profile

from engine import Engine, Worker
from engine.logs import configure_logging


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(task.name), f"native thread {task.name}")
        name = re.sub(
            r"^Thread-\d+ ", "", name
        )  # aiosqlite's thread: "(_connection_worker_thread)"
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def count_calls(storage: Any, calls: Counter[str]) -> None:
    """Count the calls of each public storage operation made through this instance."""

    def counted(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            result = await fn(*args, **kwargs)
            if name == "claim_runs" and not result:  # a claim that found nothing
                calls["claim_runs_empty"] += 1
            return result

        return call

    for name in dir(type(storage)):
        if not name.startswith("_"):
            attr = getattr(storage, name)
            if inspect.iscoroutinefunction(attr):
                setattr(storage, name, counted(name, attr))


def count_statements(calls: Counter[str]) -> None:
    """Count the statements asyncpg sends from this process (pool methods go through these)."""
    try:
        from asyncpg.connection import Connection
    except ImportError:
        return
    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        fn = getattr(Connection, name)

        def counted(fn: Any = fn) -> Any:
            @functools.wraps(fn)
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls["sql_statements"] += 1
                return await fn(self, *args, **kwargs)

            return call

        setattr(Connection, name, counted())


async def main(args: argparse.Namespace) -> None:
    if args.uvloop:
        pass  # the loop policy is chosen before asyncio.run below
    loop = asyncio.get_running_loop()
    calls: Counter[str] = Counter()
    if args.database.startswith("postgres"):
        count_statements(calls)
    async with Engine(args.database) as engine:
        count_calls(engine.storage, calls)
        worker = Worker(engine, bench_tasks.BENCH_TASKS, concurrency=args.concurrency)
        seq = 0

        def dump_stats() -> None:
            nonlocal seq
            seq += 1
            snapshot = {
                "seq": seq,
                "pid": os.getpid(),
                "time": time.time(),
                "commits": engine.storage.commits,  # type: ignore[attr-defined]
                "running": len(worker.running),
                "rss_kb": _rss_kb("VmRSS"),
                "hwm_kb": _rss_kb("VmHWM"),
                "calls": dict(calls),
                "threads": thread_cpu(),
                "usage": dict(process_usage(os.getpid())),  # CPU, context switches
            }
            tmp = Path(args.stats + ".tmp")
            tmp.write_text(json.dumps(snapshot))
            tmp.replace(args.stats)

        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        loop.add_signal_handler(signal.SIGINT, worker.stop)
        loop.add_signal_handler(signal.SIGUSR1, dump_stats)
        runner = asyncio.create_task(worker.run())
        await worker.started.wait()
        print("ready", flush=True)
        await runner


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--log-level", default="info", choices=["info", "warning"])
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--profile", help="profile this process (cProfile); pstats file written here at exit"
    )
    args = parser.parse_args()
    profiler = start_profile(Path(args.profile)) if args.profile else None
    configure_logging("json", logging.INFO if args.log_level == "info" else logging.WARNING)
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
    if profiler is not None:
        profiler.stop()
