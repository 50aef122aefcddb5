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

This file is the driver: the options, the order the items run in, the tables and ``--json``.
Each item is a module of ``benchmarks/items/`` (``items/token_wait.py`` is item 2, and so on;
``items/__init__.py`` lists them); ``harness.py`` holds what they share (sizes, worker
processes, timing helpers) and ``report.py`` the rows and the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["WAITPOINT_SQLITE_SYNCHRONOUS"] = "FULL"
os.environ.setdefault("WAITPOINT_LOG_FORMAT", "json")

from backends import DEFAULT_PG_URL, PgMeter, describe_postgres, postgres_problem  # noqa: E402
from harness import QUICK, Context, Sizes, say  # noqa: E402
from items import (  # noqa: E402
    baseline,
    capacity,
    dbos,
    latency,
    memory,
    replay,
    timers,
    token_wait,
    trivial,
)
from profiler import start_profile  # noqa: E402
from report import (  # noqa: E402
    Results,
    describe_machine,
    print_backend_states,
    print_side_by_side,
    print_table,
)

from engine.logs import configure_logging  # noqa: E402

# the items whose notes go under each backend's table, in this order
NOTED = (token_wait, latency, memory, timers, replay, dbos)


async def run_all(ctx: Context, by_backend: dict[str, Results], only: set[str] | None) -> None:
    """Every item asked for, in the order of the tables; each on every backend in turn."""
    s, repeat = ctx.sizes, ctx.args.repeat
    backends = list(by_backend)

    def want(key: str) -> bool:
        return only is None or key in only

    def res() -> Results:
        """The results of the backend being measured now."""
        return by_backend[ctx.backend]

    dbos_problem = dbos.dbos_status()
    # runs parked per second, to set the timers' deadline (then measured), per backend
    park_rates = {b: 700.0 if b == "sqlite" else 300.0 for b in backends}
    if "postgres" in backends:
        ctx.meter = PgMeter(ctx.args.pg_url)
        await ctx.meter.open()

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
                await each_backend("0 baseline", lambda: baseline.run(ctx, res()))
            if want("1"):
                await each_backend("1 trivial", lambda: trivial.run(ctx, res()))
            if want("2"):
                for n in s.token_wait:
                    await each_backend(
                        f"2 token-wait N={n}", lambda n=n: token_wait.run(ctx, res(), n)
                    )
            if dbos_problem is None and want("7"):
                if want("2"):
                    await guarded("7 DBOS wait", lambda: dbos.run(ctx, by_backend, "wait"))
                if want("1"):
                    await guarded("7 DBOS trivial", lambda: dbos.run(ctx, by_backend, "trivial"))
            if want("3"):
                await each_backend("3 resume latency", lambda: latency.run(ctx, res()))
            if want("5"):
                await each_backend("5 timers", lambda: timers.run(ctx, res(), park_rates))
            if want("6"):
                await each_backend("6 replay", lambda: replay.run(ctx, res()))
            if want("8"):
                for k in s.scaling_workers:
                    await each_backend(
                        f"8 capacity, {k} workers", lambda k=k: capacity.run(ctx, res(), k)
                    )
        if want("4"):
            for _ in range(s.memory_repeats):
                for n in s.memory:
                    await each_backend(f"4 memory {n}", lambda n=n: memory.run(ctx, res(), n))
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
    for item in NOTED:
        notes.extend(item.notes(ctx, results.raw))
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
        "--token-wait-n", help="comma-separated sizes of item 2 (default 1000,10000)"
    )
    parser.add_argument(
        "--scaling-n", type=int, default=None, help="token-wait runs per item-8 measurement"
    )
    parser.add_argument(
        "--scaling-workers", help="comma-separated worker counts of item 8 (default 1,2,4)"
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
        "--profile",
        help="profile the worker processes and this driver (profiler.py: cProfile in every"
        " thread); pstats files go here, one per worker process and driver.prof",
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
    if args.scaling_workers:
        sizes.scaling_workers = tuple(int(k) for k in args.scaling_workers.split(","))
    if args.token_wait_n:
        sizes.token_wait = tuple(int(n) for n in args.token_wait_n.split(","))
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
    profiler = start_profile(Path(args.profile) / "driver.prof") if args.profile else None
    try:
        asyncio.run(run_all(ctx, by_backend, only))
    finally:
        if profiler is not None:
            profiler.stop()
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
        print_table(results, f"Waitpoint benchmarks, {names[backend]}, {how}", dbos.dbos_status())
    if len(backends) > 1:
        print_side_by_side(by_backend, f"SQLite and PostgreSQL side by side, {how}")
    if any("scaling" in r.raw for r in by_backend.values()):
        capacity.print_capacity(by_backend, machine["nproc"])
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
                            "capacity": capacity.capacity_rows(results.raw.get("scaling", [])),
                        }
                        for backend, results in by_backend.items()
                    },
                    "dbos": dbos.dbos_status() or "ok",
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
