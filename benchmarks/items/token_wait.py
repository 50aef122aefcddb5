"""Item 2: token-wait runs per second, and the throughput measurement of items 1, 2 and 8.

``bench_throughput`` times N runs of a task from the first trigger to the last
``finished_at``, through worker subprocesses, and counts what they cost: write transactions
and CPU of the workers and the driver and, on PostgreSQL, of the server backends serving them
(``PgMeter``), with ``xact_commit`` and WAL per run. For token-wait runs (``bench-wait``: step,
``create_token``, ``wait_for_token``, return) a completer in the driver completes the token of
every run that has parked, so every run parks and resumes through replay. Item 1
(``trivial.py``) runs the same measurement without waits, item 8 (``capacity.py``) with 1, 2
and 4 worker processes.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from typing import Any

from backends import Database, PgMeter, sample_waits, wait_for_stats_flush
from harness import (
    FINISHED,
    SUBPROCESS,
    WAITING_TOKENS,
    Context,
    at_least,
    bounded,
    check_all_completed,
    cpu_s,
    machine_ticks,
    say,
    trigger_many,
    wait_for,
)
from report import Results

from engine import Engine


async def complete_parked(
    engine: Engine, db: Database, n: int, limit: int = 200, timeout: float = 600
) -> None:
    """Complete every token a *parked* run waits on (run_waits row committed), until n done."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(done) < n:
        fresh = [tid for (tid,) in await db.reader.rows(WAITING_TOKENS) if tid not in done]
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
            usage0, driver0 = wp.usage(), cpu_s()
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
            await wait_for(lambda: at_least(db, FINISHED, n), timeout, f"{label} runs")
            finished = await db.reader.value("SELECT max(finished_at) FROM runs") / 1000
            w1, calls1 = await wp.counts()
            worker_commits = w1 - w0
            if waits:  # the completions made after the last trigger returned
                client_commits = engine.storage.commits - c0  # type: ignore[attr-defined]
            usage1, driver1 = wp.usage(), cpu_s()
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
            "machine_steal": (ticks1[2] - ticks0[2]) / max(1, ticks1[1] - ticks0[1]),
            "cpu_worker_s": usage1["cpu_s"] - usage0["cpu_s"],
            "cpu_driver_s": driver1 - driver0,
            "worker_usage_per_run": {
                key: round((usage1[key] - usage0[key]) / n, 6) for key in sorted(usage1)
            },
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


def server_text(m: dict[str, Any]) -> str:
    """What the PostgreSQL server spent, for the progress line (empty on SQLite)."""
    if "pg_cpu_ours_s" not in m:
        return ""
    return (
        f"; server CPU s engine {m['pg_cpu_ours_s']:.1f} reader {m['pg_cpu_reader_s']:.1f}"
        f" all {m['pg_cpu_all_s']:.1f},"
        f" xact_commit/run {m['pg_xact_commit']:.1f}"
    )


def subprocesses(ctx: Context) -> str:
    """The "worker" column of items 1 and 2 (``--workers``)."""
    return SUBPROCESS if ctx.args.workers == 1 else f"{ctx.args.workers} subprocesses"


async def run(ctx: Context, results: Results, n: int) -> None:
    m = await bench_throughput(ctx, "bench-wait", n, f"wait{n}")
    results.add_raw(f"token_wait_{n}", m)
    throughput_row(ctx, results, m, n, key=f"2.{n}", label=f"token-wait runs, N={n:,}", floor=1000)
    say(f"  2 token-wait N={n}: " + throughput_text(m))


def throughput_row(
    ctx: Context,
    results: Results,
    m: dict[str, Any],
    n: int,
    *,
    key: str,
    label: str,
    floor: int,
) -> None:
    """The row of a ``bench_throughput`` measurement: runs/s (good from ``floor`` up), its
    commits and its CPU per run."""
    row = results.row(
        key,
        label=label,
        metric="runs/s",
        worker=subprocesses(ctx),
        unit="/s",
        target=f">= {floor:,}/s",
        good=lambda v: v >= floor,
    )
    row.samples.append(m["runs_per_s"])
    row.commits.append((m["commits_worker"], m["commits_client"]))
    row.cpu.append(cpu_ms(m, n))


def throughput_text(m: dict[str, Any]) -> str:
    """A ``bench_throughput`` measurement as the progress line says it."""
    return (
        f"{m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
        f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f},"
        f" steal {m['machine_steal'] * 100:.1f}%" + server_text(m)
    )


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    """The server's side of items 1 and 2 on PostgreSQL (nothing on SQLite)."""
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
    if not server:
        return []
    return [
        "server side (pg_stat_database of the whole database and cluster-wide WAL, so other"
        " clients count too): " + "; ".join(server) + "."
    ]
