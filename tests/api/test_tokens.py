"""Waitpoint tokens over the REST API: create, retrieve, list (filters, paging), SDK shapes."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from engine import Engine
from engine.signing import AUDIENCE, ISSUER

from .conftest import (
    AUTH,
    KEY,
    SDK_HEADERS,
    TOKENS,
    check_token,
    create_token,
    fire_timers_later,
    get_token,
    new_token,
    path_of,
    sdk_nulls,
    token_row_count,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def list_tokens(
    api: httpx.AsyncClient, params: dict[str, str] | None = None, **headers: str
) -> dict[str, Any]:
    response = await api.get(TOKENS, params=params or {}, headers={**AUTH, **headers})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"data", "pagination"}
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [t["id"] for t in body["data"]]


async def cancel(api: httpx.AsyncClient, token_id: str) -> None:
    response = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    assert response.status_code == 200, response.text


async def complete(api: httpx.AsyncClient, token_id: str, data: Any = None) -> None:
    response = await api.post(f"{TOKENS}/{token_id}/complete", json={"data": data}, headers=AUTH)
    assert response.status_code == 200, response.text


# create ------------------------------------------------------------------------------------


async def test_create_with_empty_body_returns_id_is_cached_and_signed_callback_url(
    api: httpx.AsyncClient,
) -> None:
    response = await create_token(api)
    body = response.json()
    assert set(body) == {"id", "isCached", "url"}
    assert body["id"].startswith("waitpoint_")
    assert body["isCached"] is False
    path = path_of(body["url"])
    prefix = f"{TOKENS}/{body['id']}/callback/"
    assert path.startswith(prefix)
    assert HEX64.match(path[len(prefix) :])
    token = check_token(await get_token(api, body["id"]))
    assert token["status"] == "WAITING"
    assert token["url"] == body["url"]
    assert token["tags"] == []
    assert "ttl" not in token


async def test_create_without_any_body_is_like_empty_object(api: httpx.AsyncClient) -> None:
    response = await api.post(TOKENS, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["isCached"] is False


async def test_create_returns_public_access_token_scoped_to_the_new_token(
    api: httpx.AsyncClient,
) -> None:
    response = await create_token(api)
    token_id = response.json()["id"]
    public = response.headers["x-trigger-jwt"]
    assert jwt.get_unverified_header(public)["alg"] == "HS256"
    claims = jwt.decode(public, KEY, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["scopes"] == [f"write:waitpoints:{token_id}"]
    assert claims["aud"] == "https://api.trigger.dev"
    assert claims["iss"] == "https://id.trigger.dev"
    assert claims["pub"] is True
    assert claims["sub"]
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert abs(claims["iat"] - time.time()) < 60
    header_claims = json.loads(response.headers["x-trigger-jwt-claims"])
    assert header_claims["pub"] is True
    assert header_claims["sub"] == claims["sub"]


async def test_create_with_duration_timeout_sets_ttl_and_deadline(
    api: httpx.AsyncClient,
) -> None:
    before = datetime.now(UTC)
    token_id = await new_token(api, timeout="1h30m")
    after = datetime.now(UTC)
    token = await get_token(api, token_id)
    assert token["ttl"] == "1h30m"
    deadline = parse(token["expiresAt"])
    slack = timedelta(seconds=1)
    assert (
        before + timedelta(minutes=90) - slack <= deadline <= after + timedelta(minutes=90) + slack
    )
    assert token["timeoutAt"] == token["expiresAt"]


async def test_create_with_future_iso_date_uses_it_as_deadline(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api, timeout="2099-01-02T03:04:05Z")
    token = await get_token(api, token_id)
    assert parse(token["expiresAt"]) == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse(token["timeoutAt"]) == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert token["status"] == "WAITING"


async def test_create_with_past_iso_date_is_refused_with_422(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(TOKENS, json={"timeout": "2001-01-01T00:00:00Z"}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert "past" in response.json()["error"]
    assert await token_row_count(engine) == 0


@pytest.mark.parametrize("timeout", ["soon", "1x", "-5m", "0s", "2030-13-45T00:00:00Z"])
async def test_create_with_invalid_timeout_is_refused_with_422(
    api: httpx.AsyncClient, engine: Engine, timeout: str
) -> None:
    response = await api.post(TOKENS, json={"timeout": timeout}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert await token_row_count(engine) == 0


async def test_create_with_one_tag_as_a_string_stores_a_list(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api, tags="approval")
    assert (await get_token(api, token_id))["tags"] == ["approval"]


async def test_create_with_eleven_tags_is_refused_naming_the_count(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(TOKENS, json={"tags": [f"t{i}" for i in range(11)]}, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "11" in error
    assert "10" in error
    assert await token_row_count(engine) == 0


async def test_create_with_ten_tags_is_accepted(api: httpx.AsyncClient) -> None:
    tags = [f"t{i}" for i in range(10)]
    token_id = await new_token(api, tags=tags)
    assert (await get_token(api, token_id))["tags"] == tags


async def test_create_with_same_idempotency_key_returns_the_same_token_cached(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    first = (await create_token(api, idempotencyKey="order-42")).json()
    second = (await create_token(api, idempotencyKey="order-42", timeout="1h")).json()
    assert first["isCached"] is False
    assert second["isCached"] is True
    assert second["id"] == first["id"]
    assert second["url"] == first["url"]
    assert await token_row_count(engine) == 1
    token = await get_token(api, first["id"])
    assert token["idempotencyKey"] == "order-42"
    assert "ttl" not in token  # the second call's options did not change the token


async def test_create_with_idempotency_key_of_a_completed_token_returns_it_cached(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api, idempotencyKey="done-once")
    await complete(api, token_id, {"ok": True})
    again = (await create_token(api, idempotencyKey="done-once")).json()
    assert again == {"id": token_id, "isCached": True, "url": again["url"]}


async def test_create_with_idempotency_key_ttl_shows_its_expiry(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api, idempotencyKey="short-lived", idempotencyKeyTTL="10m")
    token = await get_token(api, token_id)
    expires = parse(token["idempotencyKeyExpiresAt"])
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)


async def test_repeated_request_idempotency_header_replays_the_reply_with_one_token(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    headers = {**AUTH, "x-trigger-request-idempotency-key": "2b7c3f0e-retry-of-one-call"}
    first = await api.post(TOKENS, json={"tags": ["a"]}, headers=headers)
    second = await api.post(TOKENS, json={"tags": ["a"]}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert await token_row_count(engine) == 1
    claims = jwt.decode(
        second.headers["x-trigger-jwt"], KEY, algorithms=["HS256"], audience=AUDIENCE
    )
    assert claims["scopes"] == [f"write:waitpoints:{first.json()['id']}"]
    other = await api.post(
        TOKENS, json={}, headers={**AUTH, "x-trigger-request-idempotency-key": "another-call"}
    )
    assert other.json()["id"] != first.json()["id"]
    assert await token_row_count(engine) == 2


async def test_create_with_wrong_field_types_is_422_not_5xx(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    for body in ({"timeout": 5}, {"tags": [1, 2]}, {"idempotencyKey": {"a": 1}}, [1, 2], "x"):
        response = await api.post(TOKENS, json=body, headers=AUTH)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]
    assert await token_row_count(engine) == 0


# retrieve ----------------------------------------------------------------------------------


async def test_retrieve_unknown_token_is_404_waitpoint_not_found(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{TOKENS}/waitpoint_doesnotexist", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": "Waitpoint not found"}


async def test_retrieve_shows_seed_and_sdk_fields_of_a_completed_token(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api, timeout="1h", tags=["x"], idempotencyKey="k1")
    await complete(api, token_id, {"approved": True, "n": [1, 2]})
    token = check_token(await get_token(api, token_id))
    assert token["status"] == "COMPLETED"
    assert token["data"] == {"approved": True, "n": [1, 2]}
    assert json.loads(token["output"]) == token["data"]
    assert token["outputType"] == "application/json"
    assert token["outputIsError"] is False
    assert token["completedVia"] == "api"
    assert parse(token["completedAt"]) >= parse(token["createdAt"])
    assert token["tags"] == ["x"]
    assert token["idempotencyKey"] == "k1"
    assert "cancelled" not in token


async def test_waiting_token_without_sdk_header_has_nullable_seed_dates(
    api: httpx.AsyncClient,
) -> None:
    token = check_token(await get_token(api, await new_token(api)))
    assert token["status"] == "WAITING"
    assert token.get("expiresAt") is None
    assert token.get("completedAt") is None
    assert "timeoutAt" not in token
    assert "output" not in token


async def test_sdk_header_omits_absent_optional_fields_instead_of_null(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    token = await get_token(api, token_id, **SDK_HEADERS)
    for key in ("expiresAt", "completedAt", "timeoutAt", "idempotencyKey", "ttl", "output"):
        assert key not in token, key
    assert not sdk_nulls(token)
    listed = await list_tokens(api, **SDK_HEADERS)
    assert ids(listed) == [token_id]
    assert not sdk_nulls(listed["data"][0])
    for key in ("expiresAt", "completedAt", "timeoutAt"):
        assert key not in listed["data"][0]


async def test_cancelled_token_is_timed_out_for_the_sdk_and_cancelled_for_others(
    api: httpx.AsyncClient,
) -> None:
    token_id = await new_token(api)
    response = await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
    assert response.status_code == 200
    assert check_token(response.json())["status"] == "CANCELLED"

    plain = await get_token(api, token_id)
    assert plain["status"] == "CANCELLED"
    assert plain["cancelled"] is True
    assert plain["outputIsError"] is True

    for_sdk = await get_token(api, token_id, **SDK_HEADERS)
    assert for_sdk["status"] == "TIMED_OUT"
    assert for_sdk["outputIsError"] is True
    assert for_sdk["cancelled"] is True
    assert json.loads(for_sdk["output"])["code"] == "WAITPOINT_CANCELLED"
    assert "completedAt" in for_sdk

    assert [t["status"] for t in (await list_tokens(api))["data"]] == ["CANCELLED"]
    sdk_list = await list_tokens(api, **SDK_HEADERS)
    assert [t["status"] for t in sdk_list["data"]] == ["TIMED_OUT"]
    # the SDK asks for TIMED_OUT tokens and gets the cancelled ones it sees as TIMED_OUT
    sdk_timed_out = await list_tokens(api, {"filter[status]": "TIMED_OUT"}, **SDK_HEADERS)
    assert ids(sdk_timed_out) == [token_id]
    assert ids(await list_tokens(api, {"filter[status]": "TIMED_OUT"})) == []


# list: filters -----------------------------------------------------------------------------


async def test_list_filters_by_comma_separated_statuses(api: httpx.AsyncClient) -> None:
    waiting = await new_token(api)
    done = await new_token(api)
    await complete(api, done, 1)
    cancelled = await new_token(api)
    await cancel(api, cancelled)

    assert ids(await list_tokens(api)) == [cancelled, done, waiting]
    assert ids(await list_tokens(api, {"filter[status]": "WAITING"})) == [waiting]
    both = await list_tokens(api, {"filter[status]": "COMPLETED,CANCELLED"})
    assert ids(both) == [cancelled, done]
    spaced = await list_tokens(api, {"filter[status]": "WAITING, COMPLETED"})
    assert ids(spaced) == [done, waiting]


async def test_list_filters_by_idempotency_key(api: httpx.AsyncClient) -> None:
    keyed = await new_token(api, idempotencyKey="invoice-7")
    await new_token(api, idempotencyKey="invoice-8")
    await new_token(api)
    assert ids(await list_tokens(api, {"filter[idempotencyKey]": "invoice-7"})) == [keyed]
    assert ids(await list_tokens(api, {"filter[idempotencyKey]": "nope"})) == []


async def test_list_filters_by_any_of_the_tags(api: httpx.AsyncClient) -> None:
    a = await new_token(api, tags=["a", "shared"])
    b = await new_token(api, tags=["b"])
    await new_token(api, tags=["c"])
    await new_token(api)
    assert ids(await list_tokens(api, {"filter[tags]": "a,b"})) == [b, a]
    assert ids(await list_tokens(api, {"filter[tags]": "shared"})) == [a]
    assert ids(await list_tokens(api, {"filter[tags]": "zzz"})) == []


async def _three_tokens_apart(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    tokens = []
    for _ in range(3):
        tokens.append(await get_token(api, await new_token(api)))
        await asyncio.sleep(0.02)
    return tokens


def epoch_ms(text: str) -> str:
    return str(round(parse(text).timestamp() * 1000))


async def test_list_filters_by_created_at_range_in_epoch_ms(api: httpx.AsyncClient) -> None:
    first, middle, last = await _three_tokens_apart(api)
    moment = epoch_ms(middle["createdAt"])
    only = {"filter[createdAt][from]": moment, "filter[createdAt][to]": moment}
    assert ids(await list_tokens(api, only)) == [middle["id"]]
    since = await list_tokens(api, {"filter[createdAt][from]": moment})
    assert ids(since) == [last["id"], middle["id"]]
    until = await list_tokens(api, {"filter[createdAt][to]": moment})
    assert ids(until) == [middle["id"], first["id"]]


async def test_list_filters_by_created_at_range_in_iso(api: httpx.AsyncClient) -> None:
    first, middle, last = await _three_tokens_apart(api)
    since = await list_tokens(api, {"filter[createdAt][from]": middle["createdAt"]})
    assert ids(since) == [last["id"], middle["id"]]
    until = await list_tokens(api, {"filter[createdAt][to]": middle["createdAt"]})
    assert ids(until) == [middle["id"], first["id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids(await list_tokens(api, {"filter[createdAt][from]": future})) == []


async def test_list_filters_by_created_at_period(api: httpx.AsyncClient) -> None:
    token_id = await new_token(api)
    assert ids(await list_tokens(api, {"filter[createdAt][period]": "1h"})) == [token_id]
    assert ids(await list_tokens(api, {"filter[createdAt][period]": "7d"})) == [token_id]
    await asyncio.sleep(1.1)
    assert ids(await list_tokens(api, {"filter[createdAt][period]": "1s"})) == []


async def test_list_combines_filters(api: httpx.AsyncClient) -> None:
    match = await new_token(api, tags=["team"])
    done = await new_token(api, tags=["team"])
    await complete(api, done)
    await new_token(api, tags=["other"])
    params = {
        "filter[tags]": "team",
        "filter[status]": "WAITING",
        "filter[createdAt][period]": "1h",
    }
    assert ids(await list_tokens(api, params)) == [match]


@pytest.mark.parametrize(
    "params",
    [
        {"filter[status]": "BOGUS"},
        {"filter[status]": "WAITING,NOPE"},
        {"page[size]": "0"},
        {"page[size]": "101"},
        {"page[size]": "ten"},
        {"page[size]": "-1"},
        {"filter[createdAt][from]": "yesterday"},
        {"filter[createdAt][to]": "2024-99-99"},
        {"filter[createdAt][period]": "forever"},
        {"filter[createdAt][period]": "0s"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
async def test_list_with_bad_filter_value_is_400_query_error(
    api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await new_token(api)
    response = await api.get(TOKENS, params=params, headers=AUTH)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Query Error"
    assert isinstance(body["details"], list)
    assert body["details"]
    assert next(iter(params.values())) in json.dumps(body["details"])


# list: paging ------------------------------------------------------------------------------


async def _tokens(api: httpx.AsyncClient, count: int) -> list[str]:
    made = [await new_token(api) for _ in range(count)]
    return made[::-1]  # newest first, as listed


async def test_list_pages_of_default_size_25(api: httpx.AsyncClient) -> None:
    newest_first = await _tokens(api, 27)
    page = await list_tokens(api)
    assert ids(page) == newest_first[:25]
    assert "next" in page["pagination"]
    assert "previous" not in page["pagination"]


async def test_following_next_cursor_visits_every_token_once(api: httpx.AsyncClient) -> None:
    newest_first = await _tokens(api, 8)
    seen: list[str] = []
    params = {"page[size]": "3"}
    pages = 0
    while True:
        page = await list_tokens(api, params)
        pages += 1
        assert len(page["data"]) <= 3
        seen.extend(ids(page))
        cursor = page["pagination"].get("next")
        if cursor is None:
            break
        params = {"page[size]": "3", "page[after]": cursor}
    assert pages == 3
    assert seen == newest_first
    assert len(set(seen)) == len(seen)


async def test_exact_multiple_of_page_size_has_no_empty_last_page(
    api: httpx.AsyncClient,
) -> None:
    newest_first = await _tokens(api, 4)
    first = await list_tokens(api, {"page[size]": "2"})
    second = await list_tokens(api, {"page[size]": "2", "page[after]": first["pagination"]["next"]})
    assert ids(first) + ids(second) == newest_first
    assert "next" not in second["pagination"]


async def test_previous_cursor_of_a_later_page_returns_the_page_before(
    api: httpx.AsyncClient,
) -> None:
    newest_first = await _tokens(api, 7)
    first = await list_tokens(api, {"page[size]": "3"})
    second = await list_tokens(api, {"page[size]": "3", "page[after]": first["pagination"]["next"]})
    third = await list_tokens(api, {"page[size]": "3", "page[after]": second["pagination"]["next"]})
    assert ids(third) == newest_first[6:]
    back_to_second = await list_tokens(
        api, {"page[size]": "3", "page[before]": third["pagination"]["previous"]}
    )
    assert ids(back_to_second) == ids(second) == newest_first[3:6]
    back_to_first = await list_tokens(
        api, {"page[size]": "3", "page[before]": second["pagination"]["previous"]}
    )
    assert ids(back_to_first) == ids(first) == newest_first[:3]
    assert "previous" not in back_to_first["pagination"]
    assert back_to_first["pagination"]["next"] == first["pagination"]["next"]


async def test_before_wins_when_both_after_and_before_are_given(
    api: httpx.AsyncClient,
) -> None:
    newest_first = await _tokens(api, 6)
    first = await list_tokens(api, {"page[size]": "2"})
    second = await list_tokens(api, {"page[size]": "2", "page[after]": first["pagination"]["next"]})
    both = await list_tokens(
        api,
        {
            "page[size]": "2",
            "page[after]": second["pagination"]["next"],
            "page[before]": second["pagination"]["previous"],
        },
    )
    assert ids(both) == ids(first) == newest_first[:2]


async def test_paging_respects_filters(api: httpx.AsyncClient) -> None:
    tagged = []
    for i in range(5):
        tagged.append(await new_token(api, tags=["p"]))
        if i % 2:
            await new_token(api, tags=["q"])
    seen: list[str] = []
    params = {"page[size]": "2", "filter[tags]": "p"}
    while True:
        page = await list_tokens(api, params)
        seen.extend(ids(page))
        if "next" not in page["pagination"]:
            break
        params = {**params, "page[after]": page["pagination"]["next"]}
    assert seen == tagged[::-1]


async def test_empty_list_has_no_cursors(api: httpx.AsyncClient) -> None:
    assert await list_tokens(api) == {"data": [], "pagination": {}}


# schema on every route ---------------------------------------------------------------------


async def test_every_token_state_validates_against_seed_schema_with_and_without_sdk_header(
    api: httpx.AsyncClient, db_url: str
) -> None:
    waiting = await new_token(api, timeout="1h", tags=["s"], idempotencyKey="schema-1")
    done = await new_token(api)
    await complete(api, done, {"nested": {"list": [1, None, "x"]}})
    cancelled = await new_token(api)
    await cancel(api, cancelled)
    timed_out = await new_token(api, timeout="1s")
    assert await fire_timers_later(db_url, 5) == 1

    for headers in ({}, SDK_HEADERS):
        for token_id in (waiting, done, cancelled, timed_out):
            check_token(await get_token(api, token_id, **headers))
        listed = await list_tokens(api, **headers)
        assert len(listed["data"]) == 4
        for token in listed["data"]:
            check_token(token)

    token = await get_token(api, timed_out, **SDK_HEADERS)
    assert token["status"] == "TIMED_OUT"
    assert token["outputIsError"] is True
    assert json.loads(token["output"])["code"] == "TRIGGER_WAITPOINT_TIMEOUT"
    assert "cancelled" not in token


@pytest.mark.parametrize("path", [TOKENS, "/api/v1/runs"])
async def test_page_size_with_a_non_ascii_digit_is_400_not_5xx(
    api: httpx.AsyncClient, path: str
) -> None:
    response = await api.get(path, params={"page[size]": "²"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "Query Error"


async def test_create_with_iso_timeout_beyond_year_9999_in_utc_is_422_not_5xx(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(TOKENS, json={"timeout": "9999-12-31T23:59:59-05:00"}, headers=AUTH)
    assert response.status_code == 422
    assert await token_row_count(engine) == 0
