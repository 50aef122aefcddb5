"""Every state change of a run is a log event with the run, task and attempt bound."""

from __future__ import annotations

import asyncio

import structlog
from structlog.testing import capture_logs

from engine import Engine, create_token, task, wait_for_token

from .conftest import StartWorker, wait_for_status


@task("logs-flow")
async def logged_flow(payload: None) -> str:
    await wait_for_token(await create_token())
    return "done"


async def test_run_state_changes_are_logged_with_run_task_and_attempt(
    engine: Engine, start_worker: StartWorker
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        await start_worker([logged_flow])
        run = await engine.trigger("logs-flow")
        await wait_for_status(engine, run.id, "WAITING")
        token_id = (await engine.runs.retrieve(run.id)).waiting_on[0]
        await engine.tokens.complete(token_id, {"ok": 1})
        await engine.wait_for_run(run.id, timeout=10)
        # the worker logs the end after the commit that readers saw: wait for the line too
        for _ in range(500):
            if any(e["event"] == "run.completed" for e in events):
                break
            await asyncio.sleep(0.01)
    names = [e["event"] for e in events if e.get("run_id") == run.id]
    assert names == [
        "run.triggered",
        "run.started",
        "token.created",
        "run.suspended",
        "run.waiting",
        "run.started",
        "run.completed",
    ]
    for event in events:
        if event["event"] in {"run.started", "run.waiting", "run.completed"}:
            assert event["task"] == "logs-flow" and event["attempt"] == 1
    completed = [e for e in events if e["event"] == "token.completed"]
    assert completed == [
        {
            "event": "token.completed",
            "log_level": "info",
            "token_id": token_id,
            "applied": True,
            "via": "python",
        }
    ]
    assert not any("callback" in str(value) for e in events for value in e.values())
