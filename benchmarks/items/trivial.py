"""Item 1: trivial runs per second (``bench-trivial``: one step, no wait).

N runs are triggered (up to 500 in flight) and timed from before the first trigger to the last
run's ``finished_at``, by the same measurement as token-wait runs
(``token_wait.bench_throughput``), without the completer.
"""

from __future__ import annotations

from harness import Context, say
from report import Results

from .token_wait import bench_throughput, throughput_row, throughput_text


async def run(ctx: Context, results: Results) -> None:
    n = ctx.sizes.trivial
    m = await bench_throughput(ctx, "bench-trivial", n, "trivial")
    results.add_raw("trivial", m)
    throughput_row(ctx, results, m, n, key="1", label=f"trivial runs, N={n:,}", floor=2000)
    say("  1 trivial: " + throughput_text(m))
