"""One worker process for the benchmarks: ``Worker(engine, BENCH_TASKS)`` until SIGTERM.

    python benchmarks/worker_proc.py --database sqlite:////tmp/x.db --stats /tmp/stats.json

Prints ``ready`` on stdout once the worker is claiming. SIGUSR1 writes a JSON snapshot to
``--stats`` (this process's SQLite commits, attempts running, RSS); SIGTERM stops gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks

from engine import Engine, Worker
from engine.logs import configure_logging


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


async def main(args: argparse.Namespace) -> None:
    if args.uvloop:
        pass  # the loop policy is chosen before asyncio.run below
    loop = asyncio.get_running_loop()
    async with Engine(args.database) as engine:
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
                "running": len(worker._running),
                "rss_kb": _rss_kb("VmRSS"),
                "hwm_kb": _rss_kb("VmHWM"),
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
    args = parser.parse_args()
    configure_logging("json", logging.INFO if args.log_level == "info" else logging.WARNING)
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
