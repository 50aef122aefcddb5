"""The signed callback URL and the body limits: every refused request leaves the token as it was."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine import Engine

from .conftest import AUTH, TOKENS, api_client, create_token, get_token, path_of

LIMIT = 1000


@pytest.fixture
async def small_api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a 1000-byte body limit."""
    settings = engine.settings.model_copy(update={"max_body_bytes": LIMIT})
    async with api_client(engine, settings=settings) as client:
        yield client


async def waiting_token(api: httpx.AsyncClient) -> tuple[str, str]:
    """A new token's id and the path of its callback URL."""
    body = (await create_token(api)).json()
    return body["id"], path_of(body["url"])


async def assert_untouched(api: httpx.AsyncClient, token_id: str) -> None:
    token = await get_token(api, token_id)
    assert token["status"] == "WAITING", token
    assert token["data"] is None
    assert "completedVia" not in token
    assert "lateCompletions" not in token


def replace_signature(path: str, signature: str) -> str:
    return path.rsplit("/", 1)[0] + "/" + signature


def signature_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


def flip_one_hex_char(signature: str) -> str:
    first = signature[0]
    return ("0" if first != "0" else "1") + signature[1:]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{"event": "payment.succeeded", "amount": 1250, "data": {"id": "pi_1"}}, [1, "two"], "s", 7],
)
async def test_callback_post_completes_with_the_whole_body_as_data(
    api: httpx.AsyncClient, body: Any
) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "applied": True}
    token = await get_token(api, token_id)
    assert token["status"] == "COMPLETED"
    assert token["completedVia"] == "callback"
    assert token["data"] == body


async def test_callback_needs_no_api_key_and_ignores_one(api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, json={"a": 1}, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 200
    assert (await get_token(api, token_id))["completedVia"] == "callback"


async def test_callback_with_empty_body_completes_with_null(api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=b"")
    assert response.status_code == 200, response.text
    token = await get_token(api, token_id)
    assert token["status"] == "COMPLETED"
    assert token["data"] is None


async def test_callback_twice_is_200_not_applied_and_keeps_first_data(
    api: httpx.AsyncClient,
) -> None:
    token_id, path = await waiting_token(api)
    await api.post(path, json={"n": 1})
    again = await api.post(path, json={"n": 2})
    assert again.status_code == 200
    assert again.json() == {"success": True, "applied": False}
    assert (await get_token(api, token_id))["data"] == {"n": 1}


async def test_callback_on_cancelled_token_is_410_and_recorded(api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(api)
    await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    response = await api.post(path, json={"late": True})
    assert response.status_code == 410
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["closedAt"]
    token = await get_token(api, token_id)
    assert token["status"] == "CANCELLED"
    assert [c["via"] for c in token["lateCompletions"]] == ["callback"]


# refused signatures ------------------------------------------------------------------------


def _tampered(path: str) -> str:
    return replace_signature(path, flip_one_hex_char(signature_of(path)))


def _truncated(path: str) -> str:
    return path[:-1]


def _extended(path: str) -> str:
    return path + "0"


def _uppercase(path: str) -> str:
    signature = signature_of(path)
    assert signature != signature.upper()
    return replace_signature(path, signature.upper())


def _not_hex(path: str) -> str:
    return replace_signature(path, "g" * 64)


@pytest.mark.parametrize(
    "mangle",
    [_tampered, _truncated, _extended, _uppercase, _not_hex],
    ids=["tampered", "truncated", "extended", "uppercase", "not-hex"],
)
async def test_callback_with_bad_signature_is_401_and_token_unchanged(
    api: httpx.AsyncClient, mangle: Any
) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(mangle(path), json={"x": 1})
    assert response.status_code == 401, response.text
    assert response.json()["error"]
    await assert_untouched(api, token_id)


async def test_callback_with_another_tokens_signature_is_401(api: httpx.AsyncClient) -> None:
    token_a, path_a = await waiting_token(api)
    token_b, path_b = await waiting_token(api)
    response = await api.post(replace_signature(path_b, signature_of(path_a)), json={"x": 1})
    assert response.status_code == 401
    await assert_untouched(api, token_a)
    await assert_untouched(api, token_b)


async def test_callback_for_unknown_token_with_made_up_signature_is_401(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(f"{TOKENS}/waitpoint_nope/callback/{'a' * 64}", json={})
    assert response.status_code == 401


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_callback_url_with_other_methods_is_405(api: httpx.AsyncClient, method: str) -> None:
    token_id, path = await waiting_token(api)
    response = await api.request(method, path)
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")
    await assert_untouched(api, token_id)


# refused bodies ----------------------------------------------------------------------------


async def test_callback_without_content_length_is_411(api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=chunks(b'{"a":', b"1}"))
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 411
    await assert_untouched(api, token_id)


async def test_chunked_callback_is_411_before_its_body_is_looked_at(
    api: httpx.AsyncClient,
) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=chunks(b"not ", b"json"))
    assert response.status_code == 411
    await assert_untouched(api, token_id)


async def test_callback_with_a_wrong_signature_is_401_whatever_its_body(
    api: httpx.AsyncClient,
) -> None:
    token_id, path = await waiting_token(api)
    wrong = path[:-1] + ("0" if path[-1] != "0" else "1")
    response = await api.post(wrong, content=b"not json")
    assert response.status_code == 401
    await assert_untouched(api, token_id)


@pytest.mark.parametrize("body", [b"not json", b"{'single': 'quotes'}", b"\xff\xfe", b"{"])
async def test_callback_with_non_json_body_is_400(api: httpx.AsyncClient, body: bytes) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    await assert_untouched(api, token_id)


async def test_callback_with_deeply_nested_json_is_400(api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=nested(10_000))
    assert response.status_code == 400, response.text
    assert "deep" in response.json()["error"]
    await assert_untouched(api, token_id)


async def test_json_just_past_the_depth_limit_is_400_and_at_the_limit_is_accepted(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    depth = engine.settings.max_json_depth
    token_id, path = await waiting_token(api)
    response = await api.post(path, content=nested(depth + 1))
    assert response.status_code == 400
    await assert_untouched(api, token_id)
    response = await api.post(path, content=nested(depth))
    assert response.status_code == 200
    assert (await get_token(api, token_id))["status"] == "COMPLETED"


async def test_complete_with_deeply_nested_data_is_400(api: httpx.AsyncClient) -> None:
    token_id, _ = await waiting_token(api)
    body = b'{"data": ' + nested(10_000) + b"}"
    response = await api.post(
        f"{TOKENS}/{token_id}/complete",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    await assert_untouched(api, token_id)


async def test_deep_json_on_create_and_trigger_is_400_not_5xx(api: httpx.AsyncClient) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    create = await api.post(TOKENS, content=b'{"tags": ' + nested(10_000) + b"}", headers=headers)
    assert create.status_code == 400
    trigger = await api.post(
        "/api/v1/tasks/api-nothing/trigger",
        content=b'{"payload": ' + nested(10_000) + b"}",
        headers=headers,
    )
    assert trigger.status_code == 400


def _padding(size: int) -> dict[str, str]:
    return {"pad": "x" * size}


async def test_callback_body_over_the_limit_is_413(small_api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(small_api)
    response = await small_api.post(path, json=_padding(LIMIT))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]
    await assert_untouched(small_api, token_id)


async def test_callback_body_at_the_limit_is_accepted(small_api: httpx.AsyncClient) -> None:
    token_id, path = await waiting_token(small_api)
    body = json.dumps(_padding(0)).encode()
    body = json.dumps(_padding(LIMIT - len(body))).encode()
    assert len(body) == LIMIT
    response = await small_api.post(path, content=body)
    assert response.status_code == 200, response.text
    assert (await get_token(small_api, token_id))["status"] == "COMPLETED"


async def test_callback_body_larger_than_its_content_length_claims_is_413(
    small_api: httpx.AsyncClient,
) -> None:
    token_id, path = await waiting_token(small_api)
    body = json.dumps(_padding(LIMIT * 3)).encode()
    response = await small_api.post(path, content=body, headers={"Content-Length": "20"})
    assert response.request.headers["content-length"] == "20"
    assert response.status_code == 413
    await assert_untouched(small_api, token_id)


async def test_chunked_complete_body_over_the_limit_is_413(small_api: httpx.AsyncClient) -> None:
    token_id, _ = await waiting_token(small_api)
    big = json.dumps({"data": "x" * LIMIT}).encode()
    pieces = [big[i : i + 100] for i in range(0, len(big), 100)]
    response = await small_api.post(
        f"{TOKENS}/{token_id}/complete",
        content=chunks(*pieces),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    await assert_untouched(small_api, token_id)


async def test_chunked_complete_body_under_the_limit_is_accepted(
    small_api: httpx.AsyncClient,
) -> None:
    token_id, _ = await waiting_token(small_api)
    response = await small_api.post(
        f"{TOKENS}/{token_id}/complete",
        content=chunks(b'{"data": ', b'{"ok": true}', b"}"),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert (await get_token(small_api, token_id))["data"] == {"ok": True}


@pytest.mark.parametrize("sending", ["content-length", "chunked"])
async def test_complete_body_over_the_limit_is_413_with_allow_origin(
    small_api: httpx.AsyncClient, sending: str
) -> None:
    token_id, _ = await waiting_token(small_api)
    big = json.dumps({"data": "x" * LIMIT}).encode()
    content: bytes | AsyncIterator[bytes] = big if sending == "content-length" else chunks(big)
    response = await small_api.post(
        f"{TOKENS}/{token_id}/complete",
        content=content,
        headers={**AUTH, "content-type": "application/json", "Origin": "https://a.example"},
    )
    assert response.status_code == 413
    assert response.headers.get("access-control-allow-origin") == "*"
    await assert_untouched(small_api, token_id)


@pytest.mark.parametrize("route", ["create", "trigger"])
async def test_other_routes_refuse_bodies_over_the_limit_with_413(
    small_api: httpx.AsyncClient, engine: Engine, route: str
) -> None:
    path = TOKENS if route == "create" else "/api/v1/tasks/api-nothing/trigger"
    response = await small_api.post(path, json={"tags": ["x" * LIMIT]}, headers=AUTH)
    assert response.status_code == 413
    assert (await engine.tokens.list()).data == []
