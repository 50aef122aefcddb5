"""Token-wait runs on PostgreSQL, Waitpoint and DBOS Transact side by side, with the server's
cost of each: runs/s, statements per run counted from the server's log, transactions
committed per run, and the CPU of the server processes that served them. Also Waitpoint on
SQLite in the same run (the rate only).

    .venv/bin/python benchmarks/pg_vs_dbos.py --n 1000 --repeat 3

Each measurement gets a database of its own (``CREATE DATABASE``, dropped afterwards), so the
server's counters of that database are the measurement's alone: ``xact_commit`` from
``pg_stat_database``, statements from the server log (``log_statement = 'all'`` set on that
database; needs a superuser and a log this process can read, else that column says n/a), and
CPU from ``/proc`` of the backends connected to it (the server must run on this machine).
The three sides alternate, in a different order each repeat; the table gives medians.

The workload is the same on both engines, in one process each (DBOS runs workflows in the
process that starts them): N runs started with at most 100 in flight; each runs a step, makes
its wait (a token; DBOS: ``recv``), announces it on an in-memory queue and waits; a sender
completes each announced wait (``tokens.complete``; DBOS: ``send``); once woken, a run
announces its end on another queue. The clock runs from the first start to the last end;
the process lets the last runs' ends commit (Waitpoint: a graceful ``worker.stop()``; DBOS:
``destroy`` waiting for its workflows) and exits, and the driver checks that every run
completed. Waitpoint runs one in-process ``Worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HERE = Path(__file__).resolve().parent
DEFAULT_URL = os.environ.get(
    "WAITPOINT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
LOG = Path("/var/log/postgresql/postgresql-15-main.log")
CONCURRENCY = 100


# --- one side, in its own process ---------------------------------------------------------


async def run_waitpoint(url: str, n: int) -> float:
    import logging

    from engine import Engine, Worker, create_token, step, task, wait_for_token
    from engine.logs import configure_logging

    configure_logging("json", logging.WARNING)  # as DBOS's, below: no log line per run

    announced: asyncio.Queue[str] = asyncio.Queue()
    finished: asyncio.Queue[int] = asyncio.Queue()

    async def prepare(i: int) -> int:
        return i

    @task("pgvs-wait")
    async def wait_task(payload: dict[str, Any]) -> dict[str, Any]:
        await step("prepare", prepare, payload["i"])
        token = await create_token(timeout="1h")
        announced.put_nowait(token.id)
        result = await wait_for_token(token)
        finished.put_nowait(payload["i"])
        return {"ok": result.ok}

    async with Engine(url) as engine:
        worker = Worker(engine, {"pgvs-wait": wait_task})
        working = asyncio.create_task(worker.run())
        await worker.started.wait()
        seconds = await drive(
            n,
            lambda i: engine.trigger("pgvs-wait", {"i": i}),
            lambda token_id: engine.tokens.complete(token_id, {"ok": True}),
            announced,
            finished,
        )
        worker.stop()  # graceful: the last attempts' ends commit
        await working
    return seconds


async def run_dbos(url: str, n: int) -> float:
    from dbos import DBOS

    announced: asyncio.Queue[str] = asyncio.Queue()
    finished: asyncio.Queue[int] = asyncio.Queue()

    @DBOS.step()
    async def prepare(i: int) -> int:
        return i

    @DBOS.workflow()
    async def wait_workflow(i: int) -> dict[str, Any]:
        await prepare(i)
        workflow_id = DBOS.workflow_id
        assert workflow_id is not None
        announced.put_nowait(workflow_id)
        message = await DBOS.recv_async("done", timeout_seconds=3600)
        finished.put_nowait(i)
        return {"ok": message is not None}

    os.environ.setdefault("DBOS__APPVERSION", "bench")
    DBOS(config={"name": "pgvs", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        seconds = await drive(
            n,
            lambda i: DBOS.start_workflow_async(wait_workflow, i),
            lambda workflow_id: DBOS.send_async(workflow_id, {"ok": 1}, "done"),
            announced,
            finished,
        )
    finally:
        DBOS.destroy(destroy_registry=False, workflow_completion_timeout_sec=30)
    return seconds


async def drive(
    n: int,
    start: Callable[[int], Awaitable[Any]],
    complete: Callable[[str], Awaitable[Any]],
    announced: asyncio.Queue[str],
    finished: asyncio.Queue[int],
) -> float:
    """The workload on either engine: start runs 0..n-1 (at most ``CONCURRENCY`` unfinished),
    complete each wait announced (once: a Waitpoint run that resumes runs its code again, by
    replay, and announces its token again), until every run announced its end. Seconds."""
    gate = asyncio.Semaphore(CONCURRENCY)
    ended = {i: asyncio.Event() for i in range(n)}

    async def one(i: int) -> None:
        async with gate:
            await start(i)
            await ended[i].wait()

    async def ends() -> None:
        while True:
            ended[await finished.get()].set()

    async def sender() -> None:
        seen: set[str] = set()
        sent = []
        while len(seen) < n:
            wait_id = await announced.get()
            if wait_id not in seen:
                seen.add(wait_id)
                sent.append(asyncio.create_task(complete(wait_id)))
        await asyncio.gather(*sent)

    started = time.perf_counter()
    ending = asyncio.create_task(ends())
    await asyncio.gather(sender(), *(one(i) for i in range(n)))
    seconds = time.perf_counter() - started
    ending.cancel()
    return seconds


def side_main(side: str, url: str, n: int) -> None:
    seconds = asyncio.run(run_dbos(url, n) if side == "dbos" else run_waitpoint(url, n))
    print(json.dumps({"seconds": seconds}), flush=True)


# --- the driver ----------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}", query=""))


async def backend_cpu(conn: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds so far of each server process connected to ``database``."""
    pids = [
        r["pid"]
        for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    ]
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()  # noqa: ASYNC240 - /proc never blocks
            fields = stat.rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


async def xact_commit(conn: asyncpg.Connection, database: str) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value = await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
    )
    return int(value or 0)


def statements_logged(offset: int, database: str) -> int | None:
    """Statements of ``database`` the server logged after ``offset`` (one line each)."""
    try:
        with LOG.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return None
    marker = f"@{database} LOG:  "
    return sum(
        1
        for line in text.splitlines()
        if marker in line and ("LOG:  statement: " in line or "LOG:  execute " in line)
    )


def log_size() -> int:
    try:
        return LOG.stat().st_size
    except OSError:
        return -1


async def measure(side: str, url: str, n: int) -> dict[str, Any]:
    if side == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="pgvs-"))
        seconds = run_side(side, f"sqlite:///{folder}/engine.db", n)
        return {"runs_per_s": n / seconds}
    database = f"pgvs_{side}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
        target = with_database(url, database)
        if side == "dbos":  # its tables made before the clock starts, as Waitpoint's migrations
            run_side(side, target, 1)
        else:
            run_side("waitpoint", target + "?schema=bench", 1)
        await asyncio.sleep(1.0)  # the warm-up's statistics flushed
        commits0 = await xact_commit(admin, database)
        offset = log_size()
        used: dict[str, float] = {}
        watch = asyncio.create_task(_watch_cpu(admin, database, used))
        process_url = target + ("?schema=bench" if side == "waitpoint" else "")
        seconds = await asyncio.get_running_loop().run_in_executor(
            None, run_side, side, process_url, n
        )
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        cpu = used.get("total", 0.0)
        await asyncio.sleep(1.0)
        commits = await xact_commit(admin, database) - commits0
        logged = statements_logged(offset, database) if offset >= 0 else None
        await check_completed(target, side, n + 1)  # and the warm-up's
        return {
            "runs_per_s": n / seconds,
            "xact_per_run": commits / n,
            "server_cpu_ms_per_run": cpu * 1000 / n,
            "statements_per_run": None if logged is None else logged / n,
        }
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def check_completed(url: str, side: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        if side == "dbos":
            query = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
        else:
            query = "SELECT count(*) FROM bench.runs WHERE status = 'COMPLETED'"
        done = await conn.fetchval(query)
    finally:
        await conn.close()
    if done != n:
        raise RuntimeError(f"{side}: {done} of {n} runs completed")


async def _watch_cpu(conn: asyncpg.Connection, database: str, out: dict[str, float]) -> None:
    """Sum, every 50 ms, the CPU the database's backends used since they were first seen (a
    backend's CPU before the measurement started does not count)."""
    first: dict[int, float] = await backend_cpu(conn, database)
    last: dict[int, float] = dict(first)
    try:
        while True:
            await asyncio.sleep(0.05)
            now = await backend_cpu(conn, database)
            for pid, value in now.items():
                first.setdefault(pid, 0.0)
                last[pid] = value
            out["total"] = sum(last[pid] - first[pid] for pid in last)
    except asyncio.CancelledError:
        out["total"] = sum(last[pid] - first[pid] for pid in last)
        raise


def run_side(side: str, url: str, n: int, engine_path: str | None = None) -> float:
    """One measurement in a fresh process (``engine_path``: the folder that holds the
    ``engine`` package to measure, such as an export of another commit)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [engine_path or str(HERE.parent), os.environ.get("PYTHONPATH")])
        ),
        "WAITPOINT_LOG_FORMAT": "json",
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--side", side, "--url", url, "--n", str(n)],
        capture_output=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed: {proc.stderr.decode()[-3000:]}")
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith('{"seconds"')]
    seconds: float = json.loads(lines[-1])["seconds"]
    return seconds


async def main(url: str, n: int, repeat: int) -> None:
    sides = ["waitpoint", "dbos", "sqlite"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    load: list[float] = []
    for r in range(repeat):
        order = sides[r % 3 :] + sides[: r % 3]
        for side in order:
            load.append(os.getloadavg()[0])
            m = await measure(side, url, n)
            results[side].append(m)
            print(f"repeat {r + 1} {side}: " + json.dumps(m), file=sys.stderr, flush=True)
    report(results, n, repeat, load)


def _median(ms: list[dict[str, Any]], key: str) -> float | None:
    values = [m[key] for m in ms if m.get(key) is not None]
    return statistics.median(values) if values else None


def report(
    results: dict[str, list[dict[str, Any]]], n: int, repeat: int, load: list[float]
) -> None:
    commit = (
        subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True
        )
        .stdout.decode()
        .strip()
    )
    print(
        f"\ntoken-wait runs, N={n}, medians of {repeat}; engine {commit};"
        f" load average {min(load):.1f}-{max(load):.1f} (1 min, at each measurement's start)"
    )
    print(
        f"{'':<26}{'runs/s':>9}{'statements/run':>16}{'xact_commit/run':>17}"
        f"{'server CPU ms/run':>19}"
    )

    def cell(value: float | None, width: int, digits: int = 1) -> str:
        return f"{'n/a' if value is None else f'{value:.{digits}f}':>{width}}"

    names = {
        "waitpoint": "Waitpoint, PostgreSQL",
        "dbos": "DBOS, PostgreSQL",
        "sqlite": "Waitpoint, SQLite",
    }
    for side in ("waitpoint", "dbos", "sqlite"):
        ms = results[side]
        print(
            f"{names[side]:<26}{cell(_median(ms, 'runs_per_s'), 9, 0)}"
            f"{cell(_median(ms, 'statements_per_run'), 16)}{cell(_median(ms, 'xact_per_run'), 17)}"
            f"{cell(_median(ms, 'server_cpu_ms_per_run'), 19, 2)}"
        )
    wp, db, lite = (_median(results[s], "runs_per_s") for s in ("waitpoint", "dbos", "sqlite"))
    if wp and db and lite:
        print(
            f"Waitpoint/DBOS on PostgreSQL: {wp / db:.2f}x;"
            f" Waitpoint PostgreSQL/SQLite: {wp / lite:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL server (superuser)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--side", choices=["waitpoint", "dbos", "sqlite"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args.side, args.url, args.n)
    else:
        asyncio.run(main(args.url, args.n, args.repeat))
