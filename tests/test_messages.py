"""Messages into a running run: ``receive(topic)`` inside a task, ``engine.runs.send`` (and
the CLI's ``runs send``, ``POST /api/v1/runs/{id}/messages/{topic}``) from outside.

Real workers on a real database (both backends). Messages sent before, during and after a
receive are each delivered once, in order; a receive that times out leaves later messages
for the next one; a crash between a delivery and what follows replays the same message.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    Engine,
    RunStateError,
    TaskDefinition,
    ValidationError,
    WaitpointTimeoutError,
    receive,
    step,
)
from engine.models import TaskInfo

from .api.conftest import AUTH, api_client
from .conftest import StartWorker, wait_for_status
from .test_cli import assert_one_line_error, invoke, ok_json, register

seen: list[Any] = []


async def listener(count: int) -> list[Any]:
    """Receive ``count`` comments, recording each as a step (what a task would act on)."""
    got = []
    for index in range(count):
        message = await receive("comment")
        got.append(await step(f"saw-{index}", _record(message.output)))
    return got


def _record(value: Any) -> Any:
    async def body() -> Any:
        seen.append(value)
        return value

    return body


async def patient(payload: Any) -> dict[str, Any]:
    """A receive with a timeout, then another without."""
    first = await receive("answer", timeout="1s")
    second = await receive("answer")
    return {
        "timed_out": first.timed_out,
        "error": type(first.error).__name__,
        "second": second.output,
    }


class Review(BaseModel):
    verdict: str


async def typed(payload: Any) -> str:
    return (await receive("review", schema=Review)).unwrap().verdict


async def poller(payload: Any) -> list[Any]:
    """A receive that does not wait: a message already there, or a timeout at once."""
    got = await receive("news", timeout=datetime(2000, 1, 1, tzinfo=UTC))
    return [got.ok, got.output]


LISTENER = TaskDefinition(id="msg-listener", fn=listener)
PATIENT = TaskDefinition(id="msg-patient", fn=patient)
TYPED = TaskDefinition(id="msg-typed", fn=typed)
POLLER = TaskDefinition(id="msg-poller", fn=poller)
TASKS = [LISTENER, PATIENT, TYPED, POLLER]


@pytest.fixture(autouse=True)
def fresh() -> None:
    seen.clear()


async def test_messages_before_during_and_after_a_receive_arrive_once_in_order(
    engine: Engine, start_worker: StartWorker
) -> None:
    await engine.storage.register_tasks([TaskInfo(LISTENER.id)])
    run = await engine.trigger(LISTENER.id, 5)
    early = [await engine.runs.send(run.id, "comment", n) for n in (1, 2)]  # before any worker
    assert early == [1, 2]
    await start_worker(TASKS)
    await wait_for_status(engine, run.id, "WAITING")  # took 1 and 2, waits for the third
    assert await engine.runs.send(run.id, "comment", 3) == 3
    await engine.runs.send(run.id, "other", "not a comment")  # another topic waits
    for n in (4, 5, 6):  # a burst: the run takes them as it gets to each receive
        await engine.runs.send(run.id, "comment", n)
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output == [1, 2, 3, 4, 5]
    assert seen == [1, 2, 3, 4, 5]  # each step ran once: no message was delivered twice
    timeline = await engine.runs.timeline(run.id)
    received = [e.value["data"] for e in timeline if e.key and e.key.startswith("receive:")]
    assert received == [1, 2, 3, 4, 5]
    sent = [e.detail for e in timeline if e.kind == "message_sent"]
    assert [d["n"] for d in sent if d and d["topic"] == "comment"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(RunStateError, match="already finished"):
        await engine.runs.send(run.id, "comment", 7)


async def test_a_receive_that_times_out_leaves_the_late_message_for_the_next(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(PATIENT.id)
    async with asyncio.timeout(20):  # the first receive times out (the timer closes it)
        while True:
            keys = [entry.key for entry in await engine.runs.timeline(run.id)]
            if "receive:answer#0" in keys:
                break
            await asyncio.sleep(0.05)
    await engine.runs.send(run.id, "answer", "late")
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output == {
        "timed_out": True,
        "error": WaitpointTimeoutError.__name__,
        "second": "late",
    }


async def test_a_receive_past_its_deadline_still_takes_a_message_already_there(
    engine: Engine, start_worker: StartWorker
) -> None:
    await engine.storage.register_tasks([TaskInfo(POLLER.id)])
    told = await engine.trigger(POLLER.id)
    await engine.runs.send(told.id, "news", "there")
    untold = await engine.trigger(POLLER.id)
    await start_worker(TASKS)
    assert (await engine.wait_for_run(told.id, timeout=20)).output == [True, "there"]
    assert (await engine.wait_for_run(untold.id, timeout=20)).output == [False, None]


async def test_a_schema_parses_the_data_and_bad_topics_are_refused(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(TYPED.id)
    await wait_for_status(engine, run.id, "WAITING")  # its receive declared the schema
    with pytest.raises(ValidationError, match="verdict"):
        await engine.runs.send(run.id, "review", {"wrong": 1})
    assert await engine.runs.send(run.id, "review", {"verdict": "approve"}) == 1  # none kept
    assert (await engine.wait_for_run(run.id, timeout=20)).output == "approve"
    other = await engine.trigger(LISTENER.id, 1)
    for topic in ("", "two words", "a#b", "x" * 201):
        with pytest.raises(ValidationError, match="a message topic is"):
            await engine.runs.send(other.id, topic, 1)
    with pytest.raises(Exception, match="no run with id"):
        await engine.runs.send("run_nope", "comment", 1)
    await engine.runs.send(other.id, "comment", "ok")  # nothing refused was kept
    assert (await engine.wait_for_run(other.id, timeout=20)).output == ["ok"]


async def test_a_delivery_replayed_after_a_lost_attempt_is_the_same_message(
    engine: Engine,
) -> None:
    """Storage level: a receive journals its delivery in the transaction that takes the
    message, so a later attempt replays it from the journal and the next receive takes the
    next message, never the same one again."""
    from engine.storage import JournalWrite

    storage = engine.storage
    await storage.register_tasks([TaskInfo(LISTENER.id)])
    run = await engine.trigger(LISTENER.id, 2)
    for n in (1, 2):
        await engine.runs.send(run.id, "comment", n)
    [claimed] = await storage.claim_runs("w", 1, 60_000, [LISTENER.id])
    write = JournalWrite(claimed.id, claimed.epoch, claimed.attempt, "receive:comment#0", 0)
    first = await storage.receive_message("comment", None, write)
    assert first is not None and first["data"] == 1
    await storage.release_run(claimed.id, claimed.epoch)  # the attempt is lost here
    [again] = await storage.claim_runs("w", 1, 60_000, [LISTENER.id])
    assert [(e.key, e.value["data"]) for e in again.journal] == [("receive:comment#0", 1)]
    write = JournalWrite(again.id, again.epoch, again.attempt, "receive:comment#1", 1)
    second = await storage.receive_message("comment", None, write)
    assert second is not None and second["data"] == 2


async def test_the_route_sends_once_per_request_and_refuses_bad_input(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo(LISTENER.id)])
    run = await engine.trigger(LISTENER.id, 3)
    async with api_client(engine) as api:
        sent = await api.post(
            f"/api/v1/runs/{run.id}/messages/comment", json={"data": {"a": 1}}, headers=AUTH
        )
        assert sent.json() == {"runId": run.id, "topic": "comment", "n": 1}
        headers = {**AUTH, "x-trigger-request-idempotency-key": "7d1c0e9a-0000-4000-8000-1"}
        twice = [
            await api.post(f"/api/v1/runs/{run.id}/messages/comment", headers=headers)
            for _ in range(2)
        ]
        assert [r.json()["n"] for r in twice] == [2, 2]  # the SDK's retry sent nothing twice
        refused = [
            await api.post(f"/api/v1/runs/{run.id}/messages/a%23b", json={}, headers=AUTH),
            await api.post(f"/api/v1/runs/{run.id}/messages/comment", json={"x": 1}, headers=AUTH),
            await api.post("/api/v1/runs/run_nope/messages/comment", json={}, headers=AUTH),
            await api.post(f"/api/v1/runs/{run.id}/messages/comment", json={}),
        ]
        assert [r.status_code for r in refused] == [422, 422, 404, 401]


def test_the_command_sends_and_says_why_it_cannot(db_url: str) -> None:
    register(db_url, LISTENER.id)
    run: Any = ok_json(db_url, "trigger", LISTENER.id, "--payload", "3")
    said = invoke(db_url, "runs", "send", run["id"], "comment", "--data", '"first"')
    assert said.exit_code == 0 and "sent message 1 on 'comment'" in said.stdout
    bad = invoke(db_url, "runs", "send", run["id"], "comment", "--data", "{")
    assert_one_line_error(bad, "--data is not valid JSON")
    assert ok_json(db_url, "runs", "send", run["id"], "comment") == {
        "runId": run["id"],
        "topic": "comment",
        "n": 2,
    }
    ok_json(db_url, "runs", "cancel", run["id"])
    finished = invoke(db_url, "runs", "send", run["id"], "comment")
    assert_one_line_error(finished, "already finished")


async def test_a_signed_url_sends_its_body_to_that_run_and_topic_only(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo(LISTENER.id)])
    run = await engine.trigger(LISTENER.id, 2)
    other = await engine.trigger(LISTENER.id, 2)
    async with api_client(engine) as api:
        asked = await api.get(f"/api/v1/runs/{run.id}/messages/steer/url", headers=AUTH)
        url = asked.json()["url"]
        assert url.startswith(f"http://testserver/api/v1/runs/{run.id}/messages/steer/")
        path = url.removeprefix("http://testserver")
        sent = await api.post(path, content=b'{"go": "left"}')  # no key: the URL is the key
        assert sent.json() == {"runId": run.id, "topic": "steer", "n": 1}
        signature = path.rsplit("/", 1)[1]
        refused = [
            await api.post(f"/api/v1/runs/{other.id}/messages/steer/{signature}", content=b"1"),
            await api.post(f"/api/v1/runs/{run.id}/messages/other/{signature}", content=b"1"),
            await api.post(f"/api/v1/runs/{run.id}/messages/steer/{'0' * 64}", content=b"1"),
            await api.post(path, content=b"{not json"),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401, 400]
        token = await engine.tokens.create()
        token_signature = token.url.rsplit("/", 1)[1]
        as_token = await api.post(
            f"/api/v1/runs/{run.id}/messages/steer/{token_signature}", content=b"1"
        )
        assert as_token.status_code == 401
        unknown = await api.get("/api/v1/runs/run_nope/messages/steer/url", headers=AUTH)
        assert unknown.status_code == 404
    assert await engine.runs.send(run.id, "steer", "next") == 2  # only the one was kept


async def test_a_local_engine_signs_message_urls_on_its_public_url(db_url: str) -> None:
    from engine import Settings
    from engine.errors import ConfigurationError
    from engine.signing import message_subject

    async with Engine(db_url) as unknown:
        await unknown.storage.register_tasks([TaskInfo(LISTENER.id)])
        run = await unknown.trigger(LISTENER.id, 1)
        with pytest.raises(ConfigurationError, match="no public URL is known"):
            await unknown.runs.message_url(run.id, "steer")
    settings = Settings(database_url=db_url, public_url="https://hooks.example.com")
    async with Engine(settings=settings) as engine:
        url = await engine.runs.message_url(run.id, "steer")
        prefix = f"https://hooks.example.com/api/v1/runs/{run.id}/messages/steer/"
        assert url.startswith(prefix)
        signature = url.removeprefix(prefix)
        assert engine.signer.verify(message_subject(run.id, "steer"), signature)
        with pytest.raises(ValidationError, match="a message topic is"):
            await engine.runs.message_url(run.id, "two words")
