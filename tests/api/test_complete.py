"""Completing tokens over the API: the secret key, public access tokens, CORS, late completions."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest
from pydantic import BaseModel

from engine import Engine

from .conftest import (
    AUTH,
    KEY,
    TOKENS,
    bearer,
    create_token,
    fire_timers_later,
    get_token,
    new_token,
    path_of,
    sign_jwt,
    token_row_count,
)


def complete_path(token_id: str) -> str:
    return f"{TOKENS}/{token_id}/complete"


def when(text: str) -> datetime:
    """An ISO 8601 time from the wire (compare times, never their strings: fractions vary)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def assert_untouched(api: httpx.AsyncClient, token_id: str) -> None:
    token = await get_token(api, token_id)
    assert token["status"] == "WAITING"
    assert token["data"] is None
    assert "completedVia" not in token
    assert token.get("completedAt") is None


async def public_token_for(api: httpx.AsyncClient) -> tuple[str, str]:
    response = await create_token(api)
    return response.json()["id"], response.headers["x-trigger-jwt"]


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# with the secret key -----------------------------------------------------------------------


async def test_complete_with_data_applies_and_records_api_as_source(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    response = await api.post(
        complete_path(token_id), json={"data": {"approved": True}}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.json() == {"success": True, "applied": True}
    token = await get_token(api, token_id)
    assert token["status"] == "COMPLETED"
    assert token["data"] == {"approved": True}
    assert token["completedVia"] == "api"


@pytest.mark.parametrize("data", [None, 0, "text", [1, 2, {"k": None}], {"deep": {"er": [True]}}])
async def test_complete_stores_any_json_value_as_data(api: httpx.AsyncClient, data: Any) -> None:
    token_id = await new_token(api)
    response = await api.post(complete_path(token_id), json={"data": data}, headers=AUTH)
    assert response.json() == {"success": True, "applied": True}
    token = await get_token(api, token_id)
    assert token["data"] == data
    assert json.loads(token["output"]) == data


async def test_completing_twice_is_200_not_applied_and_keeps_the_first_data(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    await api.post(complete_path(token_id), json={"data": "first"}, headers=AUTH)
    completed_at = (await get_token(api, token_id))["completedAt"]
    again = await api.post(complete_path(token_id), json={"data": "second"}, headers=AUTH)
    assert again.status_code == 200
    assert again.json() == {"success": True, "applied": False}
    token = await get_token(api, token_id)
    assert token["data"] == "first"
    assert token["completedAt"] == completed_at
    assert token["completedVia"] == "api"
    assert "lateCompletions" not in token


async def test_complete_with_empty_object_stores_null_data(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    response = await api.post(complete_path(token_id), json={}, headers=AUTH)
    assert response.json() == {"success": True, "applied": True}
    token = await get_token(api, token_id)
    assert token["status"] == "COMPLETED"
    assert token["data"] is None


async def test_complete_without_a_body_stores_null_data(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    response = await api.post(complete_path(token_id), headers=AUTH)
    assert response.json() == {"success": True, "applied": True}
    assert (await get_token(api, token_id))["data"] is None


async def test_complete_with_output_instead_of_data_is_422_saying_to_use_data(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    response = await api.post(complete_path(token_id), json={"output": 1}, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert "'output'" in error
    assert "'data'" in error
    await assert_untouched(api, token_id)


async def test_complete_with_data_and_an_extra_key_is_422(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    response = await api.post(
        complete_path(token_id), json={"data": 1, "metadata": {}}, headers=AUTH
    )
    assert response.status_code == 422
    assert "metadata" in response.json()["error"]
    await assert_untouched(api, token_id)


@pytest.mark.parametrize("body", [[1, 2], "data", 5])
async def test_complete_with_a_non_object_body_is_422(api: httpx.AsyncClient, body: Any) -> None:
    token_id = await new_token(api)
    response = await api.post(complete_path(token_id), json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    await assert_untouched(api, token_id)


async def test_complete_with_invalid_json_is_400(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    response = await api.post(
        complete_path(token_id),
        content=b'{"data": ',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    await assert_untouched(api, token_id)


async def test_complete_unknown_token_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post(complete_path("waitpoint_nope"), json={"data": 1}, headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": "Waitpoint not found"}


# typed tokens ------------------------------------------------------------------------------


class Approval(BaseModel):
    approved: bool
    reviewer: str


async def test_typed_token_refuses_bad_data_with_422_naming_the_field(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    token = await engine.tokens.create(schema=Approval)
    response = await api.post(
        complete_path(token.id),
        json={"data": {"approved": "maybe", "reviewer": "ann"}},
        headers=AUTH,
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert "approved" in error
    assert "reviewer" not in error.split("schema:", 1)[-1]
    await assert_untouched(api, token.id)

    missing = await api.post(
        complete_path(token.id), json={"data": {"approved": True}}, headers=AUTH
    )
    assert missing.status_code == 422
    assert "reviewer" in missing.json()["error"]
    await assert_untouched(api, token.id)

    good = await api.post(
        complete_path(token.id), json={"data": {"approved": True, "reviewer": "ann"}}, headers=AUTH
    )
    assert good.json() == {"success": True, "applied": True}
    assert (await get_token(api, token.id))["data"] == {"approved": True, "reviewer": "ann"}


async def test_typed_token_refuses_bad_data_through_the_callback_url_too(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    token = await engine.tokens.create(schema=Approval)
    response = await api.post(path_of(token.url), json={"approved": 3})
    assert response.status_code == 422
    assert "approved" in response.json()["error"]
    await assert_untouched(api, token.id)


# public access tokens ----------------------------------------------------------------------


async def test_public_access_token_from_create_completes_that_token(
    api: httpx.AsyncClient,
) -> None:
    token_id, public = await public_token_for(api)
    response = await api.post(
        complete_path(token_id),
        json={"data": {"from": "browser"}},
        headers={**bearer(public), "x-trigger-client": "browser"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "applied": True}
    token = await get_token(api, token_id)
    assert token["completedVia"] == "public-token"
    assert token["data"] == {"from": "browser"}


async def test_self_signed_public_token_with_the_secret_key_is_accepted(
    api: httpx.AsyncClient,
) -> None:
    """What the SDK does when the create response has no x-trigger-jwt header."""
    token_id = await new_token(api)
    public = sign_jwt([f"write:waitpoints:{token_id}"])
    response = await api.post(complete_path(token_id), json={"data": 1}, headers=bearer(public))
    assert response.status_code == 200, response.text
    assert (await get_token(api, token_id))["completedVia"] == "public-token"


async def test_public_token_for_one_token_is_403_on_another(api: httpx.AsyncClient) -> None:
    _, public_a = await public_token_for(api)
    token_b = await new_token(api)
    response = await api.post(complete_path(token_b), json={"data": 1}, headers=bearer(public_a))
    assert response.status_code == 403
    assert token_b in response.json()["error"]
    await assert_untouched(api, token_b)


async def test_public_token_with_a_read_scope_cannot_complete(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    public = sign_jwt([f"read:waitpoints:{token_id}", "read:runs"])
    response = await api.post(complete_path(token_id), json={"data": 1}, headers=bearer(public))
    assert response.status_code == 403
    await assert_untouched(api, token_id)


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "retrieve"),
        ("GET", "list"),
        ("POST", "create"),
        ("POST", "cancel"),
    ],
)
async def test_public_token_is_403_on_routes_that_need_the_secret_key(
    api: httpx.AsyncClient, engine: Engine, method: str, route: str
) -> None:
    token_id, public = await public_token_for(api)
    path = {
        "retrieve": f"{TOKENS}/{token_id}",
        "list": TOKENS,
        "create": TOKENS,
        "cancel": f"{TOKENS}/{token_id}/cancel",
    }[route]
    response = await api.request(
        method, path, json={} if method == "POST" else None, headers=bearer(public)
    )
    assert response.status_code == 403, response.text
    assert "secret key" in response.json()["error"]
    assert await token_row_count(engine) == 1
    await assert_untouched(api, token_id)


def _now() -> int:
    return int(time.time())


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "alg-none",
        "alg-none-with-signature-of-hs256",
        "wrong-audience",
        "wrong-issuer",
        "other-key",
        "no-exp",
        "garbage-with-two-dots",
        "scopes-not-a-list",
    ],
)
async def test_invalid_public_access_token_is_401(api: httpx.AsyncClient, case: str) -> None:
    token_id = await new_token(api)
    scopes = [f"write:waitpoints:{token_id}"]
    if case == "expired":
        credential = sign_jwt(scopes, iat=_now() - 7200, exp=_now() - 60)
    elif case == "alg-none":
        claims = {
            "sub": "w",
            "pub": True,
            "scopes": scopes,
            "iss": "https://id.trigger.dev",
            "aud": "https://api.trigger.dev",
            "iat": _now(),
            "exp": _now() + 600,
        }
        credential = unsigned_jwt(claims)
    elif case == "alg-none-with-signature-of-hs256":
        signed = sign_jwt(scopes)
        none = unsigned_jwt(jwt.decode(signed, options={"verify_signature": False}))
        credential = none + signed.rsplit(".", 1)[1]
    elif case == "wrong-audience":
        credential = sign_jwt(scopes, aud="https://api.example.com")
    elif case == "wrong-issuer":
        credential = sign_jwt(scopes, iss="https://evil.example.com")
    elif case == "other-key":
        credential = sign_jwt(scopes, key="another-secret-key-of-at-least-32-bytes!!")
    elif case == "no-exp":
        claims = {
            "sub": "w",
            "pub": True,
            "scopes": scopes,
            "iss": "https://id.trigger.dev",
            "aud": "https://api.trigger.dev",
            "iat": _now(),
        }
        credential = jwt.encode(claims, KEY, algorithm="HS256")
    elif case == "garbage-with-two-dots":
        credential = "not.a.jwt"
    else:
        claims = jwt.decode(sign_jwt(scopes), options={"verify_signature": False})
        credential = jwt.encode({**claims, "scopes": scopes[0]}, KEY, algorithm="HS256")
    response = await api.post(complete_path(token_id), json={"data": 1}, headers=bearer(credential))
    assert response.status_code == 401, response.text
    assert response.json()["error"]
    if case == "expired":
        assert "expired" in response.json()["error"]
    await assert_untouched(api, token_id)


async def test_hs512_token_signed_with_the_secret_key_is_401(api: httpx.AsyncClient) -> None:
    """The algorithm allow-list is HS256 only, even with the right key."""
    token_id = await new_token(api)
    claims = {
        "sub": "w",
        "pub": True,
        "scopes": [f"write:waitpoints:{token_id}"],
        "iss": "https://id.trigger.dev",
        "aud": "https://api.trigger.dev",
        "iat": _now(),
        "exp": _now() + 600,
    }
    credential = jwt.encode(claims, KEY * 2, algorithm="HS512")
    response = await api.post(complete_path(token_id), json={"data": 1}, headers=bearer(credential))
    assert response.status_code == 401
    await assert_untouched(api, token_id)


# CORS --------------------------------------------------------------------------------------


async def test_cors_preflight_on_complete_allows_any_origin(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    response = await api.options(
        complete_path(token_id),
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-trigger-client",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower().split(", ")
    assert "authorization" in allowed and "*" not in allowed  # `*` does not cover it
    await assert_untouched(api, token_id)


async def test_complete_answers_carry_allow_origin_on_success_and_on_errors(
    api: httpx.AsyncClient,
) -> None:
    token_id, public = await public_token_for(api)
    other = await new_token(api)
    origin = {"Origin": "https://app.example.com"}
    answers = [
        await api.post(complete_path(token_id), json={"data": 1}, headers=origin),  # 401
        await api.post(
            complete_path(other), json={"data": 1}, headers={**origin, **bearer(public)}
        ),  # 403
        await api.post(
            complete_path("waitpoint_nope"), json={"data": 1}, headers={**origin, **AUTH}
        ),  # 404
        await api.post(
            complete_path(token_id), json={"output": 1}, headers={**origin, **bearer(public)}
        ),  # 422
        await api.post(
            complete_path(token_id),
            content=b"{",
            headers={**origin, **bearer(public), "content-type": "application/json"},
        ),  # 400
        await api.post(
            complete_path(token_id), json={"data": 1}, headers={**origin, **bearer(public)}
        ),  # 200
    ]
    assert [r.status_code for r in answers] == [401, 403, 404, 422, 400, 200]
    for response in answers:
        assert response.headers.get("access-control-allow-origin") == "*", response.status_code
        assert "error" in response.json() or response.json()["success"] is True


# late completions --------------------------------------------------------------------------


async def test_completing_a_cancelled_token_is_410_and_recorded_as_late(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    cancel = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    closed_at = cancel.json()["completedAt"]
    response = await api.post(complete_path(token_id), json={"data": "late"}, headers=AUTH)
    assert response.status_code == 410
    body = response.json()
    assert body["status"] == "CANCELLED"
    assert body["closedAt"] == closed_at
    assert "cancelled" in body["error"]
    token = await get_token(api, token_id)
    assert token["status"] == "CANCELLED"
    assert token["data"]["code"] == "WAITPOINT_CANCELLED"
    assert [c["via"] for c in token["lateCompletions"]] == ["api"]
    assert when(token["lateCompletions"][0]["at"]) >= when(closed_at)


async def test_completing_a_timed_out_token_is_410_on_every_route(
    api: httpx.AsyncClient, db_url: str
) -> None:
    response = await create_token(api, timeout="1s")
    token_id = response.json()["id"]
    public = response.headers["x-trigger-jwt"]
    assert await fire_timers_later(db_url, 5) == 1
    closed_at = (await get_token(api, token_id))["completedAt"]

    attempts = [
        await api.post(complete_path(token_id), json={"data": 1}, headers=AUTH),
        await api.post(complete_path(token_id), json={"data": 2}, headers=bearer(public)),
        await api.post(path_of(response.json()["url"]), json={"data": 3}),
    ]
    for attempt in attempts:
        assert attempt.status_code == 410, attempt.text
        assert attempt.json()["status"] == "TIMED_OUT"
        assert attempt.json()["closedAt"] == closed_at
        assert "timed out" in attempt.json()["error"]
    token = await get_token(api, token_id)
    assert token["status"] == "TIMED_OUT"
    assert token["data"]["code"] == "TRIGGER_WAITPOINT_TIMEOUT"
    assert token["completedVia"] == "timeout"
    assert [c["via"] for c in token["lateCompletions"]] == ["api", "public-token", "callback"]


async def test_cancel_route_on_completed_token_is_410_and_data_kept(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    await api.post(complete_path(token_id), json={"data": "kept"}, headers=AUTH)
    response = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    assert response.status_code == 410
    assert response.json()["status"] == "COMPLETED"
    token = await get_token(api, token_id)
    assert token["status"] == "COMPLETED"
    assert token["data"] == "kept"


async def test_cancel_twice_is_idempotent(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    first = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    second = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    assert first.status_code == second.status_code == 200
    assert second.json()["completedAt"] == first.json()["completedAt"]
    assert second.json()["status"] == "CANCELLED"
