"""The worker's instructions per run, counted by callgrind: engines compared without the noise.

    .venv/bin/python benchmarks/instructions.py --a /tmp/engine-<commit> [--b .] [--repeat 2]

CPU seconds per run move by 15% between identical samples on this VM (other guests take the
host's cores: steal time), so ``ab.py`` cannot see a change of a few percent. The number of
instructions a worker executes for the same runs barely moves: each sample here runs one
``worker_proc.py`` under ``valgrind --tool=callgrind`` (about 50x slower, which is why the
sizes are small) with an engine folder first on its ``PYTHONPATH``, while this process
triggers the runs and completes their tokens as item 2 does; the instructions per run are the
slope between two sizes (``--n``), so the worker's start and exit cancel out. A and B
alternate. Prints every sample and a table: the medians of instructions per run, and B's
ratio to A. Instructions are not time (a cache miss or a contended lock costs time and few
instructions), so a change that moves CPU time without moving instructions shows up only in
``ab.py``; this is the finer ruler for work removed. Nor does it see what happens once in
hundreds of runs: a full collection of the garbage collector comes every ~400 runs, so the
slope of 100 and 400 runs may hold none (``gc.freeze`` in the worker, 7% of its CPU, moved
instructions per run by less than 1% here).

Needs valgrind (``apt-get install valgrind``); SQLite only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from ab import commit_of
from harness import FINISHED, Context, Sizes, at_least, trigger_many, wait_for
from items.token_wait import complete_parked

from engine import Engine

HERE = Path(__file__).resolve().parent
TASKS = {"wait": "bench-wait", "trivial": "bench-trivial"}


async def instructions(ctx: Context, task: str, n: int) -> int:
    """Instructions of one worker process, from its start to its exit, that ran ``n`` runs."""
    async with ctx.database(f"{task}{n}") as db:
        async with Engine(db.url) as engine:  # the tables, before the worker starts
            async with ctx.worker_process(db.url, f"{task}{n}") as worker:
                payloads = [{"i": i} for i in range(n)]
                if task == "bench-wait":
                    await asyncio.gather(
                        trigger_many(engine, task, payloads),
                        complete_parked(engine, db, n, timeout=600),
                    )
                else:
                    await trigger_many(engine, task, payloads)
                await wait_for(lambda: at_least(db, FINISHED, n), 600, f"{n} runs")
    return worker.instructions()


async def per_run(ctx: Context, engine: Path, task: str, sizes: tuple[int, int]) -> float:
    """Instructions per run of ``engine``'s worker (a resolved folder): the slope between
    the two sizes."""
    ctx.env["PYTHONPATH"] = str(engine)
    small, large = [await instructions(ctx, task, n) for n in sizes]
    return (large - small) / (sizes[1] - sizes[0])


async def main(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind: apt-get install valgrind")
    small, large = (int(n) for n in args.n.split(","))
    engines = {"A": args.a, "B": args.b}
    task = TASKS[args.task]
    found: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="instructions-", dir=HERE) as tmp:
        options = argparse.Namespace(
            log_level=args.log_level,
            uvloop=False,
            profile=None,
            callgrind=True,
            workers=1,
            pg_url="",
        )
        env = {**os.environ, "WAITPOINT_SQLITE_SYNCHRONOUS": "FULL"}
        ctx = Context(args=options, sizes=Sizes(), dir=Path(tmp), env=env)
        for r in range(args.repeat):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                value = await per_run(ctx, engines[name], task, (small, large))
                found[name].append(value)
                print(f"  {r + 1}/{args.repeat} {name}: {value / 1e6:.3f} M instructions/run")
    a, b = statistics.median(found["A"]), statistics.median(found["B"])
    print(
        f"\nworker instructions per {args.task} run (callgrind), slope of N={small} and"
        f" N={large}, medians of {args.repeat}"
    )
    print("| engine | commit | M instructions/run |")
    print("|---|---|---:|")
    print(f"| A | {commit_of(engines['A'])} | {a / 1e6:.3f} |")
    print(f"| B | {commit_of(engines['B'])} | {b / 1e6:.3f} |")
    print(f"| B / A | | {b / a:.3f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, type=Path, help="engine folder A (holding engine/)")
    parser.add_argument("--b", default=HERE.parent, type=Path, help="engine folder B (default: .)")
    parser.add_argument("--task", default="wait", choices=sorted(TASKS))
    parser.add_argument("--n", default="100,400", help="the two sizes (runs per sample)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--log-level", default="info", choices=["info", "warning"])
    arguments = parser.parse_args()
    arguments.a, arguments.b = arguments.a.resolve(), arguments.b.resolve()
    asyncio.run(main(arguments))
