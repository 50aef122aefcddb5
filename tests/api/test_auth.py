"""The secret key: required on every route but the callback, 31-byte Trigger.dev keys accepted."""

from __future__ import annotations

import warnings

import httpx
import jwt
import pytest

from engine import Engine
from engine.models import TaskInfo
from engine.signing import AUDIENCE, ISSUER

from .conftest import KEY, TOKENS, api_client, bearer, get_token, path_of, token_row_count

TRIGGER_STYLE_KEY = "tr_dev_" + "A1b2C3d4E5f6G7h8I9j0K1l2"  # 31 bytes, as Trigger.dev makes them

ROUTES = [
    ("POST", TOKENS),
    ("GET", TOKENS),
    ("GET", f"{TOKENS}/waitpoint_x"),
    ("POST", f"{TOKENS}/waitpoint_x/complete"),
    ("POST", f"{TOKENS}/waitpoint_x/cancel"),
    ("POST", "/api/v1/tasks/api-auth-task/trigger"),
    ("GET", "/api/v3/runs/run_x"),
    ("POST", "/api/v2/runs/run_x/cancel"),
    ("GET", "/api/v1/runs"),
]


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-key",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Basic {KEY}",
        KEY,
        "Bearer ",
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme", "empty"],
)
async def test_missing_or_wrong_key_is_401_with_error(
    api: httpx.AsyncClient, engine: Engine, route: tuple[str, str], authorization: str | None
) -> None:
    method, path = route
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await api.request(
        method, path, json={} if method == "POST" else None, headers=headers
    )
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert "API key" in body["error"] or "public access token" in body["error"]
    assert await token_row_count(engine) == 0


async def test_key_check_is_case_sensitive(api: httpx.AsyncClient) -> None:
    response = await api.get(TOKENS, headers=bearer(KEY.upper()))
    assert response.status_code == 401


async def test_a_31_byte_trigger_dev_key_works_without_any_warning(engine: Engine) -> None:
    assert len(TRIGGER_STYLE_KEY.encode()) == 31
    await engine.storage.register_tasks([TaskInfo("api-auth-task", None)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with api_client(engine, secret_key=TRIGGER_STYLE_KEY) as api:
            created = await api.post(TOKENS, json={}, headers=bearer(TRIGGER_STYLE_KEY))
            assert created.status_code == 200, created.text
            token_id = created.json()["id"]
            public = created.headers["x-trigger-jwt"]

            completed = await api.post(
                f"{TOKENS}/{token_id}/complete", json={"data": "ok"}, headers=bearer(public)
            )
            assert completed.status_code == 200, completed.text
            token = await get_token(api, token_id, Authorization=f"Bearer {TRIGGER_STYLE_KEY}")
            assert token["completedVia"] == "public-token"

            run = await api.post(
                "/api/v1/tasks/api-auth-task/trigger",
                json={"payload": {}},
                headers=bearer(TRIGGER_STYLE_KEY),
            )
            assert run.status_code == 200, run.text
            read = await api.get(
                f"/api/v3/runs/{run.json()['id']}", headers=bearer(run.headers["x-trigger-jwt"])
            )
            assert read.status_code == 200, read.text

            wrong = await api.get(TOKENS, headers=bearer(KEY))
            assert wrong.status_code == 401
    assert jwt.get_unverified_header(public)["alg"] == "HS256"
    claims = jwt.decode(public, options={"verify_signature": False})
    assert (claims["aud"], claims["iss"]) == (AUDIENCE, ISSUER)


async def test_callback_route_needs_no_key(api: httpx.AsyncClient) -> None:
    created = await api.post(TOKENS, json={}, headers=bearer())
    url = created.json()["url"]
    response = await api.post(path_of(url), json={"ok": 1})
    assert response.status_code == 200, response.text


async def test_unknown_x_trigger_headers_are_ignored(api: httpx.AsyncClient) -> None:
    response = await api.post(
        TOKENS,
        json={},
        headers={
            **bearer(),
            "x-trigger-client": "browser",
            "x-trigger-engine-version": "V2",
            "x-trigger-something-new": "1",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200


async def test_sdk_sends_content_type_json_on_get_and_it_is_fine(api: httpx.AsyncClient) -> None:
    response = await api.get(
        TOKENS,
        headers={
            **bearer(),
            "content-type": "application/json",
            "x-trigger-api-version": "2025-07-16",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"data": [], "pagination": {}}
