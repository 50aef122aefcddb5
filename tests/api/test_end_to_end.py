"""In process, end to end: trigger over the API, a worker parks the run on a token, the token
is completed over the API, and the run finishes with the completion data as its output."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from engine import Engine, create_token, task, wait_for_token

from ..conftest import StartWorker, wait_for_status
from .conftest import AUTH, TOKENS, bearer, get_token, path_of, sign_jwt


@task("api-e2e-approval")
async def api_e2e_approval(payload: dict[str, Any]) -> dict[str, Any]:
    token = await create_token(timeout="1h", tags=[f"order:{payload['order']}"])
    result = await wait_for_token(token)
    return {"order": payload["order"], "decision": result.unwrap()}


async def poll_run(
    api: httpx.AsyncClient, run_id: str, until: Any, timeout: float = 10
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await api.get(f"/api/v3/runs/{run_id}", headers=AUTH)
        assert response.status_code == 200
        run: dict[str, Any] = response.json()
        if until(run):
            return run
        assert loop.time() < deadline, f"run stuck: {run}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("route", ["secret-key", "public-token", "callback"])
async def test_run_waits_for_a_token_completed_over_the_api_and_finishes_with_its_data(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker, route: str
) -> None:
    await start_worker([api_e2e_approval])
    triggered = await api.post(
        "/api/v1/tasks/api-e2e-approval/trigger",
        json={
            "payload": '{"json":{"order":42}}',
            "options": {"payloadType": "application/super+json", "tags": ["e2e"]},
        },
        headers=AUTH,
    )
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["id"]
    run_token = triggered.headers["x-trigger-jwt"]

    waiting = await poll_run(api, run_id, lambda r: r["isWaiting"] and r["waitingOn"])
    assert waiting["status"] == "WAITING"
    (token_id,) = waiting["waitingOn"]
    listed = await api.get(TOKENS, params={"filter[tags]": "order:42"}, headers=AUTH)
    assert [t["id"] for t in listed.json()["data"]] == [token_id]
    token = await get_token(api, token_id)
    assert token["status"] == "WAITING"

    decision = {"approved": True, "by": "ann"}
    if route == "secret-key":
        completed = await api.post(
            f"{TOKENS}/{token_id}/complete", json={"data": decision}, headers=AUTH
        )
    elif route == "public-token":
        completed = await api.post(
            f"{TOKENS}/{token_id}/complete",
            json={"data": decision},
            headers=bearer(sign_jwt([f"write:waitpoints:{token_id}"])),
        )
    else:
        completed = await api.post(path_of(token["url"]), json=decision)
    assert completed.status_code == 200, completed.text
    assert completed.json() == {"success": True, "applied": True}

    done = await poll_run(api, run_id, lambda r: r["isCompleted"])
    assert done["status"] == "COMPLETED"
    assert done["isSuccess"] is True
    assert done["output"] == {"order": 42, "decision": decision}
    assert done["tags"] == ["e2e"]
    assert done["waitingOn"] == []
    # the run's own read token still reads it
    mine = await api.get(f"/api/v3/runs/{run_id}", headers=bearer(run_token))
    assert mine.json()["output"] == done["output"]
    expected_via = {"secret-key": "api", "public-token": "public-token", "callback": "callback"}
    assert (await get_token(api, token_id))["completedVia"] == expected_via[route]


async def test_token_cancelled_over_the_api_fails_the_waiting_run(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([api_e2e_approval])
    triggered = await api.post(
        "/api/v1/tasks/api-e2e-approval/trigger", json={"payload": {"order": 7}}, headers=AUTH
    )
    run_id = triggered.json()["id"]
    waiting = await poll_run(api, run_id, lambda r: r["isWaiting"] and r["waitingOn"])
    (token_id,) = waiting["waitingOn"]
    cancelled = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    await wait_for_status(engine, run_id, "FAILED")
    run = await poll_run(api, run_id, lambda r: r["isCompleted"])
    assert run["isFailed"] is True
    assert "cancelled" in run["error"]["message"]
    late = await api.post(f"{TOKENS}/{token_id}/complete", json={"data": 1}, headers=AUTH)
    assert late.status_code == 410


async def test_cancelling_the_waiting_run_over_the_api_leaves_it_canceled(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([api_e2e_approval])
    triggered = await api.post(
        "/api/v1/tasks/api-e2e-approval/trigger", json={"payload": {"order": 8}}, headers=AUTH
    )
    run_id = triggered.json()["id"]
    waiting = await poll_run(api, run_id, lambda r: r["isWaiting"] and r["waitingOn"])
    (token_id,) = waiting["waitingOn"]
    response = await api.post(f"/api/v2/runs/{run_id}/cancel", headers=AUTH)
    assert response.json() == {"id": run_id}
    run = await poll_run(api, run_id, lambda r: r["isCompleted"])
    assert run["status"] == "CANCELED"
    # completing the token afterwards does not bring the run back
    completed = await api.post(f"{TOKENS}/{token_id}/complete", json={"data": 1}, headers=AUTH)
    assert completed.status_code == 200
    await asyncio.sleep(0.5)
    assert (await engine.runs.retrieve(run_id)).status == "CANCELED"
