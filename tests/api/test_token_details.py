"""What a token asks of its reviewer over the REST API: ``title``, ``description`` and
``context`` on create, in every token JSON (the seed schema still holds: the response hook
checks it), and a clear 422 for each limit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engine import Engine

from .conftest import AUTH, SDK_HEADERS, TOKENS, check_token, get_token, new_token, token_row_count

DETAILS: dict[str, Any] = {
    "title": "Refund order 42",
    "description": "The parcel never came.\n<script>alert(1)</script>",
    "context": {"amount": 19.99, "order": {"id": 42}, "customer": "ana@example.com"},
}


async def test_a_token_created_with_details_shows_them_in_its_json(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api, timeout="1h", **DETAILS)
    for headers in ({}, SDK_HEADERS):  # the SDK's requests see them too (extra fields)
        body = check_token(await get_token(api, token_id, **headers))
        assert {key: body[key] for key in DETAILS} == DETAILS
    listed = await api.get(TOKENS, headers=AUTH)
    assert {key: listed.json()["data"][0][key] for key in DETAILS} == DETAILS


async def test_a_token_without_details_leaves_them_out(api: httpx.AsyncClient) -> None:
    body = await get_token(api, await new_token(api))
    assert not {"title", "description", "context"} & set(body)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("title", "x" * 201, "title must be at most 200 characters long, got 201"),
        ("description", "x" * 4001, "description must be at most 4000 characters long, got 4001"),
        (
            "context",
            {"blob": "x" * 16_400},
            "context must be at most 16384 bytes as JSON, got 16411",
        ),
        ("context", [1, 2], "context: Input should be a valid dictionary"),
        ("context", "amount=3", "context: Input should be a valid dictionary"),
        ("title", 42, "title: Input should be a valid string"),
        ("description", {"a": 1}, "description: Input should be a valid string"),
    ],
)
async def test_details_past_their_limits_are_refused_with_422_saying_which(
    api: httpx.AsyncClient, engine: Engine, field: str, value: Any, message: str
) -> None:
    response = await api.post(TOKENS, json={field: value}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
    assert await token_row_count(engine) == 0


async def test_details_at_their_limits_are_accepted(api: httpx.AsyncClient) -> None:
    context = {"blob": "x" * (16_384 - len('{"blob":""}'))}
    token_id = await new_token(api, title="t" * 200, description="d" * 4000, context=context)
    body = await get_token(api, token_id)
    assert (len(body["title"]), len(body["description"]), body["context"]) == (200, 4000, context)
