"""Health, OpenAPI and docs: open without a key."""

from __future__ import annotations

import httpx

PATHS = [
    "/api/v1/waitpoints/tokens",
    "/api/v1/waitpoints/tokens/{token_id}",
    "/api/v1/waitpoints/tokens/{token_id}/complete",
    "/api/v1/waitpoints/tokens/{token_id}/callback/{signature}",
    "/api/v1/waitpoints/tokens/{token_id}/cancel",
    "/api/v1/tasks/{task_id}/trigger",
    "/api/v3/runs/{run_id}",
    "/api/v2/runs/{run_id}/cancel",
    "/api/v1/runs",
    "/api/v1/workers",
    "/api/v1/tasks/{task_id}/workers",
    "/api/v1/purge",
    "/api/v1/stats",
    "/healthz",
]


async def test_healthz_answers_200_without_a_key(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_openapi_lists_the_token_and_run_paths(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in PATHS:
        assert path in paths, path
    assert set(paths["/api/v1/waitpoints/tokens"]) >= {"get", "post"}
    assert "post" in paths["/api/v1/waitpoints/tokens/{token_id}/complete"]
    assert "post" in paths["/api/v1/waitpoints/tokens/{token_id}/callback/{signature}"]
    assert "get" in paths["/api/v3/runs/{run_id}"]
    list_params = {p["name"] for p in paths["/api/v1/waitpoints/tokens"]["get"]["parameters"]}
    assert {"filter[status]", "filter[tags]", "page[size]", "page[after]", "page[before]"} <= (
        list_params
    )


async def test_docs_page_is_served(api: httpx.AsyncClient) -> None:
    response = await api.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text


async def test_unknown_path_is_404_json_error(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v9/nothing")
    assert response.status_code == 404
    assert "error" in response.json()
