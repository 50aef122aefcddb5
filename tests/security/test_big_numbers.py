"""Numbers Python will not convert (over 4,300 digits) are client mistakes: 4xx, never a 5xx.

``json.loads`` raises a plain ValueError (not a JSONDecodeError) for such an integer, and
``int()`` does the same for durations and page sizes. Every route that parses JSON answers
400 and changes nothing; options that hold a number in text (a duration, ``page[size]``, a
superjson payload) are refused as the bad value they are, and the UI forms put the message
next to the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from engine import Engine, Settings, ValidationError
from engine.api import create_app
from engine.models import TaskInfo
from engine.signing import message_subject
from tests.api.conftest import AUTH, TOKENS, api_client, token_row_count
from tests.ui.conftest import alert, field_errors

BIG = "9" * 5000
TASK = "big-numbers"
JSON_ROUTES = {
    "POST /api/v1/waitpoints/tokens",
    "POST /api/v1/waitpoints/tokens/{token_id}/complete",
    "POST /api/v1/waitpoints/tokens/{token_id}/cancel",
    "POST /api/v1/waitpoints/tokens/{token_id}/callback/{signature}",
    "POST /api/v1/tasks/{task_id}/trigger",
    "POST /api/v1/waitpoints/tokens/{token_id}/approval-link",
    "POST /api/v1/runs/{run_id}/replay",
    "POST /api/v1/runs/{run_id}/fork",
    "POST /api/v1/runs/{run_id}/migrate",
    "POST /api/v1/runs/{run_id}/messages/{topic}",
    "POST /api/v1/purge",
    "POST /api/v1/tasks/batch",
    "POST /api/v1/schedules",
    "PUT /api/v1/schedules/{schedule_id}",
    "POST /api/v1/runs/{run_id}/messages/{topic}/{signature}",
    "POST /api/v1/approvals/{approval_id}/votes",
    "POST /api/v1/approvals/{approval_id}/links",
    "POST /api/v1/approvals/inbox-link",
    "POST /api/v1/waitpoints/receipts/verify",
}
BODIES = {
    "alone": BIG,
    "negative": "-" + BIG,
    "in-data": '{"data": ' + BIG + "}",
    "nested": '{"data": [1, {"n": [' + BIG + "]}], " + '"payload": {"n": ' + BIG + "}}",
}


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[Engine]:
    """SQLite only: what is checked here happens before the storage is reached."""
    async with Engine(sqlite_url) as opened:
        yield opened


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    await engine.storage.register_tasks([TaskInfo(TASK)])
    async with api_client(engine) as client:
        yield client


async def _waiting_token(api: httpx.AsyncClient) -> tuple[str, str, str]:
    """A new token's id, callback path and public access token."""
    created = await api.post(TOKENS, json={}, headers=AUTH)
    assert created.status_code == 200, created.text
    body = created.json()
    return body["id"], urlsplit(body["url"]).path, created.headers["x-trigger-jwt"]


def test_the_matrix_covers_every_route_that_takes_a_json_body() -> None:
    unopened = Engine(settings=Settings(database_url="sqlite:///never-opened.db"))
    app = create_app(unopened, secret_key="k" * 32)
    with_bodies = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert with_bodies == JSON_ROUTES


@pytest.mark.parametrize("route", sorted(JSON_ROUTES))
@pytest.mark.parametrize("body", sorted(BODIES))
async def test_a_number_too_long_for_python_is_400_on_every_json_route(
    api: httpx.AsyncClient, engine: Engine, route: str, body: str
) -> None:
    token_id, callback, public = await _waiting_token(api)
    path = route.split(" ", 1)[1]
    path = path.replace("{task_id}", TASK).replace("{token_id}", token_id)
    path = path.replace("{run_id}", "run_never_reached").replace("{topic}", "t")  # refused first
    headers = {**AUTH, "content-type": "application/json"}
    if "/messages/" in path and "{signature}" in path:  # signed for this run and topic
        signature = engine.signer.signature(message_subject("run_never_reached", "t"))
        path, headers = path.replace("{signature}", signature), {"content-type": "application/json"}
    elif "{signature}" in path:
        path, headers = callback, {"content-type": "application/json"}
    path = path.replace("{schedule_id}", "sched_never_reached")
    path = path.replace("{approval_id}", "waitpoint_never_reached")
    method = route.split(" ", 1)[0]
    response = await api.request(method, path, content=BODIES[body].encode(), headers=headers)
    assert response.status_code == 400, response.text
    assert "4300 digits" in response.json()["error"]
    if route.endswith("/complete"):  # and with the token's own public access token
        again = await api.post(
            path,
            content=BODIES[body].encode(),
            headers={"Authorization": f"Bearer {public}", "content-type": "application/json"},
        )
        assert again.status_code == 400, again.text
    token = await engine.tokens.retrieve(token_id)
    assert token.is_waiting and token.data is None
    assert await token_row_count(engine) == 1
    assert (await engine.runs.list()).data == []


@pytest.mark.parametrize(
    "query",
    [
        f"page[size]={BIG}",
        f"filter[createdAt][period]={BIG}s",
        f"filter[createdAt][from]={BIG}",
    ],
)
@pytest.mark.parametrize("listing", ["/api/v1/runs", TOKENS])
async def test_long_numbers_in_list_queries_are_400(
    api: httpx.AsyncClient, listing: str, query: str
) -> None:
    response = await api.get(f"{listing}?{query}", headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Query Error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TOKENS, {"timeout": BIG + "s"}),
        (TOKENS, {"idempotencyKey": "k", "idempotencyKeyTTL": BIG + "h"}),
        (f"/api/v1/tasks/{TASK}/trigger", {"options": {"delay": BIG + "m"}}),
        (f"/api/v1/tasks/{TASK}/trigger", {"options": {"ttl": BIG + "s"}}),
        (
            f"/api/v1/tasks/{TASK}/trigger",
            {
                "payload": '{"json": ' + BIG + "}",
                "options": {"payloadType": "application/super+json"},
            },
        ),
        (
            f"/api/v1/tasks/{TASK}/trigger",
            {"payload": BIG, "options": {"payloadType": "application/json"}},
        ),
    ],
    ids=["timeout", "key-ttl", "delay", "ttl", "superjson", "json-text"],
)
async def test_long_numbers_in_text_options_are_422_and_create_nothing(
    api: httpx.AsyncClient, engine: Engine, path: str, body: dict[str, object]
) -> None:
    response = await api.post(path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert await token_row_count(engine) == 0
    assert (await engine.runs.list()).data == []


async def test_an_approval_link_that_lasts_a_long_number_of_hours_is_422(
    api: httpx.AsyncClient,
) -> None:
    token_id, _, _ = await _waiting_token(api)
    response = await api.post(
        f"{TOKENS}/{token_id}/approval-link", json={"expiresIn": BIG + "h"}, headers=AUTH
    )
    assert response.status_code == 422, response.text


async def test_python_refuses_a_long_number_in_a_duration_with_a_validation_error(
    engine: Engine,
) -> None:
    with pytest.raises(ValidationError, match="100 years"):
        await engine.tokens.create(timeout=BIG + "s")


@pytest.mark.parametrize(
    ("schema", "field", "text"),
    [
        ({"type": "object", "properties": {"n": {"type": "integer"}}}, "n", BIG),
        ({"type": "object", "properties": {"n": {"type": "number"}}}, "n", "-" + BIG),
        ({"type": "object", "properties": {"n": {"type": "object"}}}, "n", '{"a": ' + BIG + "}"),
        (None, "", "[" + BIG + "]"),
    ],
    ids=["integer", "number", "json-field", "json-editor"],
)
async def test_a_long_number_in_an_approval_form_is_refused_at_its_field(
    api: httpx.AsyncClient,
    engine: Engine,
    schema: dict[str, object] | None,
    field: str,
    text: str,
) -> None:
    created = await api.post(TOKENS, json={"schema": schema} if schema else {}, headers=AUTH)
    token_id = created.json()["id"]
    link = await api.post(f"{TOKENS}/{token_id}/approval-link", json={}, headers=AUTH)
    url = urlsplit(link.json()["url"])
    name = f"data.{field}" if field else "json"
    response = await api.post(  # from the approval page, as a browser sends it
        f"{url.path}?{url.query}", data={name: text}, headers={"origin": "http://testserver"}
    )
    assert response.status_code == 422, response.text[:300]
    messages = [*field_errors(response.text).values(), alert(response.text)]
    assert any("4300 digits" in message for message in messages), messages
    token = await engine.tokens.retrieve(token_id)
    assert token.is_waiting and token.data is None
