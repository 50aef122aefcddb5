"""The REST routes that send runs round again: retry, replay (Trigger.dev's path), fork, and
the bulk actions by filter. The engine behind them is tested in ``tests/test_repairs.py``;
here: the shapes, the status codes of every refusal, and that a refusal changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engine import Engine, RunStatus
from engine.models import TaskInfo

from ..conftest import StartWorker, wait_for_status
from ..test_remote import KEY as REMOTE_KEY
from ..test_remote import server  # noqa: F401 - the fixture
from ..test_repairs import FLOW, TASKS, broken, fresh  # noqa: F401 - the fixture
from .conftest import AUTH


async def _failed(engine: Engine, api: httpx.AsyncClient, payload: Any = "hi") -> str:
    broken.add("b")
    run = await engine.trigger(FLOW.id, payload)
    await wait_for_status(engine, run.id, "FAILED")
    broken.clear()
    return run.id


async def test_retry_answers_the_id_and_refuses_what_did_not_fail_with_409(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id = await _failed(engine, api)
    response = await api.post(f"/api/v1/runs/{run_id}/retry", headers=AUTH)
    assert (response.status_code, response.json()) == (200, {"id": run_id})
    assert (await engine.wait_for_run(run_id, timeout=20)).status is RunStatus.COMPLETED
    again = await api.post(f"/api/v1/runs/{run_id}/retry", headers=AUTH)
    assert again.status_code == 409
    assert "is COMPLETED" in again.json()["error"]
    unknown = await api.post("/api/v1/runs/run_nope/retry", headers=AUTH)
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Run not found"})
    assert (await api.post(f"/api/v1/runs/{run_id}/retry")).status_code == 401


async def test_replay_and_fork_make_new_runs_and_refuse_bad_bodies(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    first = await engine.trigger(FLOW.id, "hi")
    await engine.wait_for_run(first.id, timeout=20)
    same = await api.post(f"/api/v1/runs/{first.id}/replay", headers=AUTH)
    new = await api.post(f"/api/v1/runs/{first.id}/replay", json={"payload": "new"}, headers=AUTH)
    fork = await api.post(
        f"/api/v1/runs/{first.id}/fork", json={"fromStep": "notify"}, headers=AUTH
    )
    assert [r.status_code for r in (same, new, fork)] == [200, 200, 200]
    outputs = [
        (await engine.wait_for_run(r.json()["id"], timeout=20)).output for r in (same, new, fork)
    ]
    assert [o["notify"] for o in outputs] == ["hi", "new", "hi"]
    body = (await api.get(f"/api/v3/runs/{fork.json()['id']}", headers=AUTH)).json()
    assert (body["originRunId"], body["origin"]) == (first.id, "fork")
    before = len((await engine.runs.list(task=FLOW.id)).data)
    refused = [
        await api.post(f"/api/v1/runs/{first.id}/replay", json={"pay": 1}, headers=AUTH),
        await api.post(f"/api/v1/runs/{first.id}/fork", json={}, headers=AUTH),
        await api.post(f"/api/v1/runs/{first.id}/fork", json={"fromStep": "x"}, headers=AUTH),
        await api.post("/api/v1/runs/run_nope/fork", json={"fromStep": "a"}, headers=AUTH),
        await api.post("/api/v1/runs/run_nope/replay", headers=AUTH),
    ]
    assert [r.status_code for r in refused] == [422, 422, 422, 404, 404]
    assert "journaled no call 'x'" in refused[2].json()["error"]
    assert len((await engine.runs.list(task=FLOW.id)).data) == before


async def test_a_replay_sent_twice_by_the_sdk_makes_one_run(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    """The SDK resends a call with the same ``x-trigger-request-idempotency-key``."""
    await engine.storage.register_tasks([TaskInfo(FLOW.id)])
    run = await engine.trigger(FLOW.id, "x")
    headers = {**AUTH, "x-trigger-request-idempotency-key": "5a1b2c3d-0000-4000-8000-000000000001"}
    first = await api.post(f"/api/v1/runs/{run.id}/replay", headers=headers)
    second = await api.post(f"/api/v1/runs/{run.id}/replay", headers=headers)
    assert first.json() == second.json()
    assert len((await engine.runs.list(task=FLOW.id)).data) == 2


async def test_bulk_actions_take_the_list_filters(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    failed = [await _failed(engine, api, n) for n in range(2)]
    params = {"filter[taskIdentifier]": FLOW.id}
    dry = await api.post(
        "/api/v1/runs/bulk/retry", params={**params, "dryRun": "true"}, headers=AUTH
    )
    assert dry.json() == {"matched": 2, "changed": 0, "dryRun": True}
    done = await api.post("/api/v1/runs/bulk/retry", params=params, headers=AUTH)
    assert done.json() == {"matched": 2, "changed": 2, "dryRun": False}
    for run_id in failed:
        assert (await engine.wait_for_run(run_id, timeout=20)).status is RunStatus.COMPLETED
    await engine.storage.register_tasks([TaskInfo("repair-idle")])
    idle = await engine.trigger("repair-idle")
    cancel = await api.post(
        "/api/v1/runs/bulk/cancel", params={"filter[taskIdentifier]": "repair-idle"}, headers=AUTH
    )
    assert cancel.json() == {"matched": 1, "changed": 1, "dryRun": False}
    assert (await engine.runs.retrieve(idle.id)).status is RunStatus.CANCELED
    refused = [
        await api.post("/api/v1/runs/bulk/explode", headers=AUTH),
        await api.post("/api/v1/runs/bulk/retry", params={"page[after]": "x"}, headers=AUTH),
        await api.post("/api/v1/runs/bulk/retry", params={"filter[status]": "NOPE"}, headers=AUTH),
        await api.post(
            "/api/v1/runs/bulk/retry", params={"filter[status]": "COMPLETED"}, headers=AUTH
        ),
    ]
    assert [r.status_code for r in refused] == [404, 400, 400, 422]


async def test_the_http_client_retries_replays_and_forks_through_the_routes(
    server: str,  # noqa: F811
) -> None:
    async with Engine(server, api_key=REMOTE_KEY) as engine:
        run = await engine.trigger("remote-flow", {"n": 1})
        await wait_for_status(engine, run.id, "WAITING")
        [token] = (await engine.tokens.list(status="WAITING")).data
        await engine.tokens.complete(token.id, "ok")
        await engine.wait_for_run(run.id, timeout=20)
        replayed = await engine.runs.replay(run.id, {"n": 2})
        assert (replayed.origin_run_id, replayed.payload) == (run.id, {"n": 2})
        fork = await engine.runs.fork(run.id, from_step=f"wait_for_token:{token.id}#0")
        assert fork.origin == "fork"
        done_fork = await engine.wait_for_run(fork.id, timeout=20)  # its token was completed:
        assert done_fork.output == {"payload": {"n": 1}, "data": "ok"}  # the wait ends at once
        with pytest.raises(Exception, match="is COMPLETED"):
            await engine.runs.retry(run.id)
        done = await engine.runs.retry_matching(task="remote-flow", dry_run=True)
        assert (done.matched, done.changed) == (0, 0)
