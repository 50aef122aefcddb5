"""engine.testing: a 24-hour approval and a 7-day sleep, tested in well under a second each."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import sleep, step, task
from engine.testing import TaskTestEnvironment
from tasks.approvals import approve_refund


@pytest.fixture(autouse=True)
def outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITPOINT_DEMO_OUTBOX", str(tmp_path / "outbox"))


async def test_an_unanswered_refund_is_declined_after_24_hours() -> None:
    started = time.monotonic()
    async with TaskTestEnvironment([approve_refund]) as env:
        run = await env.trigger("approve-refund", {"order_id": 1, "amount": 5})
        await env.wait_until_waiting(run.id)
        await env.advance("23h")
        assert (await env.engine.runs.retrieve(run.id)).status == "WAITING"  # not early
        await env.advance("1h")
        done = await env.wait_for_run(run.id)
    assert done.status == "COMPLETED"
    assert done.output["refunded"] is False and "timed out" in done.output["reason"]
    assert time.monotonic() - started < 10


async def test_an_approved_refund_is_paid() -> None:
    async with TaskTestEnvironment([approve_refund]) as env:
        run = await env.trigger("approve-refund", {"order_id": 2, "amount": 7.5})
        await env.wait_until_waiting(run.id)
        [token] = await env.waiting_tokens(run.id)
        await env.complete(token.id, {"approved": True, "reviewer": "ana"})
        done = await env.wait_for_run(run.id)
    assert done.output == {"refunded": True, "ticket": "T-2", "reviewer": "ana", "amount": 7.5}


def now() -> float:
    return time.time()


@task("tt-week")
async def weekly(payload: None) -> str:
    await step("start", now)
    await sleep("7d")
    return "a week later"


async def test_a_seven_day_sleep_fires_when_the_clock_moves() -> None:
    async with TaskTestEnvironment([weekly]) as env:
        run = await env.trigger("tt-week")
        await env.wait_until_waiting(run.id)
        await env.advance("6d")
        assert (await env.engine.runs.retrieve(run.id)).status == "WAITING"
        await env.advance("1d")
        assert (await env.wait_for_run(run.id)).output == "a week later"
