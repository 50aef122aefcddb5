"""Every state change of a run is a log event with the run, task and attempt bound."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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


LIBRARY_USER = """
import asyncio, sys
from engine import Engine, Worker, create_token, task, wait_for_token

@task("quiet-flow")
async def quiet_flow(payload: None) -> str:
    await wait_for_token(await create_token(timeout="1h"))
    return "done"

async def main() -> None:
    async with Engine("sqlite:///engine.db") as engine:
        worker = Worker(engine)
        running = asyncio.create_task(worker.run())
        run = await engine.trigger("quiet-flow")
        while not (await engine.runs.retrieve(run.id)).waiting_on:
            await asyncio.sleep(0.02)
        token_id = (await engine.runs.retrieve(run.id)).waiting_on[0]
        await engine.tokens.complete(token_id, {"ok": 1})
        done = await engine.wait_for_run(run.id, timeout=20)
        worker.stop()
        await running
        print(done.status.value)

SETUP
asyncio.run(main())
"""


def _library_user(tmp_path: Path, setup: str) -> subprocess.CompletedProcess[str]:
    """A plain script that uses the engine as a library: a worker, a run, a token completed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
    return subprocess.run(
        [sys.executable, "-c", LIBRARY_USER.replace("SETUP", setup)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_library_logs_nothing_unless_asked(tmp_path: Path) -> None:
    done = _library_user(tmp_path, "")
    assert (done.returncode, done.stdout, done.stderr) == (0, "COMPLETED\n", "")


def test_the_readme_line_shows_the_events_through_the_standard_logging(tmp_path: Path) -> None:
    done = _library_user(tmp_path, "import logging; logging.basicConfig(level=logging.INFO)")
    assert (done.returncode, done.stdout) == (0, "COMPLETED\n"), done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("INFO:engine.runtime:run.started run_id=") for line in lines)
    assert any("run.completed" in line and "task='quiet-flow'" in line for line in lines)
    assert any(line.startswith("INFO:engine.completion:token.completed") for line in lines)


def test_a_structlog_configured_anew_is_followed_at_the_next_event() -> None:
    """The engine's loggers keep structlog's logger between events (building one per event
    cost 10 us); a new configuration, a new level or ``capture_logs`` must still be followed
    at the very next event, and a level filtered out prints nothing."""
    from engine.logs import bind, get_logger, unbind

    log = get_logger("engine.test_cache")
    first: list[dict[str, object]] = []
    second: list[dict[str, object]] = []

    def keep(into: list[dict[str, object]]) -> structlog.typing.Processor:
        def processor(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
            into.append(dict(event))
            raise structlog.DropEvent

        return processor

    old = structlog.get_config()
    try:
        structlog.configure(
            processors=[keep(first)], wrapper_class=structlog.make_filtering_bound_logger(20)
        )
        bound = bind(run_id="run_1")
        try:
            log.info("one", n=1)
            log.debug("filtered")
            structlog.configure(processors=[keep(second)])
            log.info("two", n=2)
            with capture_logs() as captured:
                log.info("three", n=3)
            log.warning("four")
            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
            log.info("filtered too")
            log.error("five")
        finally:
            unbind(bound)
    finally:
        structlog.configure(**old)
    assert [e["event"] for e in first] == ["one"]
    assert first[0]["run_id"] == "run_1"
    assert [e["event"] for e in captured] == ["three"]
    assert [e["event"] for e in second] == ["two", "four", "five"]
