"""Pausing and resuming runs and tasks (``engine.runs.pause``, ``engine.tasks.pause``).

A paused run, or a run of a paused task, is claimed by no worker until it is resumed; a run
that waits while paused still records its completions. Resuming wakes the workers at once, not
at their next poll: the workers here poll once a minute and the resumed runs must finish
within ``PROMPT`` seconds, resumed through a second engine (another process, as the CLI
would be), so that only what that engine's commit tells the worker's (on PostgreSQL, a
NOTIFY) can wake it. On both databases; then through the REST API, the HTTP transport, the
CLI and the run page's buttons.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import (
    Engine,
    RunNotFoundError,
    RunStateError,
    RunStatus,
    TaskNotFoundError,
    create_token,
    task,
    wait_for_token,
)
from engine.models import TaskInfo

from .api.conftest import AUTH, api_client
from .conftest import StartWorker, wait_for_status
from .test_cli import assert_one_line_error, invoke, ok_json, register
from .test_remote import KEY as SERVER_KEY
from .test_remote import server  # noqa: F401 - the fixture
from .ui.conftest import KEY as UI_KEY
from .ui.conftest import client_for

SLOW_POLL = 60.0
"""The workers' poll here: longer than any wait of these tests."""
PROMPT = 10.0
"""How long a resumed run may take to finish: far less than ``SLOW_POLL``."""


@task("pause-echo")
async def echo(payload: Any) -> Any:
    return payload


@task("pause-other")
async def other(payload: Any) -> Any:
    return payload


@task("pause-approval")
async def approval(payload: Any) -> Any:
    token = await create_token(timeout="1h")
    return (await wait_for_token(token)).output


GATES: dict[str, asyncio.Event] = {}
"""Per test run: the gate an attempt of ``pause-gated`` waits at, so that it is EXECUTING."""


@task("pause-gated")
async def gated(payload: str) -> str:
    await GATES[payload].wait()
    return payload


async def paused_events(engine: Engine, run_id: str) -> list[str]:
    timeline = await engine.runs.timeline(run_id)
    return [entry.kind for entry in timeline if entry.kind in ("paused", "resumed")]


@pytest.fixture
async def elsewhere(db_url: str) -> AsyncIterator[Engine]:
    """A second engine on the same database: another process, as far as the worker knows."""
    async with Engine(db_url) as opened:
        yield opened


# storage and facade ---------------------------------------------------------------------------


async def test_a_paused_run_is_not_claimed_until_it_is_resumed(
    engine: Engine, elsewhere: Engine, start_worker: StartWorker
) -> None:
    held = await engine.trigger("pause-echo", "held")
    paused = await engine.runs.pause(held.id)
    assert paused.paused_at is not None and paused.status is RunStatus.QUEUED
    younger = await engine.trigger("pause-echo", "younger")
    await start_worker([echo], poll_seconds=SLOW_POLL)
    # the worker's first claim takes every due run, oldest first: it took the younger one only
    assert (await engine.wait_for_run(younger.id, timeout=PROMPT)).output == "younger"
    still = await engine.runs.retrieve(held.id)
    assert still.status is RunStatus.QUEUED and still.paused_at == paused.paused_at
    assert await paused_events(engine, held.id) == ["paused"]

    resumed = await elsewhere.runs.resume(held.id)
    assert resumed.paused_at is None
    assert (await engine.wait_for_run(held.id, timeout=PROMPT)).output == "held"
    assert await paused_events(engine, held.id) == ["paused", "resumed"]


async def test_a_waiting_run_records_its_completion_while_paused_and_goes_on_once_resumed(
    engine: Engine, elsewhere: Engine, start_worker: StartWorker
) -> None:
    await start_worker([approval, echo], poll_seconds=SLOW_POLL)
    run = await engine.trigger("pause-approval")
    await wait_for_status(engine, run.id, "WAITING")
    await engine.runs.pause(run.id)
    [token_id] = (await engine.runs.retrieve(run.id)).waiting_on
    assert (await engine.tokens.complete(token_id, {"approved": True})).applied
    requeued = await engine.runs.retrieve(run.id)
    assert requeued.status is RunStatus.QUEUED and requeued.waiting_on == []
    # a run queued after it is claimed by the same worker: the paused one was passed over
    witness = await engine.trigger("pause-echo", "witness")
    await engine.wait_for_run(witness.id, timeout=PROMPT)
    assert (await engine.runs.retrieve(run.id)).status is RunStatus.QUEUED

    await elsewhere.runs.resume(run.id)
    done = await engine.wait_for_run(run.id, timeout=PROMPT)
    assert done.output == {"approved": True}


async def test_pausing_an_executing_run_lets_its_attempt_finish(
    engine: Engine, start_worker: StartWorker
) -> None:
    GATES["executing"] = asyncio.Event()
    await start_worker([gated], poll_seconds=SLOW_POLL)
    run = await engine.trigger("pause-gated", "executing")
    await wait_for_status(engine, run.id, "EXECUTING")
    await engine.runs.pause(run.id)
    GATES["executing"].set()
    done = await engine.wait_for_run(run.id, timeout=PROMPT)
    assert done.output == "executing" and done.attempt_count == 1


async def test_a_paused_task_holds_its_runs_on_every_worker_and_no_other_task(
    engine: Engine, elsewhere: Engine, start_worker: StartWorker
) -> None:
    await start_worker([echo, other], poll_seconds=SLOW_POLL)
    state = await engine.tasks.pause("pause-echo")
    assert state.task_id == "pause-echo" and state.paused_at is not None
    assert await engine.tasks.pause("pause-echo") == state  # paused since the first time
    assert await elsewhere.tasks.paused() == [state]
    held = [await engine.trigger("pause-echo", n) for n in range(3)]
    other_run = await engine.trigger("pause-other", "goes on")
    assert (await engine.wait_for_run(other_run.id, timeout=PROMPT)).output == "goes on"
    assert {(await engine.runs.retrieve(r.id)).status for r in held} == {RunStatus.QUEUED}

    assert (await elsewhere.tasks.resume("pause-echo")).paused_at is None
    outputs = [(await engine.wait_for_run(r.id, timeout=PROMPT)).output for r in held]
    assert outputs == [0, 1, 2]
    assert await engine.tasks.paused() == []


@pytest.mark.parametrize("limit", [None, 2], ids=["unlimited", "concurrency-limited"])
async def test_claims_pass_over_paused_runs_and_runs_of_paused_tasks(
    engine: Engine, limit: int | None
) -> None:
    """Both ways a claim is made (PostgreSQL claims runs of tasks without a concurrency limit
    in one statement, a limited queue's after counting it), with a due run beside the held
    one (SQLite looks for one before it claims)."""
    storage = engine.storage
    await storage.register_tasks(
        [TaskInfo("pause-claims", None, None, limit), TaskInfo("pause-claims-2", None, None, limit)]
    )

    async def claimed(*task_ids: str) -> list[str]:
        return [r.id for r in await storage.claim_runs("probe", 10, 30_000, list(task_ids))]

    held = await engine.trigger("pause-claims", "held")
    await engine.runs.pause(held.id)
    free = await engine.trigger("pause-claims", "free")
    assert await claimed("pause-claims") == [free.id]

    await engine.tasks.pause("pause-claims")
    await engine.runs.resume(held.id)
    other = await engine.trigger("pause-claims-2")
    assert not await storage.has_due_runs(["pause-claims"])
    assert await claimed("pause-claims", "pause-claims-2") == [other.id]
    await engine.tasks.resume("pause-claims")
    assert await storage.has_due_runs(["pause-claims"])
    assert await claimed("pause-claims") == [held.id]


async def test_pausing_twice_or_resuming_a_run_that_is_not_paused_changes_nothing(
    engine: Engine,
) -> None:
    await engine.storage.register_tasks([TaskInfo("pause-echo", None)])
    run = await engine.trigger("pause-echo")
    assert (await engine.runs.resume(run.id)).updated_at == run.updated_at
    first = await engine.runs.pause(run.id)
    again = await engine.runs.pause(run.id)
    assert (again.paused_at, again.updated_at) == (first.paused_at, first.updated_at)
    assert await paused_events(engine, run.id) == ["paused"]


async def test_unknown_runs_and_tasks_and_finished_runs_are_refused_and_nothing_changes(
    engine: Engine,
) -> None:
    await engine.storage.register_tasks([TaskInfo("pause-echo", None)])
    for call in (engine.runs.pause, engine.runs.resume):
        with pytest.raises(RunNotFoundError):
            await call("run_nope")
    for change in (engine.tasks.pause, engine.tasks.resume):
        with pytest.raises(TaskNotFoundError, match=r"'nope'; known tasks: pause-echo$"):
            await change("nope")
    assert await engine.tasks.paused() == []
    run = await engine.trigger("pause-echo")
    await engine.runs.pause(run.id)
    canceled = await engine.runs.cancel(run.id)
    for call in (engine.runs.pause, engine.runs.resume):
        with pytest.raises(RunStateError, match=r"already finished \(CANCELED\)"):
            await call(run.id)
    assert await engine.runs.retrieve(run.id) == canceled
    assert await paused_events(engine, run.id) == ["paused"]


# the REST API ---------------------------------------------------------------------------------


async def test_the_rest_routes_pause_and_resume_runs_and_tasks(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo("pause-echo", None)])
    run = await engine.trigger("pause-echo")
    async with api_client(engine) as api:
        paused = await api.post(f"/api/v1/runs/{run.id}/pause", headers=AUTH)
        assert paused.status_code == 200, paused.text
        assert paused.json()["id"] == run.id and paused.json()["isQueued"] is True
        assert "pausedAt" in paused.json()
        assert (await api.get(f"/api/v3/runs/{run.id}", headers=AUTH)).json() == paused.json()
        resumed = await api.post(f"/api/v1/runs/{run.id}/resume", headers=AUTH)
        assert resumed.status_code == 200 and "pausedAt" not in resumed.json()

        task_paused = await api.post("/api/v1/tasks/pause-echo/pause", headers=AUTH)
        assert task_paused.status_code == 200
        assert set(task_paused.json()) == {"taskId", "pausedAt"}
        listed = await api.get("/api/v1/tasks/paused", headers=AUTH)
        assert listed.json() == {"data": [task_paused.json()]}
        task_resumed = await api.post("/api/v1/tasks/pause-echo/resume", headers=AUTH)
        assert task_resumed.json() == {"taskId": "pause-echo"}

        unknown = await api.post("/api/v1/runs/run_nope/pause", headers=AUTH)
        assert (unknown.status_code, unknown.json()) == (404, {"error": "Run not found"})
        no_task = await api.post("/api/v1/tasks/nope/pause", headers=AUTH)
        assert no_task.status_code == 404 and no_task.json()["knownTasks"] == ["pause-echo"]
        anonymous = await api.post(f"/api/v1/runs/{run.id}/pause")
        assert anonymous.status_code == 401
        assert (await engine.runs.retrieve(run.id)).paused_at is None
        await engine.runs.cancel(run.id)
        finished = await api.post(f"/api/v1/runs/{run.id}/resume", headers=AUTH)
        assert finished.status_code == 409 and "already finished" in finished.json()["error"]


async def test_the_http_transport_pauses_and_resumes_like_the_local_one(
    server: str,  # noqa: F811
) -> None:
    async with Engine(server, api_key=SERVER_KEY) as engine:
        run = await engine.trigger("remote-flow", {"n": 1})
        await wait_for_status(engine, run.id, "WAITING")  # its worker registered the task
        paused = await engine.runs.pause(run.id)
        assert paused.paused_at is not None and paused.status is RunStatus.WAITING
        state = await engine.tasks.pause("remote-flow")
        assert await engine.tasks.paused() == [state]
        assert (await engine.tasks.resume("remote-flow")).paused_at is None
        assert (await engine.runs.resume(run.id)).paused_at is None
        with pytest.raises(RunNotFoundError):
            await engine.runs.pause("run_nope")
        with pytest.raises(TaskNotFoundError, match="remote-flow"):
            await engine.tasks.pause("nope")
        await engine.runs.cancel(run.id)
        with pytest.raises(RunStateError, match="already finished"):
            await engine.runs.pause(run.id)


# the CLI ----------------------------------------------------------------------------------


def test_the_commands_pause_and_resume_runs_and_tasks(db_url: str) -> None:
    register(db_url, "pause-cli")
    run = ok_json(db_url, "trigger", "pause-cli")
    paused = ok_json(db_url, "runs", "pause", run["id"])
    assert paused["status"] == "QUEUED" and "pausedAt" in paused
    assert "pausedAt" in ok_json(db_url, "runs", "get", run["id"])
    table = invoke(db_url, "runs", "list")
    assert table.stdout.splitlines()[0].split("\t")[-1] == "paused"
    resumed = ok_json(db_url, "runs", "resume", run["id"])
    assert "pausedAt" not in resumed
    assert "paused" not in invoke(db_url, "runs", "list").stdout.splitlines()[0]

    said = invoke(db_url, "tasks", "pause", "pause-cli")
    assert said.exit_code == 0 and "waitpoint tasks resume pause-cli" in said.stdout
    listed = ok_json(db_url, "tasks", "paused")
    assert [t["taskId"] for t in listed["data"]] == ["pause-cli"]
    assert ok_json(db_url, "tasks", "resume", "pause-cli") == {"taskId": "pause-cli"}
    assert ok_json(db_url, "tasks", "paused")["data"] == []

    assert_one_line_error(invoke(db_url, "runs", "pause", "run_nope"), "run_nope")
    assert_one_line_error(invoke(db_url, "tasks", "pause", "nope"), "known tasks: pause-cli")
    ok_json(db_url, "runs", "cancel", run["id"])
    assert_one_line_error(invoke(db_url, "runs", "resume", run["id"]), "already finished")


# the run page -----------------------------------------------------------------------------


async def test_the_run_page_pauses_resumes_and_cancels_with_its_buttons(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo("pause-echo", None)])
    run = await engine.trigger("pause-echo")
    page = f"/ui/runs/{run.id}"
    async with client_for(engine, UI_KEY) as ui:
        assert (await ui.post(f"{page}/pause")).status_code == 401  # signed in only
        signed = await ui.post("/ui/login", data={"key": UI_KEY, "next": "/ui/runs"})
        assert signed.status_code == 303
        shown = (await ui.get(page)).text
        assert buttons(shown) == ["Pause run", "Cancel run"] and "Paused" not in shown

        paused = await ui.post(f"{page}/pause")
        assert (paused.status_code, paused.headers["location"]) == (303, f"{page}?done=pause")
        assert (await engine.runs.retrieve(run.id)).paused_at is not None
        shown = (await ui.get(paused.headers["location"])).text
        assert buttons(shown) == ["Resume run", "Cancel run"]
        assert "Run paused." in shown and "until it is resumed." in shown
        assert '<span class="chip">paused</span>' in (await ui.get("/ui/runs")).text

        resumed = await ui.post(f"{page}/resume")
        assert resumed.status_code == 303
        assert (await engine.runs.retrieve(run.id)).paused_at is None
        assert "Run resumed." in (await ui.get(resumed.headers["location"])).text

        await engine.tasks.pause("pause-echo")
        assert "Its task has been paused" in (await ui.get(page)).text
        await engine.tasks.resume("pause-echo")

        assert (await ui.post(f"{page}/rename")).status_code == 404
        await engine.runs.pause(run.id)
        canceled = await ui.post(f"{page}/cancel")
        assert (canceled.status_code, canceled.headers["location"]) == (303, f"{page}?done=cancel")
        shown = (await ui.get(page)).text
        assert buttons(shown) == ["Replay as a new run"]  # nothing to hold
        assert "until it is resumed" not in shown
        finished = await ui.post(f"{page}/pause")
        assert finished.status_code == 409 and "already finished" in finished.text
    assert (await engine.runs.retrieve(run.id)).status is RunStatus.CANCELED


def buttons(html: str) -> list[str]:
    """The labels of the run page's action buttons, in order."""
    form = r'<form method="post" action="/ui/runs/[^"/]+/[a-z]+" class="inline">'
    return re.findall(form + r"<button[^>]*>([^<]+)</button>", html)
