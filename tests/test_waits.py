"""Durable sleeps: DATETIME waitpoints on the same block/complete/replay path as tokens."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import Engine, RunFailedError, Worker, sleep, sleep_until, step, task
from engine.errors import ValidationError

from .conftest import StartWorker, wait_for_status


def now() -> float:
    return time.time()


@task("wt-sleep")
async def sleeper(payload: dict[str, Any]) -> dict[str, float]:
    before = await step("before", now)
    await sleep(payload["duration"])
    after = await step("after", now)
    return {"before": before, "after": after}


async def test_sleep_parks_the_run_and_never_wakes_early(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([sleeper])
    run = await engine.trigger("wt-sleep", {"duration": "1s"})
    await wait_for_status(engine, run.id, "WAITING")
    waiting = await engine.runs.retrieve(run.id)
    assert len(waiting.waiting_on) == 1
    assert (await engine.tokens.list()).data == []  # a sleep is not a token
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["after"] - done.output["before"] >= 1.0
    assert done.attempt_count == 1


async def test_sleep_survives_the_worker_going_away(engine: Engine) -> None:
    first = Worker(engine, {"wt-sleep": sleeper}, poll_seconds=0.1)
    running = asyncio.create_task(first.run())
    run = await engine.trigger("wt-sleep", {"duration": "1s"})
    await wait_for_status(engine, run.id, "WAITING")
    first.stop(graceful=False)
    await running
    await asyncio.sleep(1.2)  # the deadline passes while no worker runs
    assert (await engine.runs.retrieve(run.id)).status == "WAITING"
    second = Worker(engine, {"wt-sleep": sleeper}, poll_seconds=0.1)
    running = asyncio.create_task(second.run())
    try:
        done = await engine.wait_for_run(run.id, timeout=15)
    finally:
        second.stop(graceful=False)
        await running
    assert done.output["after"] - done.output["before"] >= 1.0


@task("wt-sleep-until")
async def sleep_until_task(payload: dict[str, str]) -> str:
    await sleep_until(datetime.fromisoformat(payload["when"]))
    return "woke"


async def test_sleep_until_a_past_moment_returns_at_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([sleep_until_task])
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run = await engine.trigger("wt-sleep-until", {"when": past})
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == "woke"
    timeline = await engine.runs.timeline(run.id)
    assert [e.kind for e in timeline if e.key is not None] == ["sleep"]
    assert "waiting" not in [e.kind for e in timeline]  # it never parked


@task("wt-sleep-naive")
async def naive_sleeper(payload: None) -> None:
    await sleep_until(datetime(2030, 1, 1))  # no timezone: refused


async def test_sleep_until_refuses_a_naive_datetime(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([naive_sleeper])
    run = await engine.trigger("wt-sleep-naive")
    with pytest.raises(RunFailedError, match="timezone-aware"):
        await engine.wait_for_run(run.id, timeout=10)
    failed = await engine.runs.retrieve(run.id)
    assert failed.error is not None and failed.error.name == "engine.errors.ValidationError"


async def test_sleep_outside_a_run_says_so() -> None:
    from engine import NotInRunError

    with pytest.raises(NotInRunError):
        await sleep("1s")
    with pytest.raises(ValidationError):
        await sleep_until("tomorrow")  # type: ignore[arg-type]
