"""SQLite token-wait rate of two engines side by side: this tree's and another commit's.

    git archive 73e7293 engine | tar -x -C /tmp/engine-73e7293
    .venv/bin/python benchmarks/sqlite_side_by_side.py --other /tmp/engine-73e7293 --n 2000

The workload of ``pg_vs_dbos.py`` (one process: trigger, step, token, wait, completion, end),
on a fresh SQLite file per measurement (``synchronous=FULL``), the two engines alternating,
in a different order each repeat. Prints each sample, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_vs_dbos import HERE, run_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", required=True, help="a folder holding another engine package")
    parser.add_argument("--this", default=str(HERE.parent), help="default: this tree's engine")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    engines = {"this": args.this, "other": args.other}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    loads = []
    for r in range(args.repeat):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            folder = Path(tempfile.mkdtemp(prefix="sbs-"))
            loads.append(os.getloadavg()[0])
            seconds = run_side("sqlite", f"sqlite:///{folder}/engine.db", args.n, engines[name])
            rates[name].append(args.n / seconds)
            print(f"repeat {r + 1} {name}: {args.n / seconds:.0f} runs/s", flush=True)
    this, other = (statistics.median(rates[name]) for name in ("this", "other"))
    print(
        f"N={args.n}, {args.repeat} repeats, load {min(loads):.1f}-{max(loads):.1f}:"
        f" this {this:.0f} runs/s (min {min(rates['this']):.0f}, max {max(rates['this']):.0f}),"
        f" other {other:.0f} runs/s (min {min(rates['other']):.0f},"
        f" max {max(rates['other']):.0f}); this/other = {this / other:.3f}"
    )


if __name__ == "__main__":
    main()
