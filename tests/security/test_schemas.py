"""Token schemas never make the server fetch anything, and no pattern can stall it.

A ``$ref`` that is not local (``#...``) is refused when the token is created (422 naming the
ref, over the API and from Python); a token stored with one earlier is refused at completion,
and in neither case does a request reach the URL (a listener on 127.0.0.1 stands in for the
schema host). Patterns are matched in linear time, so a catastrophic-backtracking pattern
answers at once while ``/healthz`` keeps answering; patterns only a backtracking engine can
run (lookaround, backreferences) are refused at creation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine import Engine, ValidationError
from engine.storage import NewToken
from engine.ui.forms import form_for, schema_errors, validator_for
from tests.api.conftest import AUTH, TOKENS, api_client, token_row_count

from .conftest import Listener, ServeProcess

REDOS = "^(a+)+$"
"""Exponential on ``"aaa...!"`` in a backtracking engine (Python's ``re``), linear in Rust's."""
EVIL = "a" * 64 + "!"


def remote_schemas(url: str) -> dict[str, dict[str, Any]]:
    """Schemas that point outside themselves, each in a different place of the schema."""
    return {
        "root": {"$ref": url},
        "property": {"type": "object", "properties": {"a": {"$ref": url}}},
        "defs": {"$defs": {"x": {"$ref": url}}, "items": {"$ref": "#/$defs/x"}},
        "dynamic": {"$dynamicRef": url},
        "dialect": {"$schema": url, "type": "object"},
    }


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(engine) as client:
        yield client


@pytest.mark.parametrize("where", ["root", "property", "defs", "dynamic", "dialect"])
async def test_a_schema_pointing_at_a_url_is_refused_with_422_naming_it_and_nothing_is_fetched(
    api: httpx.AsyncClient, engine: Engine, where: str
) -> None:
    with Listener() as listener:
        schema = remote_schemas(listener.url)[where]
        response = await api.post(TOKENS, json={"schema": schema}, headers=AUTH)
        assert response.status_code == 422, response.text
        assert listener.url in response.json()["error"]
        assert listener.received == []
    assert await token_row_count(engine) == 0


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "other.json", "/schemas/x.json"])
async def test_a_file_or_relative_ref_is_refused_with_422_naming_it(
    api: httpx.AsyncClient, engine: Engine, ref: str
) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    response = await api.post(TOKENS, json={"schema": schema}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert ref in response.json()["error"]
    assert await token_row_count(engine) == 0


async def test_create_token_from_python_refuses_a_remote_ref_naming_it(engine: Engine) -> None:
    with pytest.raises(ValidationError, match="file:///etc/passwd"):
        await engine.tokens.create(schema={"$ref": "file:///etc/passwd"})
    with Listener() as listener, pytest.raises(ValidationError, match=listener.url):
        await engine.tokens.create(schema={"items": {"$ref": listener.url}})
    assert listener.received == []
    assert await token_row_count(engine) == 0


async def test_local_refs_and_pydantic_style_schemas_are_still_accepted(
    api: httpx.AsyncClient,
) -> None:
    schema = {
        "$defs": {"Reviewer": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "type": "object",
        "properties": {
            "by": {"$ref": "#/$defs/Reviewer"},
            "self": {"$ref": "#"},
            "kind": {"enum": [{"$ref": "http://data-not-a-schema.example"}, "plain"]},
        },
    }
    created = await api.post(TOKENS, json={"schema": schema}, headers=AUTH)
    assert created.status_code == 200, created.text
    done = await api.post(
        f"{TOKENS}/{created.json()['id']}/complete",
        json={"data": {"by": {"name": 5}}},
        headers=AUTH,
    )
    assert done.status_code == 422
    assert "by.name" in done.json()["error"]


async def test_a_token_stored_with_a_remote_ref_is_refused_at_completion_without_a_fetch(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    """Tokens created before refs were checked: completing one fetches nothing either."""
    with Listener() as listener:
        schema = {"type": "object", "properties": {"a": {"$ref": listener.url}}}
        token = await engine.storage.create_token(NewToken(data_schema=schema))
        response = await api.post(
            f"{TOKENS}/{token.id}/complete", json={"data": {"a": 1}}, headers=AUTH
        )
        assert response.status_code == 422, response.text
        assert listener.url in response.json()["error"]
        with pytest.raises(ValidationError, match=listener.url):
            await engine.tokens.complete(token.id, {"a": 1})
        assert listener.received == []
    assert (await engine.tokens.retrieve(token.id)).is_waiting


def test_the_ui_form_check_follows_the_same_rules_and_fetches_nothing() -> None:
    with Listener() as listener:
        schema = {"type": "object", "properties": {"a": {"$ref": listener.url}}}
        assert validator_for(schema) is None
        assert schema_errors(form_for(schema), schema, {"a": 1}) == {}
        assert listener.received == []
    assert validator_for({"type": "string", "pattern": "(?<=a)b"}) is None


@pytest.mark.parametrize("pattern", ["(?<=a)b", "(a)\\1", "(?!x)y"])
async def test_a_pattern_that_needs_backtracking_is_refused_at_creation_naming_it(
    api: httpx.AsyncClient, engine: Engine, pattern: str
) -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}
    response = await api.post(TOKENS, json={"schema": schema}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert pattern in response.json()["error"]
    assert "linear time" in response.json()["error"]
    assert await token_row_count(engine) == 0


def _complete_over_the_api(server: ServeProcess, token_id: str, code: str) -> httpx.Response:
    with server.client(timeout=30.0) as client:
        return client.post(f"{TOKENS}/{token_id}/complete", json={"data": {"code": code}})


def _submit_the_approval_form(server: ServeProcess, token_id: str, code: str) -> httpx.Response:
    with server.client(timeout=30.0) as client:
        link = client.post(f"{TOKENS}/{token_id}/approval-link", json={}).json()["url"]
        return httpx.post(
            link,
            data={"data.code": code},
            headers={"sec-fetch-site": "same-origin"},
            timeout=30.0,
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["api", "form"])
def test_a_catastrophic_pattern_answers_at_once_and_healthz_keeps_answering(
    server: ServeProcess, route: str
) -> None:
    send = _complete_over_the_api if route == "api" else _submit_the_approval_form
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": REDOS}}}
    token = server.new_token(schema=schema)
    answers: list[httpx.Response] = []
    started = time.monotonic()
    sender = threading.Thread(target=lambda: answers.append(send(server, token["id"], EVIL)))
    sender.daemon = True
    sender.start()
    for _ in range(3):
        assert server.healthy(timeout=5.0), "the server stopped answering /healthz"
    sender.join(30.0)
    assert answers, f"no answer after {time.monotonic() - started:.0f} s"
    assert answers[0].status_code == 422, answers[0].text
    assert REDOS in answers[0].text
    matching = send(server, token["id"], "aaa")
    assert matching.status_code == 200, matching.text
    with server.client() as client:
        done = client.get(f"{TOKENS}/{token['id']}").json()
    assert done["status"] == "COMPLETED"
    assert done["data"] == {"code": "aaa"}
