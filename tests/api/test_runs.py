"""Runs and tasks over the API: trigger (payload encodings, options), retrieve, cancel, list."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest

from engine import Engine, task
from engine.models import TaskInfo
from engine.signing import AUDIENCE, ISSUER

from ..conftest import StartWorker, wait_for_status
from .conftest import AUTH, KEY, bearer, null_keys, sign_jwt

TASK = "api-task"
OTHER_TASK = "api-task-other"
RUN_FLAGS = (
    "isQueued",
    "isExecuting",
    "isWaiting",
    "isCompleted",
    "isSuccess",
    "isFailed",
    "isCancelled",
)


@task("api-echo")
async def api_echo(payload: Any) -> dict[str, Any]:
    return {"echo": payload}


@task("api-boom")
async def api_boom(payload: Any) -> None:
    raise RuntimeError("boom on purpose")


@pytest.fixture(autouse=True)
async def registered(engine: Engine) -> None:
    """The task ids a worker elsewhere would have registered."""
    await engine.storage.register_tasks([TaskInfo(TASK, None), TaskInfo(OTHER_TASK, None)])


def when(text: str) -> datetime:
    """An ISO 8601 time from the wire (compare times, never their strings: fractions vary)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def trigger_path(task_id: str = TASK) -> str:
    return f"/api/v1/tasks/{task_id}/trigger"


async def trigger(api: httpx.AsyncClient, task_id: str = TASK, **body: Any) -> httpx.Response:
    response = await api.post(trigger_path(task_id), json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response


async def new_run(api: httpx.AsyncClient, task_id: str = TASK, **body: Any) -> str:
    run_id: str = (await trigger(api, task_id, **body)).json()["id"]
    return run_id


async def get_run(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/v3/runs/{run_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_runs(api: httpx.AsyncClient, params: dict[str, str]) -> dict[str, Any]:
    response = await api.get("/api/v1/runs", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [r["id"] for r in page["data"]]


def superjson(value: Any, meta: dict[str, Any] | None = None) -> str:
    document: dict[str, Any] = {"json": value}
    if meta is not None:
        document["meta"] = meta
    return json.dumps(document)


def assert_run_shape(run: dict[str, Any]) -> None:
    """What the SDK's RetrieveRunResponse needs, and never a null for an optional field."""
    assert not null_keys(run), null_keys(run)
    assert run["id"].startswith("run_")
    assert run["triggerFunction"] == "trigger"
    assert run["relatedRuns"] == {}
    for flag in RUN_FLAGS:
        assert isinstance(run[flag], bool), flag
    assert run["isTest"] is False
    assert run["costInCents"] == 0
    assert run["baseCostInCents"] == 0
    assert isinstance(run["durationMs"], int)
    assert isinstance(run["depth"], int)
    assert isinstance(run["attemptCount"], int)
    assert isinstance(run["tags"], list)
    for key in ("createdAt", "updatedAt"):
        assert isinstance(run[key], str)


# trigger: payloads -------------------------------------------------------------------------


async def test_trigger_with_superjson_payload_decodes_its_json_part(
    api: httpx.AsyncClient,
) -> None:
    response = await trigger(
        api,
        payload=superjson({"a": 1}),
        options={"payloadType": "application/super+json"},
    )
    assert response.json() == {"id": response.json()["id"], "isCached": False}
    assert (await get_run(api, response.json()["id"]))["payload"] == {"a": 1}


async def test_superjson_date_becomes_an_iso_string(api: httpx.AsyncClient) -> None:
    run_id = await new_run(
        api,
        payload=superjson({"when": "2025-01-02T03:04:05.000Z"}, {"values": {"when": ["Date"]}}),
        options={"payloadType": "application/super+json"},
    )
    assert (await get_run(api, run_id))["payload"] == {"when": "2025-01-02T03:04:05.000Z"}


async def test_trigger_with_plain_json_payload_keeps_it(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={"b": [1, 2], "c": "x"})
    assert (await get_run(api, run_id))["payload"] == {"b": [1, 2], "c": "x"}
    typed = await new_run(api, payload={"d": 4}, options={"payloadType": "application/json"})
    assert (await get_run(api, typed))["payload"] == {"d": 4}


async def test_json_payload_type_with_json_text_is_parsed(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload='{"e": 5}', options={"payloadType": "application/json"})
    assert (await get_run(api, run_id))["payload"] == {"e": 5}


@pytest.mark.parametrize(
    ("payload", "payload_type"),
    [
        ("{not json", "application/json"),
        ("{not json", "application/super+json"),
        ({"json": {"a": 1}}, "application/super+json"),
        ("anything", "application/x-unknown"),
    ],
)
async def test_trigger_with_payload_not_matching_its_type_is_422(
    api: httpx.AsyncClient, engine: Engine, payload: Any, payload_type: str
) -> None:
    response = await api.post(
        trigger_path(),
        json={"payload": payload, "options": {"payloadType": payload_type}},
        headers=AUTH,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert (await engine.runs.list()).data == []


async def test_trigger_with_text_plain_payload_keeps_the_text(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload="just text", options={"payloadType": "text/plain"})
    assert (await get_run(api, run_id))["payload"] == "just text"


async def test_trigger_unknown_task_is_404_task_not_found(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(trigger_path("api-no-such-task"), json={"payload": {}}, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "Task not found"
    assert (await engine.runs.list()).data == []


async def test_trigger_task_defined_in_this_process_needs_no_registration(
    api: httpx.AsyncClient,
) -> None:
    run_id = await new_run(api, "api-echo", payload={"x": 1})
    assert (await get_run(api, run_id))["taskIdentifier"] == "api-echo"


# trigger: options --------------------------------------------------------------------------


async def test_trigger_with_tags_stores_them(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={}, options={"tags": ["user:1", "vip"]})
    assert (await get_run(api, run_id))["tags"] == ["user:1", "vip"]
    single = await new_run(api, payload={}, options={"tags": "solo"})
    assert (await get_run(api, single))["tags"] == ["solo"]


async def test_trigger_with_eleven_tags_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        trigger_path(),
        json={"payload": {}, "options": {"tags": [f"t{i}" for i in range(11)]}},
        headers=AUTH,
    )
    assert response.status_code == 422
    assert "11" in response.json()["error"]


async def test_trigger_with_same_idempotency_key_returns_the_same_run_cached(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    first = (await trigger(api, payload={"n": 1}, options={"idempotencyKey": "job-1"})).json()
    second = (await trigger(api, payload={"n": 2}, options={"idempotencyKey": "job-1"})).json()
    assert first["isCached"] is False
    assert second == {"id": first["id"], "isCached": True}
    run = await get_run(api, first["id"])
    assert run["payload"] == {"n": 1}
    assert run["idempotencyKey"] == "job-1"
    assert len((await engine.runs.list()).data) == 1
    other_task = (
        await trigger(api, OTHER_TASK, payload={}, options={"idempotencyKey": "job-1"})
    ).json()
    assert other_task["id"] != first["id"]


async def test_request_idempotency_header_deduplicates_retried_triggers(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    headers = {**AUTH, "x-trigger-request-idempotency-key": "0f1e2d3c-one-trigger-call"}
    first = await api.post(trigger_path(), json={"payload": {}}, headers=headers)
    second = await api.post(trigger_path(), json={"payload": {}}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert len((await engine.runs.list()).data) == 1


async def test_trigger_with_max_attempts_and_unknown_extra_options_is_accepted(
    api: httpx.AsyncClient,
) -> None:
    run_id = await new_run(
        api, payload={}, options={"maxAttempts": 3, "machine": "small-1x", "region": "eu-central-1"}
    )
    assert (await get_run(api, run_id))["status"] == "QUEUED"


async def test_trigger_with_invalid_max_attempts_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        trigger_path(), json={"payload": {}, "options": {"maxAttempts": 0}}, headers=AUTH
    )
    assert response.status_code == 422
    assert "max_attempts" in response.json()["error"]


@pytest.mark.parametrize(
    "options",
    [{"queue": {"name": "q"}}, {"debounce": {"key": "k"}}],
    ids=lambda o: "+".join(o),
)
async def test_trigger_with_unsupported_options_is_422_naming_them(
    api: httpx.AsyncClient, engine: Engine, options: dict[str, Any]
) -> None:
    response = await api.post(
        trigger_path(), json={"payload": {}, "options": options}, headers=AUTH
    )
    assert response.status_code == 422, response.text
    for name in options:
        assert name in response.json()["error"]
    assert (await engine.runs.list()).data == []


async def test_trigger_options_delay_ttl_metadata_and_max_duration_reach_the_run(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    options = {"delay": "1h", "ttl": 600, "metadata": {"customer": "acme"}, "maxDuration": 60}
    response = await api.post(
        trigger_path(), json={"payload": {}, "options": options}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    run = (await api.get(f"/api/v3/runs/{response.json()['id']}", headers=AUTH)).json()
    assert run["status"] == "DELAYED"
    assert run["ttl"] == "600s" and run["metadata"] == {"customer": "acme"}
    assert when(run["delayedUntil"]) > when(run["createdAt"])


@pytest.mark.parametrize(
    "options",
    [{"delay": "soon"}, {"ttl": "-1"}, {"metadata": [1]}, {"maxDuration": 0}],
    ids=lambda o: "+".join(o),
)
async def test_trigger_with_bad_option_values_is_422(
    api: httpx.AsyncClient, engine: Engine, options: dict[str, Any]
) -> None:
    response = await api.post(
        trigger_path(), json={"payload": {}, "options": options}, headers=AUTH
    )
    assert response.status_code == 422, response.text
    assert (await engine.runs.list()).data == []


# trigger: the run's public access token ----------------------------------------------------


async def test_trigger_returns_a_read_token_for_that_run_only(api: httpx.AsyncClient) -> None:
    response = await trigger(api, payload={})
    run_id = response.json()["id"]
    public = response.headers["x-trigger-jwt"]
    claims = jwt.decode(public, KEY, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["scopes"] == [f"read:runs:{run_id}"]
    assert json.loads(response.headers["x-trigger-jwt-claims"])["pub"] is True

    mine = await api.get(f"/api/v3/runs/{run_id}", headers=bearer(public))
    assert mine.status_code == 200
    assert mine.json()["id"] == run_id

    other_id = await new_run(api, payload={})
    other = await api.get(f"/api/v3/runs/{other_id}", headers=bearer(public))
    assert other.status_code == 403
    assert other.json()["error"]

    for method, path in [
        ("GET", "/api/v1/runs"),
        ("POST", f"/api/v2/runs/{run_id}/cancel"),
        ("POST", trigger_path()),
        ("GET", "/api/v1/waitpoints/tokens"),
    ]:
        refused = await api.request(method, path, headers=bearer(public))
        assert refused.status_code == 403, (method, path, refused.text)
    assert (await get_run(api, run_id))["status"] == "QUEUED"


async def test_a_general_read_runs_scope_reads_any_run(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={})
    response = await api.get(f"/api/v3/runs/{run_id}", headers=bearer(sign_jwt(["read:runs"])))
    assert response.status_code == 200


async def test_write_waitpoint_token_cannot_read_runs(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={})
    public = sign_jwt(["write:waitpoints:waitpoint_x"])
    response = await api.get(f"/api/v3/runs/{run_id}", headers=bearer(public))
    assert response.status_code == 403


# retrieve ----------------------------------------------------------------------------------


async def test_retrieve_queued_run_has_the_sdk_shape_without_nulls(
    api: httpx.AsyncClient,
) -> None:
    run_id = await new_run(api, payload={"a": 1}, options={"tags": ["t"]})
    run = await get_run(api, run_id)
    assert_run_shape(run)
    assert run["status"] == "QUEUED"
    assert run["taskIdentifier"] == TASK
    assert run["isQueued"] is True
    assert not any(run[f] for f in RUN_FLAGS if f != "isQueued")
    for absent in ("startedAt", "finishedAt", "output", "error", "idempotencyKey"):
        assert absent not in run, absent
    assert run["attemptCount"] == 0
    assert run["durationMs"] == 0


async def test_retrieve_completed_run_shows_output_and_times(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([api_echo])
    run_id = await new_run(api, "api-echo", payload={"v": 1})
    await wait_for_status(engine, run_id, "COMPLETED")
    run = await get_run(api, run_id)
    assert_run_shape(run)
    assert run["output"] == {"echo": {"v": 1}}
    assert run["isCompleted"] is True
    assert run["isSuccess"] is True
    assert run["isFailed"] is False
    assert run["attemptCount"] == 1
    assert when(run["startedAt"]) <= when(run["finishedAt"])
    assert "error" not in run


async def test_retrieve_failed_run_shows_serialized_error(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([api_boom])
    run_id = await new_run(api, "api-boom", payload={})
    await wait_for_status(engine, run_id, "FAILED")
    run = await get_run(api, run_id)
    assert_run_shape(run)
    assert run["isFailed"] is True
    assert run["isCompleted"] is True
    assert run["isSuccess"] is False
    assert run["error"]["message"] == "boom on purpose"
    assert "RuntimeError" in run["error"]["name"]
    assert isinstance(run["error"]["stackTrace"], str)
    assert "output" not in run


async def test_retrieve_unknown_run_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v3/runs/run_nope", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": "Run not found"}


# cancel ------------------------------------------------------------------------------------


async def test_cancel_with_empty_json_body_cancels_and_answers_the_id(
    api: httpx.AsyncClient,
) -> None:
    run_id = await new_run(api, payload={})
    response = await api.post(
        f"/api/v2/runs/{run_id}/cancel",
        content=b"",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": run_id}
    run = await get_run(api, run_id)
    assert_run_shape(run)
    assert run["status"] == "CANCELED"
    assert run["isCancelled"] is True
    assert run["isCompleted"] is True
    assert "finishedAt" in run


async def test_cancel_without_body_or_content_type_works(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={})
    response = await api.post(f"/api/v2/runs/{run_id}/cancel", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"id": run_id}


async def test_cancelling_a_finished_run_is_200_and_changes_nothing(
    api: httpx.AsyncClient, engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([api_echo])
    run_id = await new_run(api, "api-echo", payload=1)
    await wait_for_status(engine, run_id, "COMPLETED")
    before = await get_run(api, run_id)
    response = await api.post(
        f"/api/v2/runs/{run_id}/cancel",
        content=b"",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"id": run_id}
    assert await get_run(api, run_id) == before


async def test_cancelling_twice_is_200_both_times(api: httpx.AsyncClient) -> None:
    run_id = await new_run(api, payload={})
    first = await api.post(f"/api/v2/runs/{run_id}/cancel", headers=AUTH)
    after_first = await get_run(api, run_id)
    second = await api.post(f"/api/v2/runs/{run_id}/cancel", headers=AUTH)
    assert first.status_code == second.status_code == 200
    assert second.json() == {"id": run_id}
    assert await get_run(api, run_id) == after_first


async def test_cancel_unknown_run_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v2/runs/run_nope/cancel", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": "Run not found"}


# list --------------------------------------------------------------------------------------


async def test_list_runs_filters_by_status_task_and_tag(api: httpx.AsyncClient) -> None:
    a = await new_run(api, payload={}, options={"tags": ["red"]})
    b = await new_run(api, payload={}, options={"tags": ["blue"]})
    c = await new_run(api, OTHER_TASK, payload={}, options={"tags": ["red", "green"]})
    await api.post(f"/api/v2/runs/{b}/cancel", headers=AUTH)

    assert ids(await list_runs(api, {})) == [c, b, a]
    assert ids(await list_runs(api, {"filter[status]": "CANCELED"})) == [b]
    assert ids(await list_runs(api, {"filter[status]": "QUEUED,CANCELED"})) == [c, b, a]
    assert ids(await list_runs(api, {"filter[taskIdentifier]": OTHER_TASK})) == [c]
    both_tasks = await list_runs(api, {"filter[taskIdentifier]": f"{TASK},{OTHER_TASK}"})
    assert ids(both_tasks) == [c, b, a]
    assert ids(await list_runs(api, {"filter[tag]": "red"})) == [c, a]
    assert ids(await list_runs(api, {"filter[tag]": "green,blue"})) == [c, b]
    combined = {"filter[tag]": "red", "filter[taskIdentifier]": TASK, "filter[status]": "QUEUED"}
    assert ids(await list_runs(api, combined)) == [a]
    assert ids(await list_runs(api, {"filter[createdAt][period]": "1h"})) == [c, b, a]


async def test_list_runs_items_have_no_nulls(api: httpx.AsyncClient) -> None:
    await new_run(api, payload={"x": 1})
    page = await list_runs(api, {})
    for run in page["data"]:
        assert_run_shape(run)


async def test_list_runs_pages_through_every_run_once(api: httpx.AsyncClient) -> None:
    made = [await new_run(api, payload={"i": i}) for i in range(7)]
    seen: list[str] = []
    params = {"page[size]": "3"}
    while True:
        page = await list_runs(api, params)
        seen.extend(ids(page))
        if "next" not in page["pagination"]:
            break
        params = {"page[size]": "3", "page[after]": page["pagination"]["next"]}
    assert seen == made[::-1]

    first = await list_runs(api, {"page[size]": "3"})
    second = await list_runs(api, {"page[size]": "3", "page[after]": first["pagination"]["next"]})
    back = await list_runs(
        api, {"page[size]": "3", "page[before]": second["pagination"]["previous"]}
    )
    assert ids(back) == ids(first)


@pytest.mark.parametrize(
    "params",
    [
        {"filter[status]": "RUNNING"},
        {"page[size]": "1000"},
        {"filter[createdAt][from]": "last tuesday"},
        {"filter[createdAt][period]": "x"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
async def test_list_runs_with_bad_filter_is_400_query_error(
    api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await api.get("/api/v1/runs", params=params, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "Query Error"
    assert response.json()["details"]


async def test_list_runs_items_carry_the_env_object_the_sdk_requires(
    api: httpx.AsyncClient,
) -> None:
    await new_run(api, payload={})
    item = (await list_runs(api, {}))["data"][0]
    assert isinstance(item["env"]["id"], str)
    assert isinstance(item["env"]["name"], str)
