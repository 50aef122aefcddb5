"""Item 6: replay, what journaled steps add to a resume.

Runs of ``bench-replay`` journal 0, 10, 100 (and 1,000) steps and park; their tokens are then
completed one at a time on an in-process worker. The figure is the time from the completion to
the task's first line after the wait, less the same time for a run with no steps.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from harness import IN_PROCESS, Context, at_least, read_side, say, trigger_many, wait_for
from report import Results

from engine import Engine


async def bench_replay(ctx: Context, steps_list: tuple[int, ...], samples: int) -> dict[str, Any]:
    side = ctx.side_file("replay")
    out: dict[str, Any] = {}
    async with ctx.database("replay") as db:
        async with Engine(db.url) as engine, ctx.in_process_worker(engine):
            base = 0
            for steps in steps_list:
                payloads = [{"i": base + k, "steps": steps} for k in range(samples)]
                run_ids = await trigger_many(engine, "bench-replay", payloads)
                among, ids = db.reader.ids_in("id", run_ids)
                sql = f"SELECT count(*) FROM runs WHERE status = 'WAITING' AND {among}"
                await wait_for(
                    lambda sql=sql, ids=ids, k=samples: at_least(db, sql, k, ids),
                    120 + steps * samples / 100,
                    f"replay runs with {steps} steps parked",
                )
                first_line: list[float] = []
                to_completed: list[float] = []
                for k, run_id in enumerate(run_ids):
                    tid = await db.reader.value(
                        "SELECT waitpoint_id FROM run_waits WHERE run_id = ?", run_id
                    )
                    await engine.tokens.complete(tid, {"ok": True})
                    t0 = time.time()
                    await engine.wait_for_run(run_id, timeout=60)  # woken by the worker's commit
                    t1 = time.time()
                    stamp = read_side(side)[base + k]
                    first_line.append((stamp - t0) * 1000)
                    to_completed.append((t1 - t0) * 1000)
                out[steps] = {
                    "first_line_ms": statistics.median(first_line),
                    "completed_ms": statistics.median(to_completed),
                }
                base += samples
    zero = out[steps_list[0]]
    for steps in steps_list:
        out[steps]["replay_ms"] = out[steps]["first_line_ms"] - zero["first_line_ms"]
        out[steps]["replay_completed_ms"] = out[steps]["completed_ms"] - zero["completed_ms"]
    return out


async def run(ctx: Context, results: Results) -> None:
    m = await bench_replay(ctx, ctx.sizes.replay_steps, ctx.sizes.replay_samples)
    results.add_raw("replay", m)
    for steps in ctx.sizes.replay_steps[1:]:
        row = results.row(
            f"6.{steps}",
            label=f"replay of {steps:,} journaled steps",
            metric="extra resume cost vs 0 steps",
            worker=IN_PROCESS,
            unit="ms",
        )
        row.samples.append(m[steps]["replay_ms"])
    say("  6 replay: " + ", ".join(f"{k}: {v['replay_ms']:.1f} ms" for k, v in m.items()))


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    if "replay" not in raw:
        return []
    parts = []
    for steps in ctx.sizes.replay_steps:
        firsts = [m[steps]["first_line_ms"] for m in raw["replay"]]
        dones = [m[steps]["completed_ms"] for m in raw["replay"]]
        parts.append(
            f"{steps}: first line {statistics.median(firsts):.1f} ms,"
            f" COMPLETED {statistics.median(dones):.1f} ms"
        )
    return ["replay, completion -> (in-process worker): " + "; ".join(parts) + "."]
