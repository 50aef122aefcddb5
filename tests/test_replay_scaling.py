"""Replay scales with the journal, not with its square.

A run resumed after 1,000 journaled steps replays each from the journal; the work per step
must not grow with the steps before it. Counted, not timed (timed tests flake on a shared
machine): the Python lines executed in this thread while ``check_replay`` reads a parked run's
journal and replays it up to the wait, for runs of 0, 10, 100 and 1,000 steps, less the lines
of the run of 0. Linear work costs the same per step at 100 and at 1,000 steps (measured: 178
and 177 lines a step, and 1,000 steps about 100x 10 steps); work that walked the journal at
each step would cost 10x more per step at 1,000. The ratios and the wall-clock times (traced)
are printed (``-s``); ``benchmarks/run.py --only 6`` measures resume times.
"""

from __future__ import annotations

import sys
import time
from types import FrameType
from typing import Any

from engine import Engine, TaskDefinition, check_replay, create_token, step, wait_for_token

from .conftest import wait_for_status
from .test_patches import TASK, worker_running


async def nothing() -> int:
    return 0


async def stepping(payload: Any) -> Any:
    for _ in range(payload["steps"]):
        await step("s", nothing)
    await wait_for_token(await create_token(timeout="1h", tags=[payload["tag"]]))
    return None


async def lines_to_replay(engine: Engine, run_id: str) -> tuple[int, float]:
    """Lines of Python this thread runs to check (replay) ``run_id``, and the seconds taken."""
    lines = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return trace

    started = time.perf_counter()
    sys.settrace(trace)
    try:
        [report] = await check_replay(engine, [run_id], tasks=[TaskDefinition(TASK, stepping)])
    finally:
        sys.settrace(None)
    seconds = time.perf_counter() - started
    assert report.ok, report.verdict
    return lines, seconds


async def test_resuming_1000_steps_costs_100_times_10_steps_not_10000(engine: Engine) -> None:
    sizes = (0, 10, 100, 1_000)
    async with worker_running(engine, stepping):
        runs = {n: await parked_with(engine, n) for n in sizes}
    cost = {n: await lines_to_replay(engine, runs[n]) for n in sizes}
    lines = {n: cost[n][0] - cost[0][0] for n in sizes}
    per_step = {n: lines[n] / n for n in sizes if n}
    print(
        f"\nreplay: lines per step {', '.join(f'{n:,}: {v:.0f}' for n, v in per_step.items())};"
        f" 1,000 steps cost {lines[1_000] / lines[10]:.0f}x 10 steps;"
        f" seconds (traced) {', '.join(f'{n:,}: {cost[n][1]:.4f}' for n in sizes)}"
    )
    growth = per_step[1_000] / per_step[100]
    assert growth < 1.25, f"a step costs {growth:.2f}x more to replay at 1,000 steps than at 100"


async def parked_with(engine: Engine, steps: int) -> str:
    """A run of ``stepping`` parked after ``steps`` journaled steps."""
    run = await engine.trigger(TASK, {"steps": steps, "tag": f"steps-{steps}"})
    await wait_for_status(engine, run.id, "WAITING", timeout=60)
    return run.id
