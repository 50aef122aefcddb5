"""The client's CPU per trigger and per completion of a token-wait run, and nothing else.

    .venv/bin/python benchmarks/client_cpu.py [--n 5000] [--backend sqlite] [--repeat 3]
    PYTHONPATH=/tmp/engine-<commit> .venv/bin/python benchmarks/client_cpu.py ...

Issue 21's client target (<= 0.25 ms per trigger + completion) cannot be read from item 2's
driver CPU, which also pays the harness: a read of every parked token each 5 ms while runs
go on. Here the client process does one thing at a time and is measured around it alone
(user + system CPU of the whole process, its SQLite writer thread included):

1. trigger N ``bench-wait`` runs (100 in flight), while a worker process
   (``worker_proc.py``) runs them up to their wait, each parking on a token of its own;
2. once every run is parked, the worker stops; then complete the N tokens (100 in flight),
   each completion re-queueing its run, as in item 2.

A warm-up of 200 runs goes first. Prints each sample and the medians: microseconds of client
CPU per trigger, per completion, and their sum against the target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from backends import DEFAULT_PG_URL, Database
from harness import WAITING_TOKENS, Context, Sizes, bounded, cpu_s

from engine import Engine

HERE = Path(__file__).resolve().parent
IN_FLIGHT = 100
TARGET_US = 250


async def parked(db: Database, n: int, timeout: float = 600) -> list[str]:
    """The ids of the tokens parked runs wait on, once there are ``n`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        ids = [tid for (tid,) in await db.reader.rows(WAITING_TOKENS)]
        if len(ids) >= n:
            return ids
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ids)} of {n} runs parked")
        await asyncio.sleep(0.2)


async def sample(ctx: Context, n: int) -> tuple[float, float]:
    """Client CPU (us) per trigger and per completion, over ``n`` runs on a fresh database."""
    async with ctx.database("client") as db:
        async with Engine(db.url) as engine:  # makes the tables before the worker starts
            async with ctx.worker_process(db.url, "client") as worker:
                warm = await bounded(
                    [{"i": -i} for i in range(1, 201)],
                    IN_FLIGHT,
                    lambda p: engine.trigger("bench-wait", p),
                )
                for tid in await parked(db, len(warm)):
                    await engine.tokens.complete(tid, {"ok": True})
                before = cpu_s()
                await bounded(
                    [{"i": i} for i in range(n)],
                    IN_FLIGHT,
                    lambda p: engine.trigger("bench-wait", p),
                )
                triggering = cpu_s() - before
                tokens = await parked(db, n)
                await worker.stop()  # before the completions: they re-queue runs, not more
            before = cpu_s()
            await bounded(tokens, IN_FLIGHT, lambda t: engine.tokens.complete(t, {"ok": True}))
            completing = cpu_s() - before
    return triggering * 1e6 / n, completing * 1e6 / len(tokens)


async def main(args: argparse.Namespace) -> None:
    triggers, completions = [], []
    with tempfile.TemporaryDirectory(prefix="client-", dir=HERE) as tmp:
        # the harness's workers (warnings only, logs in the folder) and fresh databases
        options = argparse.Namespace(log_level="warning", uvloop=False, profile=None, **vars(args))
        env = {**os.environ, "WAITPOINT_SQLITE_SYNCHRONOUS": "FULL"}
        ctx = Context(args=options, sizes=Sizes(), dir=Path(tmp), env=env, backend=args.backend)
        for r in range(args.repeat):
            trigger_us, complete_us = await sample(ctx, args.n)
            load = os.getloadavg()[0]
            print(
                f"  {r + 1}/{args.repeat}: trigger {trigger_us:.0f} us, completion"
                f" {complete_us:.0f} us, sum {trigger_us + complete_us:.0f} us (load {load:.2f})",
                flush=True,
            )
            triggers.append(trigger_us)
            completions.append(complete_us)
    t, c = statistics.median(triggers), statistics.median(completions)
    print(
        f"client CPU per token-wait run on {args.backend}, N={args.n:,}, medians of {args.repeat}"
    )
    print("| trigger | completion | sum | target |")
    print("|---:|---:|---:|---:|")
    print(f"| {t:.0f} us | {c:.0f} us | {t + c:.0f} us | <= {TARGET_US} us |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
