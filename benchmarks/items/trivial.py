"""Item 1: trivial runs per second (``bench-trivial``: one step, no wait).

N runs are triggered (up to 500 in flight) and timed from before the first trigger to the last
run's ``finished_at``, by the same measurement as token-wait runs
(``token_wait.bench_throughput``), without the completer.
"""

from __future__ import annotations

from harness import Context, say
from report import Results

from .token_wait import bench_throughput, cpu_ms, server_text, subprocesses


async def run(ctx: Context, results: Results) -> None:
    n = ctx.sizes.trivial
    m = await bench_throughput(ctx, "bench-trivial", n, "trivial")
    results.add_raw("trivial", m)
    row = results.row(
        "1",
        label=f"trivial runs, N={n:,}",
        metric="runs/s",
        worker=subprocesses(ctx),
        unit="/s",
        target=">= 2,000/s",
        good=lambda v: v >= 2000,
    )
    row.samples.append(m["runs_per_s"])
    row.commits.append((m["commits_worker"], m["commits_client"]))
    row.cpu.append(cpu_ms(m, n))
    say(
        f"  1 trivial: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
        f" CPU s worker {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f}" + server_text(m)
    )
