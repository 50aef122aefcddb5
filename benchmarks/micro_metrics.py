"""What the in-process metrics cost the hot path: off (the default) and on.

    python benchmarks/micro_metrics.py [--n 2000] [--repeat 5]

One run's storage calls, N times, sequentially, on a fresh SQLite file per measurement:
``create_run``, ``claim_runs``, ``finish_run`` (three write transactions), with recording
off and on, alternating (a different order each repeat). Prints the microseconds per run of
each, their ratio, and the cost of what a recording site adds with metrics off (a read of
``metrics.on``) and of ``StorageCore._write``'s dispatch against calling the backend's
transaction directly, measured with ``timeit``.

To compare metrics off against the engine before metrics existed, use
``sqlite_side_by_side.py --other <that engine>`` (the same workload as the users' runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Engine, metrics
from engine.models import RunStatus
from engine.storage import NewRun


async def measure(url: str, n: int, on: bool) -> float:
    """Seconds per run of N runs' storage calls, recording ``on`` or off."""
    if on:
        metrics.enable()
    else:
        metrics.disable()
    async with Engine(url) as engine:
        storage = engine.storage
        started = time.perf_counter()
        for _ in range(n):
            await storage.create_run(NewRun(task_id="bench", payload=None))
            [run] = await storage.claim_runs("bench-worker", 1, 30_000, ["bench"])
            await storage.finish_run(run.id, run.epoch, RunStatus.COMPLETED, None, None)
        return (time.perf_counter() - started) / n


def dispatch_costs() -> tuple[float, float]:
    """Nanoseconds of ``if metrics.on`` (off), and of ``_write``'s dispatch beyond the
    backend's own call (off)."""
    metrics.disable()
    check = min(timeit.repeat("metrics.on and None", globals={"metrics": metrics}, number=10**6))

    class Backend:
        def _transact(self, op: object, *, notify: bool = True, control: bool = False) -> None:
            return None

    from engine.storage.core import StorageCore

    class Storage(Backend, StorageCore):  # type: ignore[misc]
        pass

    storage = Storage()
    direct = min(timeit.repeat(lambda: storage._transact(None), number=10**6))
    through = min(timeit.repeat(lambda: storage._write(None), number=10**6))  # type: ignore[arg-type]
    return check * 1000, (through - direct) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    samples: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeat):
        for on in (False, True) if r % 2 == 0 else (True, False):
            url = f"sqlite:///{tempfile.mkdtemp(prefix='micro-metrics-')}/engine.db"
            seconds = asyncio.run(measure(url, args.n, on))
            samples[on].append(seconds)
            print(f"repeat {r + 1} metrics {'on ' if on else 'off'}: {seconds * 1e6:.0f} us/run")
    off, on = (statistics.median(samples[k]) for k in (False, True))
    check_ns, dispatch_ns = dispatch_costs()
    print(
        f"SQLite, N={args.n}, {args.repeat} repeats: off {off * 1e6:.0f} us/run,"
        f" on {on * 1e6:.0f} us/run (on/off = {on / off:.3f});"
        f" with metrics off a recording site costs {check_ns:.0f} ns,"
        f" _write's dispatch {dispatch_ns:.0f} ns per write"
    )


if __name__ == "__main__":
    main()
