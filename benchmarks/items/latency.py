"""Item 3: resume latency, from a token's completion to the task's first line after the wait.

N runs are parked first; their tokens are then completed one at a time, open loop at
``latency_rate``/s. The task stamps ``time.time()`` on its first line after ``wait_for_token``
into a side channel (one ``os.write`` to an ``O_APPEND`` file: no commit, microseconds), and
the driver stamps ``time.time()`` as ``tokens.complete`` returns. Three variants: the
completer on the in-process worker's event loop; an Engine in the driver with the worker in a
subprocess (SQLite: ``PRAGMA data_version``; PostgreSQL: ``LISTEN/NOTIFY``); and
``waitpoint tokens complete`` run as a command, measured from the CLI's start.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from backends import Database
from harness import (
    IN_PROCESS,
    PYTHON,
    SUBPROCESS,
    WAITING_RUNS,
    WAITING_TOKENS,
    Context,
    at_least,
    count_lines,
    pct,
    read_side,
    say,
    trigger_many,
    wait_for,
)
from report import Results, quantile_rows

from engine import Engine


async def park_marked_runs(
    engine: Engine, db: Database, n: int, task_id: str = "bench-wait", **extra: Any
) -> dict[int, str]:
    """Trigger n runs of ``task_id`` and wait until all are parked; token id by payload i."""
    await trigger_many(engine, task_id, [{"i": i, "mark": True, **extra} for i in range(n)])
    await wait_for(lambda: at_least(db, WAITING_RUNS, n), 60 + n / 20, f"{n} runs parked")
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
    waiting = f"SELECT count(*) FROM ({WAITING_TOKENS}) AS waiting"
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


def spread_text(m: dict[str, Any]) -> str:
    return " ".join(f"{q} {m[q + '_ms']:.1f}" for q in ("p10", "p50", "p90", "p99", "max")) + " ms"


async def run(ctx: Context, results: Results) -> None:
    s = ctx.sizes
    m = await bench_latency_in_process(ctx, s.latency_n)
    results.add_raw("latency_in_process", m)
    quantile_rows(
        results,
        m,
        "3.in",
        label=f"resume latency, completer in the worker's process, N={s.latency_n:,}",
        worker=IN_PROCESS,
        quantiles=(("p50", "< 5 ms", 5.0), ("p99", "", None)),
    )
    say("  3 latency in-process: " + spread_text(m))
    m = await bench_latency_cross_process(ctx, s.latency_n)
    results.add_raw("latency_cross_process", m)
    quantile_rows(
        results,
        m,
        "3.x",
        label=f"resume latency, completer = Engine in another process, N={s.latency_n:,}",
        worker=SUBPROCESS,
        quantiles=(("p50", "< 25 ms", 25.0), ("p99", "", None)),
    )
    if "cli_wall_p50_ms" in m:
        row = results.row(
            "3.cli",
            label=f"`waitpoint tokens complete` in a shell, {s.cli_samples} samples",
            metric="CLI start -> first line after the wait, p50",
            worker=SUBPROCESS,
            unit="ms",
        )
        row.samples.append(m["cli_resume_after_start_p50_ms"])
    say("  3 latency cross-process: " + spread_text(m))


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    """The CLI variant's wall time, and the resume relative to the CLI's exit."""
    if not (
        "latency_cross_process" in raw and raw["latency_cross_process"][0].get("cli_wall_p50_ms")
    ):
        return []
    walls = [m["cli_wall_p50_ms"] for m in raw["latency_cross_process"]]
    exits = [m["cli_resume_after_exit_p50_ms"] for m in raw["latency_cross_process"]]
    return [
        f"CLI `waitpoint tokens complete`: process wall time p50 {statistics.median(walls):.0f}"
        f" ms; the run's first line after the wait ran {statistics.median(exits):+.0f} ms"
        " relative to the CLI process exiting (negative: before it exited)."
    ]
