"""The engine's own work per token-wait run with 1 and with K worker processes: Python
function calls per run, counted under cProfile (item 8, PostgreSQL).

    .venv/bin/python benchmarks/scaling_calls.py [--engine /tmp/engine-<commit>] [--workers 1,4]

Issue 13 asks that a run cost the workers no more CPU with 4 of them than with 1. On this
2-core machine CPU times answer a different question: 4 workers, the server and the driver
share 2 cores, so every process is preempted more often and runs on colder caches, and a
run's CPU grows with the same work done. Calls counted by a profiler do not depend on that
(nor on the load): they say whether the engine does more per run when there are more workers.

Each size (``--n``, default 1,000 and 3,000 runs) is one ``run.py --only 8 --quick --profile``
subprocess with ``--engine`` first on ``PYTHONPATH``; per-run figures are the slope between
the two sizes, so the processes' start-up and shutdown cancel out. Prints, per worker count:
calls per run and the ratio to 1 worker, notifications taken per run and event loop
iterations per run (all workers together).
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from ab import commit_of

HERE = Path(__file__).resolve().parent

Key = tuple[str, int, str]


def profile(engine: Path, n: int, workers: str, into: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(engine.resolve())}
    subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--backend", "postgres", "--only", "8",
         "--quick", "--repeat", "1", "--scaling-n", str(n), "--scaling-workers", workers,
         "--profile", str(into), "--dir", str(into)],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def calls(folder: Path, workers: int) -> dict[Key, int]:
    """Calls of each function, summed over the profiles of the ``workers``-worker sample."""
    files = sorted(str(f) for f in folder.glob(f"*-scale{workers}-w*.prof"))
    if not files:
        raise SystemExit(f"no profiles of {workers} workers in {folder}")
    stats = pstats.Stats(*files).stats  # type: ignore[attr-defined]
    return {key: value[1] for key, value in stats.items()}


def named(counts: dict[Key, int], function: str, file_end: str) -> int:
    return sum(
        n for (file, _, name), n in counts.items() if name == function and file.endswith(file_end)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default=HERE.parent, type=Path, help="folder of the engine")
    parser.add_argument("--workers", default="1,4", help="worker counts (the first is the base)")
    parser.add_argument("--n", default="1000,3000", help="the two sizes (runs per sample)")
    args = parser.parse_args()
    small, large = (int(n) for n in args.n.split(","))
    counts = [int(k) for k in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="calls-", dir=HERE) as tmp:
        folders = {n: Path(tmp) / str(n) for n in (small, large)}
        for n, folder in folders.items():
            profile(args.engine, n, args.workers, folder)
        rows = []
        for k in counts:
            a, b = calls(folders[small], k), calls(folders[large], k)

            def per_run(x: int, y: int) -> float:
                return (y - x) / (large - small)

            rows.append(
                (
                    k,
                    per_run(sum(a.values()), sum(b.values())),
                    per_run(
                        named(a, "_notified", "postgres.py"), named(b, "_notified", "postgres.py")
                    ),
                    per_run(
                        named(a, "_run_once", "base_events.py"),
                        named(b, "_run_once", "base_events.py"),
                    ),
                )
            )
    print(
        f"engine {commit_of(args.engine)}, token-wait runs on PostgreSQL, N={small:,} and {large:,}"
    )
    print("| workers | Python calls/run | vs 1 worker | notifications taken/run | loop turns/run |")
    print("|---:|---:|---:|---:|---:|")
    base = rows[0][1]
    for k, per, notified, loops in rows:
        print(f"| {k} | {per:,.0f} | {per / base:.2f}x | {notified:.1f} | {loops:.1f} |")


if __name__ == "__main__":
    main()
