"""The pictures on the dashboard's pages, over HTTP: a run's waterfall (an SVG with a bar per
attempt piece, step, wait and child run), the runs page's chart of runs finished per minute,
and the inbox's count of waiting tokens that expire soon.

A worker in the test's event loop runs a task that steps, waits on a token, fails a step
once (retried after a short back-off) and waits on a child run.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from engine import Engine, Retry, Worker, create_token, step, task, wait_for_token
from tests.conftest import wait_for_status

TRIED: Counter[str] = Counter()


def charge(order: str) -> str:
    TRIED[order] += 1
    if TRIED[order] == 1:
        raise ConnectionError("payment gateway timed out")
    return f"ch_{order}"


@task("ui-picture-pack")
async def pack(payload: dict[str, Any]) -> dict[str, Any]:
    await step("pick", lambda: "box")
    return {"packed": True}


@task(
    "ui-picture-order",
    retry=Retry(max_attempts=2, min_delay=timedelta(milliseconds=50), jitter=False),
)
async def order(payload: dict[str, Any]) -> dict[str, Any]:
    await step("reserve", lambda: 1)
    token = await create_token(timeout="1h", tags=[payload["order"]])
    await wait_for_token(token)
    await step("charge", charge, payload["order"])
    await pack.trigger_and_wait({})
    return {"done": True}


@pytest.fixture
async def worker(ui_engine: Engine) -> AsyncIterator[Worker]:
    running = Worker(ui_engine, {order.id: order, pack.id: pack}, poll_seconds=0.05)
    runner = asyncio.create_task(running.run())
    await asyncio.wait_for(running.started.wait(), 5)
    yield running
    running.stop(graceful=False)
    await asyncio.wait_for(runner, 10)


def svg_of(html: str, css_class: str) -> str:
    found = re.search(rf'<svg class="{css_class}".*?</svg>', html, re.S)
    assert found, f"no svg.{css_class} on the page"
    return found.group(0)


def rows_of(svg: str) -> list[tuple[str, int]]:
    """``(kind, number of bars)`` for each row of a waterfall, top down."""
    rows = re.findall(r'<g class="wf-row wf-(\w+)[^"]*".*?</g>', svg, re.S)
    groups = re.findall(r'<g class="wf-row.*?</g>', svg, re.S)
    return [(kind, group.count("<rect")) for kind, group in zip(rows, groups, strict=True)]


async def test_a_run_page_draws_its_waterfall_above_the_table(
    ui_engine: Engine, dashboard: httpx.AsyncClient, worker: Worker
) -> None:
    run = await ui_engine.trigger(order.id, {"order": "o-1"})
    await wait_for_status(ui_engine, run.id, "WAITING", timeout=20)
    [token] = (await ui_engine.tokens.list(status="WAITING", tags=["o-1"])).data
    await ui_engine.tokens.complete(token.id, {"ok": True})
    await wait_for_status(ui_engine, run.id, "COMPLETED", timeout=20)

    html = (await dashboard.get(f"/ui/runs/{run.id}")).text
    assert html.index('<svg class="waterfall"') < html.index('<table class="list timeline"')
    svg = svg_of(html, "waterfall")
    assert 'role="img"' in svg
    label = unescape(re.search(r'aria-label="([^"]+)"', svg).group(1))  # type: ignore[union-attr]
    assert label.endswith("2 attempts, 3 steps (1 failed), 2 waits, 1 child run.")
    rows = rows_of(svg)
    # an attempt is drawn in pieces (until it parks, from its resume): two at least each
    assert [kind for kind, _ in rows] == [
        "attempt",
        "step",
        "wait",
        "step",
        "attempt",
        "step",
        "wait",
        "child",
    ]
    assert all(bars >= 2 for kind, bars in rows if kind == "attempt")
    assert all(bars == 1 for kind, bars in rows if kind != "attempt")
    assert svg.count("<rect") == svg.count('<rect class="wf-bar"')
    assert all("<title>" in bar for bar in re.findall(r"<rect.*?</rect>", svg, re.S))
    [child] = (await ui_engine.runs.retrieve(run.id)).children
    assert f'<a href="/ui/runs/{child}">' in svg
    assert f'<a href="/ui/tokens/{token.id}">' in svg
    assert "completed via python" in svg
    assert "ConnectionError: payment gateway timed out" in svg


async def test_a_run_not_started_has_no_picture(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    run = await ui_engine.trigger(order.id, {"order": "o-2"}, delay="1h")
    html = (await dashboard.get(f"/ui/runs/{run.id}")).text
    assert "<svg" not in html and 'class="list timeline"' in html


async def test_the_runs_page_charts_the_runs_finished_in_the_last_hour(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    for n in range(3):
        made = await ui_engine.trigger(order.id, {"order": f"c-{n}"}, delay="1h")
        await ui_engine.runs.cancel(made.id)
    await ui_engine.trigger(order.id, {"order": "c-3"}, delay="1h")  # not finished

    html = (await dashboard.get("/ui/runs")).text
    svg = svg_of(html, "chart")
    assert 'role="img"' in svg
    assert re.findall(r'data-status="(\w+)" data-count="(\d+)"', svg) == [("CANCELED", "3")]
    assert "3 canceled" in unescape(html)
    assert "Counted from the 3 finished runs created in the last 24 hours." in html
    # older pages are for looking back: no chart
    older = await dashboard.get("/ui/runs", params={"after": "x"})
    assert older.status_code == 200, older.text
    assert '<svg class="chart"' not in older.text


async def test_the_inbox_counts_waiting_tokens_that_expire_soon(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    for timeout in ("10m", "50m", "3h", "30h"):
        await ui_engine.tokens.create(timeout=timeout, tags=["soon"])
    await ui_engine.tokens.create(tags=["soon"])  # never expires
    html = (await dashboard.get("/ui/tokens")).text
    text = re.sub(r"<[^>]+>", "", html)
    assert "Expiring within the hour: 2; within 24 hours: 3." in text
