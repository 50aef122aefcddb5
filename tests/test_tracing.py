"""OpenTelemetry traces (``engine.tracing``): one trace from a traced request's trigger to
the run's end, across a wait and a second worker process; nothing imported when off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import tracing

ROOT = Path(__file__).resolve().parent.parent


def _scenario(db_url: str, folder: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WAITPOINT_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "tracing_scenario.py"), db_url, str(folder)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_one_trace_runs_from_the_trigger_request_across_a_wait_and_a_second_process(
    db_url: str, tmp_path: Path
) -> None:
    result = _scenario(db_url, tmp_path)
    assert result["output"] == {"ok": True}
    spans = result["spans"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    [trigger] = by_name["POST /api/v1/tasks/{task_id}/trigger"]
    [completing] = by_name["POST /api/v1/waitpoints/tokens/{token_id}/complete"]
    attempts = by_name["attempt traced-flow"]
    [first, slept] = [a for a in attempts if a["process"] == "scenario"]  # in the order ended
    [second] = [a for a in attempts if a["process"] == "worker"]
    [run] = by_name["run traced-flow"]
    [opened] = by_name["step open-ticket"]
    [closed] = by_name["step close-ticket"]
    [wait] = by_name["wait token"]
    [nap] = by_name["wait sleep"]

    trace_id = trigger["trace"]  # one trace, both processes, from the trigger request on
    for span in (first, slept, second, run, opened, closed, wait, nap):
        assert span["trace"] == trace_id, span["name"]
    for attempt in (first, slept, second):
        assert attempt["parent"] == trigger["span"]
    assert nap["parent"] == slept["span"] and nap["attributes"]["waitpoint.wait"] == "sleep"
    assert run["parent"] == trigger["span"]  # linked to every attempt, in order
    assert run["links"] == [first["span"], slept["span"], second["span"]]
    assert opened["parent"] == first["span"]
    assert closed["parent"] == second["span"] and wait["parent"] == second["span"]
    assert first["attributes"]["waitpoint.run_id"] == result["run"]
    assert second["attributes"]["waitpoint.resumed"] is True
    assert run["attributes"]["waitpoint.status"] == "COMPLETED"
    # the completing request is its own trace; the resumed attempt and its wait link to it
    assert completing["trace"] != trace_id
    assert second["links"] == [completing["span"]] and wait["links"] == [completing["span"]]
    assert wait["attributes"]["waitpoint.completed_via"] == "api"


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off(tmp_path: Path) -> None:
    script = """
import asyncio, sys
from engine import Engine, Worker, task

@task("plain")
async def plain(payload):
    return 1

async def main():
    async with Engine("sqlite:///FOLDER/e.db") as engine:
        worker = Worker(engine, {"plain": plain}, poll_seconds=0.05)
        running = asyncio.create_task(worker.run())
        run = await engine.trigger("plain")
        assert (await engine.wait_for_run(run.id, timeout=20)).output == 1
        worker.stop()
        await running
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    print("loaded:", loaded)

asyncio.run(main())
""".replace("FOLDER", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WAITPOINT_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout


def test_otel_settings_without_the_extra_leave_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    tracing.reset()
    try:
        assert tracing.tracer() is None
        assert tracing.traceparent("trigger x") is None
    finally:
        tracing.reset()


def test_otel_traces_exporter_none_turns_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    tracing.reset()
    try:
        assert not tracing._asked_by_environment()
    finally:
        tracing.reset()
