"""Item 5: timers, how late N tokens that time out at the same millisecond are fired.

N runs each create a token with the same deadline and wait on it; the deadline is set far
enough ahead for all of them to park first (from the previous measurement's park rate). The
lateness of a token is its ``completed_at`` minus its ``timeout_at``; tokens closed by one
timer transaction share ``completed_at``, so the batches are listed too.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from harness import (
    FINISHED,
    SUBPROCESS,
    WAITING_RUNS,
    Context,
    at_least,
    check_all_completed,
    pct,
    say,
    trigger_many,
    wait_for,
)
from report import Results, quantile_rows

from engine import Engine


async def bench_timers(ctx: Context, n: int, park_rate: float) -> dict[str, Any]:
    async with ctx.database(f"timers{n}") as db:
        async with ctx.worker_process(db.url, f"timers{n}"), Engine(db.url) as engine:
            lead = 4 + n / max(park_rate, 50)
            deadline_s = math.ceil(time.time() + lead)
            deadline = datetime.fromtimestamp(deadline_s, tz=UTC)
            t0 = time.monotonic()
            await trigger_many(engine, "bench-timer", [{"deadline": deadline.isoformat()}] * n)

            async def parked_or_due() -> bool:
                return time.time() >= deadline_s or await at_least(db, WAITING_RUNS, n)

            await wait_for(parked_or_due, lead + 60, "timer runs parked")
            parked_before = int(await db.reader.value(WAITING_RUNS))
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
            await wait_for(lambda: at_least(db, FINISHED, n), 120 + n / 20, "timer runs finished")
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


async def run(ctx: Context, results: Results, park_rates: dict[str, float]) -> None:
    """``park_rates``: runs parked per second on each backend, to set the next deadline."""
    m = await bench_timers(ctx, ctx.sizes.timers, park_rates[ctx.backend])
    park_rates[ctx.backend] = 0.7 * m["park_rate"]
    results.add_raw("timers", m)
    quantile_rows(
        results,
        m,
        "5",
        label=f"timer lateness, {ctx.sizes.timers:,} tokens due the same ms",
        worker=SUBPROCESS,
        quantiles=(("p50", "", None), ("p99", "< 250 ms", 250.0), ("max", "", None)),
    )
    row = results.row(
        "5.early",
        label="timer lateness",
        metric="tokens fired early",
        worker=SUBPROCESS,
        target="0",
        good=lambda v: v == 0,
    )
    row.samples.append(float(m["early"]))
    say(
        f"  5 timers: p50 {m['p50_ms']:.0f} p99 {m['p99_ms']:.0f} max {m['max_ms']:.0f} ms;"
        " batches (ms late: tokens) "
        + ", ".join(f"{b['late_ms']:.0f}: {b['tokens']}" for b in m["batches"][:12])
    )


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    if "timers" not in raw:
        return []
    t = raw["timers"]
    return [
        "timers: all runs resumed and COMPLETED "
        + ", ".join(f"{m['all_runs_done_s']:.1f}" for m in t)
        + " s after the deadline; runs parked before the deadline: "
        + ", ".join(str(m["parked_before_deadline"]) for m in t)
        + "; tokens created before the deadline (measured): "
        + ", ".join(str(m["tokens_measured"]) for m in t)
        + "."
    ]
