"""``/api/v1/workers`` and ``/api/v1/tasks/{id}/workers`` (ours): the workers serving the
database, and whether a task has a live one."""

from __future__ import annotations

import httpx

from engine import Engine
from engine.models import TaskInfo
from engine.storage import NewWorker

from .conftest import AUTH, sign_jwt


async def test_the_workers_routes_need_the_secret_key(api: httpx.AsyncClient) -> None:
    public = {"Authorization": f"Bearer {sign_jwt(['read:runs'])}"}
    for path in ("/api/v1/workers", "/api/v1/tasks/boom/workers"):
        assert (await api.get(path)).status_code == 401
        assert (await api.get(path, headers=public)).status_code == 403


async def test_workers_lists_the_live_ones_and_all_of_them_on_request(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    assert (await api.get("/api/v1/workers", headers=AUTH)).json() == {"data": []}
    storage = engine.storage
    await storage.register_tasks([TaskInfo("boom")], NewWorker("w1", ["boom"], 5, 30_000))
    await storage.register_tasks([TaskInfo("boom")], NewWorker("w2", ["boom"], 1, 30_000))
    await storage.stop_worker("w2")
    [live] = (await api.get("/api/v1/workers", headers=AUTH)).json()["data"]
    assert {k: live[k] for k in ("id", "tasks", "concurrency", "running", "live")} == {
        "id": "w1",
        "tasks": ["boom"],
        "concurrency": 5,
        "running": 0,
        "live": True,
    }
    assert {"heartbeatAt", "startedAt", "leaseMs"} <= set(live) and "stoppedAt" not in live
    every = (await api.get("/api/v1/workers?all=true", headers=AUTH)).json()["data"]
    assert sorted(w["id"] for w in every) == ["w1", "w2"]
    assert next(w for w in every if w["id"] == "w2")["stoppedAt"]


async def test_a_tasks_workers_say_whether_a_live_one_serves_it(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    never = (await api.get("/api/v1/tasks/boom/workers", headers=AUTH)).json()
    assert never["liveWorkers"] == [] and "lastSeenAt" not in never
    assert never["unserved"] == "no worker has ever served task 'boom'"
    await engine.storage.register_tasks([TaskInfo("boom")], NewWorker("w1", ["boom"], 1, 30_000))
    served = (await api.get("/api/v1/tasks/boom/workers", headers=AUTH)).json()
    assert served["liveWorkers"] == ["w1"] and served["lastSeenAt"] and "unserved" not in served
    await engine.storage.stop_worker("w1")
    gone = (await api.get("/api/v1/tasks/boom/workers", headers=AUTH)).json()
    assert gone["unserved"].startswith("no live worker serves task 'boom' (last seen ")
