"""Item 4: memory, the worker process's RSS with nothing to do and with runs WAITING.

``VmRSS`` of the worker process (``/proc/<pid>/status``) once it parked N runs
(``bench-park``: ``create_token``, wait), all runs WAITING, nothing running and its RSS steady
within 1% for 2 s; also ``VmHWM`` and the RSS of a fresh worker started on the same database.
Measured once (``Sizes.memory_repeats``): the 100,000-run level takes minutes.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from harness import (
    SUBPROCESS,
    WAITING_RUNS,
    Context,
    WorkerProcess,
    at_least,
    rss_kb,
    say,
    trigger_many,
    wait_for,
)
from report import Results

from engine import Engine


async def bench_memory(ctx: Context, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with ctx.database(f"memory{n}") as db, Engine(db.url) as engine:
        async with ctx.worker_process(db.url, f"memory{n}") as wp:
            started = time.monotonic()
            if n:
                await asyncio.gather(
                    trigger_many(engine, "bench-park", [{"i": i} for i in range(n)]),
                    wait_for(
                        lambda: at_least(db, WAITING_RUNS, n),
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


async def run(ctx: Context, results: Results, n: int) -> None:
    say(f"memory with {n:,} runs WAITING")
    m = await bench_memory(ctx, n)
    results.add_raw(f"memory_{n}", m)
    row = results.row(
        f"4.{n}",
        label=f"worker RSS, {n:,} runs WAITING",
        metric="VmRSS",
        worker=SUBPROCESS,
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


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    mems = {k: v for k, v in raw.items() if k.startswith("memory_")}
    if not mems:
        return []
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
    return ["memory (measured once): " + "; ".join(parts) + "."]
