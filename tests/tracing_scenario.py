"""A traced run across two processes, for tests/test_tracing.py (run as a script).

    python tests/tracing_scenario.py DATABASE_URL TASKS_FOLDER

This process sets an OpenTelemetry provider with an in-memory exporter and serves the API
in-process: a traced HTTP request triggers ``traced-flow``, a worker here runs it (it sleeps,
resumes and waits for a token) and is stopped; a second traced request completes the token;
then a second worker *process* (``waitpoint worker``, exporting its spans to its stdout with
``OTEL_TRACES_EXPORTER=console``) resumes the run and finishes it. Prints one JSON object:
every span of both processes (name, trace and span ids, parent, links, attributes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "wp_test_" + "t" * 40
TASKS = """
from datetime import timedelta

from engine import create_token, sleep, step, task, update_metadata, wait_for_token


@task("traced-flow")
async def traced_flow(payload):
    ticket = await step("open-ticket", lambda: "T-1")
    await sleep(timedelta(milliseconds=200))
    token = await create_token(timeout="1h")
    await update_metadata({"token": token.id})
    result = await wait_for_token(token)
    await step("close-ticket", lambda: ticket)
    return result.output
"""


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "name": span.name,
        "trace": f"{context.trace_id:032x}",
        "span": f"{context.span_id:016x}",
        "parent": f"{span.parent.span_id:016x}" if span.parent else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}),
        "process": "scenario",
    }


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed (one indented JSON object each)."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while (start := text.find("{", at)) != -1:
        value, at = decoder.raw_decode(text, start)
        context = value["context"]
        found.append(
            {
                "name": value["name"],
                "trace": context["trace_id"].removeprefix("0x"),
                "span": context["span_id"].removeprefix("0x"),
                "parent": (value.get("parent_id") or "").removeprefix("0x") or None,
                "links": [
                    link["context"]["span_id"].removeprefix("0x") for link in value.get("links", [])
                ],
                "attributes": value.get("attributes", {}),
                "process": "worker",
            }
        )
    return found


async def main(database_url: str, folder: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from engine import Engine, Settings, Worker
    from engine.api import create_app
    from engine.registry import load_tasks

    sys.path.insert(0, folder)
    settings = Settings(database_url=database_url, secret_key=KEY, api_url=None)
    async with Engine(settings=settings) as engine:
        app = create_app(engine, secret_key=KEY, settings=settings)
        auth = {"Authorization": f"Bearer {KEY}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            worker = Worker(engine, load_tasks("traced_tasks"), poll_seconds=0.05)
            running = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.started.wait(), 10)
            reply = await api.post("/api/v1/tasks/traced-flow/trigger", json={}, headers=auth)
            run_id = reply.json()["id"]
            while "token" not in ((run := await engine.runs.retrieve(run_id)).metadata or {}):
                if run.is_finished:
                    raise SystemExit(f"the run ended {run.status}: {run.error}")
                await asyncio.sleep(0.02)
            while (run := await engine.runs.retrieve(run_id)).status != "WAITING":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            worker.stop()
            await running
            token_id = (run.metadata or {})["token"]
            await api.post(
                f"/api/v1/waitpoints/tokens/{token_id}/complete",
                json={"data": {"ok": True}},
                headers=auth,
            )
        env = {
            **os.environ,
            "WAITPOINT_DATABASE_URL": database_url,
            "WAITPOINT_SECRET_KEY": KEY,
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "second-worker",
            "PYTHONPATH": os.pathsep.join([str(ROOT), folder]),
        }
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "worker",
            "--tasks",
            "traced_tasks",
            env=env,
            cwd=folder,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            finished = await engine.wait_for_run(run_id, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(second.communicate(), 60)
    spans = [_span(s) for s in exporter.get_finished_spans()] + _console_spans(out.decode())
    print(json.dumps({"run": run_id, "output": finished.output, "spans": spans}))


if __name__ == "__main__":
    Path(sys.argv[2], "traced_tasks.py").write_text(TASKS)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
