"""Live-update streams scale and are bounded: shared watchers, capped slots, lean list events.

Many open streams must cost one query per change, not one each (the issue: 200 token-list
streams made 100 token creations take minutes); one client may not hold every connection;
a stream whose client leaves gives everything back. The timing test and the caps drive a real
``waitpoint serve`` (a subprocess on a free loopback port); the others run the app on uvicorn
in this event loop, so they can see its watchers. Both backends wherever a database is read.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from engine import Engine, create_token, task, wait_for_token
from engine.api import create_app
from tests.conftest import StartWorker, wait_for_status
from tests.test_api_server import free_port

from .conftest import TOKENS, ServeProcess

if TYPE_CHECKING:
    from engine.api.watchers import StreamHub

CHROMIUM = "/usr/bin/chromium"
KEY = "sk_test_streams_0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN_STREAM = f"{TOKENS}/stream"

STREAMS = 50
CREATIONS = 20
BUDGET_SECONDS = 2.0
"""The issue's target for 50 streams and 20 creations. On a loaded 2-core machine, a stream
per reader took 3.9-13.8 s on SQLite and 6.6-22.8 s on PostgreSQL; shared watchers took
0.05-0.2 s and 0.3-0.9 s (delivery to the last stream included)."""
ANSWERED = 25
ANSWER_BYTES = 10_000
"""The inbox the streams show already holds a page of answered tokens (a decision with a
10 KB note or attachment list): the steady state of a real inbox, not an empty one."""


@task("security-stream-wait")
async def stream_wait(payload: dict[str, Any]) -> dict[str, Any]:
    token = await create_token(timeout="1h", tags=["security-stream", payload["tag"]])
    result = await wait_for_token(token)
    return {"answer": result.output, "echo": payload}


# --- a real `waitpoint serve`, on either backend ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServeProcess]:
    """``waitpoint serve`` on either backend, allowing the 50 streams of one client."""
    env = {"WAITPOINT_MAX_STREAMS": "100", "WAITPOINT_MAX_STREAMS_PER_CLIENT": "60"}
    if request.param == "postgres":
        env["WAITPOINT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    process = ServeProcess(tmp_path, **env)
    try:
        process.start()
        yield process
    finally:
        process.stop()


async def _watch(
    client: httpx.AsyncClient, path: str, opened: asyncio.Event, seen: dict[str, float]
) -> None:
    """Read one stream; note when each token id first arrived on it."""
    async with client.stream("GET", path) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                opened.set()
                now = time.monotonic()
                for token_id in _ids(line):
                    seen.setdefault(token_id, now)


def _ids(line: str) -> list[str]:
    return [part.split('"', 1)[0] for part in line.split('"id":"')[1:]]


async def test_fifty_token_list_streams_keep_twenty_creations_under_two_seconds(
    serve: ServeProcess,
) -> None:
    """20 tokens created one after another while 50 streams follow the inbox: the creations
    and the last token's arrival on every stream take under 2 s in all."""
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    path = f"{TOKEN_STREAM}?filter[tags]=scale"
    async with httpx.AsyncClient(
        base_url=serve.base_url, headers=serve.auth, limits=limits, timeout=60.0
    ) as client:
        for _ in range(ANSWERED):
            token_id = (await client.post(TOKENS, json={"tags": ["scale"]})).json()["id"]
            answer = {"approved": True, "note": "x" * ANSWER_BYTES}
            done = await client.post(f"{TOKENS}/{token_id}/complete", json={"data": answer})
            assert done.status_code == 200, done.text
        opened = [asyncio.Event() for _ in range(STREAMS)]
        seen: list[dict[str, float]] = [{} for _ in range(STREAMS)]
        readers = [
            asyncio.create_task(_watch(client, path, o, s))
            for o, s in zip(opened, seen, strict=True)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
            started = time.monotonic()
            created = []
            for _ in range(CREATIONS):
                answer = await client.post(TOKENS, json={"tags": ["scale"], "timeout": "1h"})
                assert answer.status_code == 200, answer.text
                created.append(answer.json()["id"])
            creations = time.monotonic() - started
            everywhere = lambda: all(created[-1] in s for s in seen)  # noqa: E731
            await until(everywhere, "some streams never showed the last token", 60)
            shown = [s[created[-1]] - started for s in seen if created[-1] in s]
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    print(
        f"\n{STREAMS} streams: {CREATIONS} creations took {creations:.2f} s; the last token"
        f" reached {len(shown)} streams, the last of them {max(shown, default=-1):.2f} s"
        " after the first creation"
    )
    assert creations < BUDGET_SECONDS, f"{CREATIONS} creations took {creations:.2f} s"
    assert max(shown) < BUDGET_SECONDS, f"the last token reached every stream {max(shown):.2f} s"


async def _refused(client: httpx.AsyncClient, path: str = TOKEN_STREAM) -> httpx.Response:
    """The answer to a stream that should be refused (a failure, not a hang, if it opens)."""
    async with client.stream("GET", path) as stream:
        assert stream.status_code != 200, "a stream over the cap was accepted"
        await stream.aread()
        return stream


async def _open_stream(stack: AsyncExitStack, client: httpx.AsyncClient) -> AsyncIterator[str]:
    """Open a token-list stream and read its first event, so the server counts it.

    Keep what it returns: a line iterator dropped half-read closes its connection.
    """
    stream = await stack.enter_async_context(client.stream("GET", TOKEN_STREAM))
    assert stream.status_code == 200, await stream.aread()
    lines = stream.aiter_lines()
    while not (await anext(lines)).startswith("data:"):
        pass
    return lines


async def _eventually_opens(client: httpx.AsyncClient, seconds: float = 10.0) -> None:
    """A new stream is accepted within ``seconds`` (the server noticed a client leave)."""
    deadline = time.monotonic() + seconds
    while True:
        async with client.stream("GET", TOKEN_STREAM) as stream:
            if stream.status_code == 200:
                return
            await stream.aread()
            assert stream.status_code in (429, 503), stream.text
        assert time.monotonic() < deadline, "the slot of a closed stream was never given back"
        await asyncio.sleep(0.1)


async def test_streams_are_capped_per_client_address_and_in_all_and_free_slots_on_leave(
    tmp_path: Path,
) -> None:
    """Two streams per address and three in all: the third from one address is 429, the
    fourth in all is 503, each saying which setting raises it; closing a stream frees its
    slot for the next client at once."""
    server = ServeProcess(tmp_path, WAITPOINT_MAX_STREAMS="3", WAITPOINT_MAX_STREAMS_PER_CLIENT="2")
    server.start()
    try:
        first = httpx.AsyncHTTPTransport(local_address="127.0.0.1")
        second = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            httpx.AsyncClient(base_url=server.base_url, headers=server.auth, transport=first) as a,
            httpx.AsyncClient(base_url=server.base_url, headers=server.auth, transport=second) as b,
            AsyncExitStack() as a_streams,
            AsyncExitStack() as b_streams,
        ):
            kept = [await _open_stream(a_streams, a), await _open_stream(a_streams, a)]
            over_client = await _refused(a)
            assert over_client.status_code == 429
            assert "WAITPOINT_MAX_STREAMS_PER_CLIENT" in over_client.json()["error"]
            assert over_client.headers["retry-after"].isdigit()
            kept.append(await _open_stream(b_streams, b))  # its own two, but 3 in all
            over_all = await _refused(b)
            assert over_all.status_code == 503
            assert "WAITPOINT_MAX_STREAMS" in over_all.json()["error"]
            assert over_all.headers["retry-after"].isdigit()
            assert (await a.get("/healthz")).status_code == 200  # other routes still answer
            await a_streams.aclose()  # the client goes away: both its slots come back
            await _eventually_opens(b)
            await _eventually_opens(a)
    finally:
        server.stop()


# --- the app on uvicorn in this event loop, where its watchers can be seen ------------------


Served = tuple[str, FastAPI]


@pytest.fixture
async def served(engine: Engine) -> AsyncIterator[Served]:
    """The app on a real uvicorn server in this event loop: its base URL and the app."""
    port = free_port()
    app = create_app(engine, secret_key=KEY)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn offers no event for "listening"
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


def hub(app: FastAPI) -> StreamHub:
    """The app's watchers and stream slots (made by its first stream)."""
    found: StreamHub = app.state.stream_hub
    return found


async def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def next_data(lines: AsyncIterator[str]) -> tuple[str, Any]:
    """The next event and its JSON data (comments skipped)."""
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return event, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


async def test_streams_with_the_same_query_share_one_watcher_and_leaving_releases_it(
    served: Served,
) -> None:
    """Five streams on two queries run two watchers; as their clients go, slots and watchers
    go too, and a stream opened afterwards starts a fresh watcher."""
    base, app = served
    async with (
        httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client,
        AsyncExitStack() as streams,
    ):
        kept: list[AsyncIterator[str]] = []
        for path in [f"{TOKEN_STREAM}?filter[tags]=a,b"] * 2 + [
            f"{TOKEN_STREAM}?filter[tags]=b,a",  # the same filter, written another way
            "/api/v1/runs/stream",
            "/api/v1/runs/stream?page[size]=25",
        ]:
            stream = await streams.enter_async_context(client.stream("GET", path))
            assert stream.status_code == 200
            kept.append(stream.aiter_lines())  # dropped half-read, it would close the stream
            await next_data(kept[-1])
        assert hub(app).watchers == 2
        assert hub(app).slots.open == 5
        await streams.aclose()
        await until(lambda: hub(app).slots.open == 0, "the slots of closed streams stay taken")
        await until(lambda: hub(app).watchers == 0, "a watcher outlived its last stream")
        async with client.stream("GET", TOKEN_STREAM) as again:
            lines = again.aiter_lines()
            assert (await next_data(lines))[0] == "tokens"
            assert hub(app).watchers == 1


async def test_list_streams_leave_out_data_payload_and_output(
    engine: Engine, served: Served, start_worker: StartWorker
) -> None:
    """A token-list event has no ``data``/``output``, a run-list event no ``payload``/
    ``output``; the item's own route (and the one-run stream) still has them."""
    base, _ = served
    await start_worker([stream_wait])
    run = await engine.trigger("security-stream-wait", {"tag": "lean", "big": "p" * 1000})
    await wait_for_status(engine, run.id, "WAITING")
    waiting = (await engine.tokens.list(tags=["lean"])).data[0]
    await engine.tokens.complete(waiting.id, {"note": "d" * 1000})
    await wait_for_status(engine, run.id, "COMPLETED")
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
        async with client.stream("GET", f"{TOKEN_STREAM}?filter[tags]=lean") as stream:
            kind, body = await next_data(stream.aiter_lines())
        assert kind == "tokens"
        [token] = body["data"]
        assert token["id"] == waiting.id and token["status"] == "COMPLETED"
        assert not {"data", "output", "outputType"} & set(token), token
        assert token["outputIsError"] is False and "completedAt" in token
        full = (await client.get(f"{TOKENS}/{waiting.id}")).json()
        assert full["data"] == {"note": "d" * 1000}

        path = "/api/v1/runs/stream?filter[taskIdentifier]=security-stream-wait"
        async with client.stream("GET", path) as stream:
            kind, body = await next_data(stream.aiter_lines())
        assert kind == "runs"
        [listed] = body["data"]
        assert listed["id"] == run.id and listed["status"] == "COMPLETED"
        assert not {"payload", "output"} & set(listed), listed
        async with client.stream("GET", f"/api/v1/runs/{run.id}/stream") as stream:
            kind, one = await next_data(stream.aiter_lines())
        assert kind == "run"
        assert one["payload"]["big"] == "p" * 1000
        assert one["output"]["answer"] == {"note": "d" * 1000}


async def test_a_shared_run_stream_stays_correct_and_ends_when_the_run_finishes(
    engine: Engine, served: Served, start_worker: StartWorker
) -> None:
    """Two clients on one run share a watcher, see the same changes, the finished run once,
    then ``end``; the watcher and slots go with them, and a late client gets the finished
    run and ``end`` at once."""
    base, app = served
    await start_worker([stream_wait])
    run = await engine.trigger("security-stream-wait", {"tag": "shared-run"})
    path = f"/api/v1/runs/{run.id}/stream"

    async def follow(client: httpx.AsyncClient, joined: asyncio.Event) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        async with client.stream("GET", path) as stream:
            lines = stream.aiter_lines()
            while True:
                try:
                    events.append(await next_data(lines))
                except AssertionError:
                    return events  # the server closed the stream
                joined.set()

    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=20) as client:
        joined = [asyncio.Event(), asyncio.Event()]
        following = [asyncio.create_task(follow(client, j)) for j in joined]
        await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joined)), 10)
        assert hub(app).watchers == 1
        await wait_for_status(engine, run.id, "WAITING")
        token = (await engine.tokens.list(tags=["shared-run"], status="WAITING")).data[0]
        await engine.tokens.complete(token.id, {"ok": True})
        seen = await asyncio.wait_for(asyncio.gather(*following), 20)
        late = await asyncio.wait_for(follow(client, asyncio.Event()), 10)
    for events in seen:
        assert [kind for kind, _ in events][-1] == "end"
        runs = [body for kind, body in events if kind == "run"]
        statuses = [body["status"] for body in runs]
        assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1
        assert runs[-1]["output"] == {"answer": {"ok": True}, "echo": {"tag": "shared-run"}}
        texts = [json.dumps(body, sort_keys=True) for body in runs]
        assert all(a != b for a, b in itertools.pairwise(texts))  # only changes
    assert seen[0][-2:] == seen[1][-2:]  # the same final state, from the same watcher
    assert [kind for kind, _ in late] == ["run", "end"]
    assert late[0][1]["status"] == "COMPLETED"
    await until(lambda: hub(app).watchers == 0, "a finished run's watcher is still running")
    await until(lambda: hub(app).slots.open == 0, "ended streams still hold their slots")


# --- the dashboard, in a real browser ---------------------------------------------------------


def test_a_page_whose_stream_was_refused_tries_again_and_goes_live(tmp_path: Path) -> None:
    """With one stream per address held elsewhere, the inbox's EventSource is refused (429),
    which a browser never retries by itself; the page does, and once a slot is free it shows
    a new token without being reloaded."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    server = ServeProcess(tmp_path, WAITPOINT_MAX_STREAMS_PER_CLIENT="1")
    server.start()
    try:
        with sync_api.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_context().new_page()
            page.set_default_timeout(20_000)
            with (
                server.client() as client,
                client.stream("GET", TOKEN_STREAM) as held,
            ):
                assert held.status_code == 200
                page.goto(f"{server.base_url}/ui/tokens")
                page.get_by_label("Secret key").fill(server.secret_key)
                with page.expect_response(lambda r: "/tokens/stream" in r.url) as refused:
                    page.get_by_role("button", name="Sign in").click()
                assert refused.value.status == 429
            page.evaluate("window.__notReloaded = true")
            token = server.new_token(tags=["after-the-refusal"])
            sync_api.expect(page.get_by_text(token["id"]).first).to_be_visible(timeout=30_000)
            assert page.evaluate("window.__notReloaded") is True
            browser.close()
    finally:
        server.stop()
