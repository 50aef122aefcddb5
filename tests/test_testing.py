"""engine.testing: a 24-hour approval and a 7-day sleep, tested in well under a second each."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import create_token, sleep, step, task, wait_for_tokens
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


@task("tt-two-approvals")
async def two_approvals(payload: None) -> list[object]:
    first, second = await create_token(), await create_token()
    group = await wait_for_tokens([first, second], timeout="1h")
    return [group.results[first.id].output, group.results[second.id].output]


async def test_waiting_tokens_lists_the_tokens_of_a_group_and_not_its_timer() -> None:
    async with TaskTestEnvironment([two_approvals]) as env:
        run = await env.trigger("tt-two-approvals")
        parked = await env.wait_until_waiting(run.id)
        assert len(parked.waiting_on) == 3  # the two tokens and the group's timer
        tokens = await env.waiting_tokens(run.id)
        made = {t.id for t in (await env.engine.tokens.list(status="WAITING")).data}
        assert len(made) == 2
        assert [t.id for t in tokens] == [w for w in parked.waiting_on if w in made]
        for n, token in enumerate(tokens):
            await env.complete(token.id, n)
        done = await env.wait_for_run(run.id)
    assert done.status == "COMPLETED" and sorted(done.output) == [0, 1]
