"""Server-sent events and ``engine.runs.subscribe``: follow a run, the token list, the run list.

The run streams end by themselves once the run finished, so they run over httpx's in-process
transport; the token and run list streams never end, so they are read from a real uvicorn
server in this event loop, as is ``subscribe`` over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from engine import Engine, RunNotFoundError, create_token, task, wait_for_token
from engine.api import create_app, streams
from engine.api.auth import Auth
from engine.models import RunStatus
from tests.conftest import StartWorker, wait_for_status

from .conftest import KEY, client_for

AUTH = {"Authorization": f"Bearer {KEY}"}


@task("ui-stream-flow")
async def stream_flow(payload: dict[str, Any]) -> dict[str, Any]:
    token = await create_token(timeout="1h", tags=["ui-stream", payload["tag"]])
    result = await wait_for_token(token)
    return {"answer": result.output}


def parse_events(text: str) -> list[tuple[str, Any]]:
    """``(event, JSON data)`` for each event in an SSE body (comments and retry skipped)."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def waiting_token(engine: Engine, tag: str) -> str:
    for _ in range(500):
        page = await engine.tokens.list(status="WAITING", tags=[tag])
        if page.data:
            return page.data[0].id
        await asyncio.sleep(0.02)
    raise AssertionError(f"no waiting token tagged {tag}")


async def test_a_run_stream_sends_each_change_and_ends_with_the_finished_run(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([stream_flow])
    run = await engine.trigger("ui-stream-flow", {"tag": "a"})
    async with client_for(engine) as client:
        reading = asyncio.create_task(client.get(f"/api/v1/runs/{run.id}/stream", headers=AUTH))
        await wait_for_status(engine, run.id, "WAITING")
        await engine.tokens.complete(await waiting_token(engine, "a"), {"ok": 1})
        answer = await asyncio.wait_for(reading, 20)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text.startswith("retry: ")
    events = parse_events(answer.text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"run"}
    statuses = [data["status"] for kind, data in events if kind == "run"]
    assert statuses[0] in ("QUEUED", "EXECUTING", "WAITING")  # as it was when the stream began
    assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1
    bodies = [json.dumps(data, sort_keys=True) for kind, data in events if kind == "run"]
    assert all(a != b for a, b in itertools.pairwise(bodies))  # only changes
    assert events[-2][1]["output"] == {"answer": {"ok": 1}}
    assert events[-2][1]["isCompleted"] is True


async def test_an_unknown_run_is_404_before_any_stream_starts(ui_engine: Engine) -> None:
    async with client_for(ui_engine) as client:
        missing = await client.get("/api/v1/runs/run_missing/stream", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Run not found"}


async def test_who_may_follow_a_run(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker([stream_flow])
    run = await engine.trigger("ui-stream-flow", {"tag": "who"})
    await engine.runs.cancel(run.id)  # a finished run: every allowed stream ends at once
    path = f"/api/v1/runs/{run.id}/stream"
    own = Auth(KEY).public_token([f"read:runs:{run.id}"])
    other = Auth(KEY).public_token(["read:runs:run_other"])
    async with client_for(engine) as client:
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
        refused = await client.get(path, headers={"Authorization": f"Bearer {other}"})
        assert refused.status_code == 403
        allowed = await client.get(path, headers={"Authorization": f"Bearer {own}"})
        assert allowed.status_code == 200
        assert [k for k, _ in parse_events(allowed.text)] == ["run", "end"]
        assert (await client.get("/api/v1/waitpoints/tokens/stream")).status_code == 401
        listed = await client.get(
            "/api/v1/waitpoints/tokens/stream", headers={"Authorization": f"Bearer {own}"}
        )
        assert listed.status_code == 403
        await client.post("/ui/login", data={"key": KEY})  # the dashboard's session cookie
        assert (await client.get(path)).status_code == 200


async def test_bad_stream_filters_are_400(ui_engine: Engine) -> None:
    async with client_for(ui_engine) as client:
        for path in (
            "/api/v1/waitpoints/tokens/stream?filter[status]=NOPE",
            "/api/v1/waitpoints/tokens/stream?page[size]=0",
            "/api/v1/runs/stream?filter[status]=SLEEPY",
        ):
            answer = await client.get(path, headers=AUTH)
            assert answer.status_code == 400, path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def served(engine: Engine) -> AsyncIterator[str]:
    """The app on a real uvicorn server in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(engine, secret_key=KEY),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn offers no event for "listening"
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


async def next_event(lines: AsyncIterator[str]) -> tuple[str, Any]:
    """The next event of a stream (``keep-alive`` for a comment)."""
    event = ""
    async for line in lines:
        if line.startswith(": keep-alive"):
            return "keep-alive", None
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return event, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


async def test_the_token_list_stream_follows_new_and_completed_tokens(
    engine: Engine, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "KEEP_ALIVE_SECONDS", 0.3)
    async with (
        httpx.AsyncClient(base_url=served, headers=AUTH, timeout=10) as client,
        client.stream("GET", "/api/v1/waitpoints/tokens/stream?filter[tags]=inbox") as stream,
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        assert await next_event(lines) == ("tokens", {"data": [], "pagination": {}})
        token = await engine.tokens.create(timeout="1h", tags=["inbox"])
        await engine.tokens.create(tags=["elsewhere"])  # not in this filter
        kind, body = await asyncio.wait_for(next_event(lines), 10)
        while kind == "keep-alive":
            kind, body = await asyncio.wait_for(next_event(lines), 10)
        assert [(t["id"], t["status"]) for t in body["data"]] == [(token.id, "WAITING")]
        await engine.tokens.complete(token.id, {"approved": True})
        kind, body = await asyncio.wait_for(next_event(lines), 10)
        while kind == "keep-alive":
            kind, body = await asyncio.wait_for(next_event(lines), 10)
        assert body["data"][0]["status"] == "COMPLETED"
        assert await asyncio.wait_for(next_event(lines), 5) == ("keep-alive", None)


async def test_the_run_list_stream_follows_runs(
    engine: Engine, served: str, start_worker: StartWorker
) -> None:
    await start_worker([stream_flow])
    async with (
        httpx.AsyncClient(base_url=served, headers=AUTH, timeout=10) as client,
        client.stream("GET", "/api/v1/runs/stream?filter[taskIdentifier]=ui-stream-flow") as stream,
    ):
        lines = stream.aiter_lines()
        assert (await next_event(lines))[1]["data"] == []
        run = await engine.trigger("ui-stream-flow", {"tag": "list"})
        seen: set[str] = set()
        while "WAITING" not in seen:
            kind, body = await asyncio.wait_for(next_event(lines), 10)
            if kind == "runs":
                assert [r["id"] for r in body["data"]] == [run.id]
                seen.add(body["data"][0]["status"])


async def test_subscribe_follows_a_run_until_it_finishes(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([stream_flow])
    run = await engine.trigger("ui-stream-flow", {"tag": "sub"})
    statuses: list[RunStatus] = []

    async def follow() -> None:
        async for seen in engine.runs.subscribe(run.id):
            statuses.append(seen.status)

    following = asyncio.create_task(follow())
    await engine.tokens.complete(await waiting_token(engine, "sub"), "yes")
    await asyncio.wait_for(following, 20)
    assert statuses[-1] is RunStatus.COMPLETED
    assert RunStatus.COMPLETED not in statuses[:-1]
    with pytest.raises(RunNotFoundError):
        async for _ in engine.runs.subscribe("run_missing"):
            pass


async def test_subscribe_over_http_follows_a_run_too(
    engine: Engine, served: str, start_worker: StartWorker
) -> None:
    await start_worker([stream_flow])
    async with Engine(served, api_key=KEY) as remote:
        run = await remote.trigger("ui-stream-flow", {"tag": "remote"})
        seen: list[RunStatus] = []

        async def follow() -> None:
            async for update in remote.runs.subscribe(run.id):
                seen.append(update.status)
                if update.status is RunStatus.WAITING and seen.count(RunStatus.WAITING) == 1:
                    await remote.tokens.complete(await waiting_token(engine, "remote"), 1)

        await asyncio.wait_for(follow(), 20)
        assert seen[-1] is RunStatus.COMPLETED
        assert (await remote.runs.retrieve(run.id)).output == {"answer": 1}
        with pytest.raises(RunNotFoundError):
            async for _ in remote.runs.subscribe("run_missing"):
                pass
        link = await remote.tokens.approval_link(await _new_token(remote), "1h")
        assert link.startswith(f"{served}/ui/approve/waitpoint_")  # where the server was asked


async def _new_token(remote: Engine) -> str:
    return (await remote.tokens.create(timeout="1h")).id


async def test_a_stream_stops_reading_once_its_client_goes_away(
    engine: Engine, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "KEEP_ALIVE_SECONDS", 0.1)  # re-read every ~0.1 s
    reads = 0
    real_list = engine.tokens.list

    async def counted(**options: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_list(**options)

    monkeypatch.setattr(engine.tokens, "list", counted)
    async with (
        httpx.AsyncClient(base_url=served, headers=AUTH, timeout=10) as client,
        client.stream("GET", "/api/v1/waitpoints/tokens/stream") as stream,
    ):
        lines = stream.aiter_lines()
        await next_event(lines)
        assert await asyncio.wait_for(next_event(lines), 5) == ("keep-alive", None)
    await asyncio.sleep(0.5)  # the server notices the closed connection
    after_close = reads
    await asyncio.sleep(0.6)
    assert reads == after_close
