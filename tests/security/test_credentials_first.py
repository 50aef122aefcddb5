"""Credentials are checked before any byte of a request body is read.

A caller without the secret key, the callback signature, the token's public access token or a
valid approval link gets its 401/403 from the headers alone: an invalid or oversized body does
not turn it into a 400 or a 413, and the server never pulls the body (in-process, a streamed
body whose generator records whether it was pulled; on a real server, a request whose declared
body never arrives is answered at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from engine import Engine
from engine.models import TaskInfo
from tests.api.conftest import AUTH, TOKENS, api_client, bearer, sign_jwt, token_row_count

from .conftest import ServeProcess, read_response, status_of

TASK = "credentials-first"
HUGE = 50 * 1024 * 1024
"""A declared length far over the 1 MiB body limit."""


class Tripwire:
    """A streamed request body that records whether the server ever asked for a byte of it."""

    def __init__(self, payload: bytes = b"{not json at all") -> None:
        self.payload = payload
        self.pulled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.pulled = True
        yield self.payload


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


async def _token(api: httpx.AsyncClient) -> tuple[str, str, str]:
    created = await api.post(TOKENS, json={}, headers=AUTH)
    assert created.status_code == 200, created.text
    return (
        created.json()["id"],
        urlsplit(created.json()["url"]).path,
        created.headers["x-trigger-jwt"],
    )


ROUTES = {
    "create": TOKENS,
    "complete": TOKENS + "/{token}/complete",
    "trigger": f"/api/v1/tasks/{TASK}/trigger",
    "approval-link": TOKENS + "/{token}/approval-link",
}
WRONG = {
    "no key": {},
    "wrong key": bearer("sk_wrong_0123456789abcdef0123456789abcdef"),
    "lowercase scheme, wrong key": {"Authorization": "bearer not-the-key"},
    "forged token": {"Authorization": "Bearer " + sign_jwt(["write:waitpoints:*"], key="x" * 40)},
}


@pytest.mark.parametrize("declared", ["small", "huge"])
@pytest.mark.parametrize("credentials", sorted(WRONG))
@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_without_credentials_the_body_is_never_read_and_the_answer_is_401(
    api: httpx.AsyncClient, engine: Engine, route: str, credentials: str, declared: str
) -> None:
    token_id, _, _ = await _token(api)
    body = Tripwire()
    length = len(body.payload) if declared == "small" else HUGE
    response = await api.post(
        ROUTES[route].format(token=token_id),
        content=body,
        headers={
            **WRONG[credentials],
            "content-type": "application/json",
            "content-length": str(length),
        },
    )
    assert response.status_code == 401, response.text
    assert not body.pulled, "the server read the body of an unauthenticated request"
    assert await token_row_count(engine) == 1
    assert (await engine.tokens.retrieve(token_id)).is_waiting


@pytest.mark.parametrize("route", ["create", "trigger", "approval-link", "complete-another"])
async def test_a_public_token_where_it_is_not_enough_is_403_without_reading_the_body(
    api: httpx.AsyncClient, engine: Engine, route: str
) -> None:
    token_id, _, public = await _token(api)
    other_id, _, _ = await _token(api)
    path = ROUTES["complete" if route == "complete-another" else route]
    body = Tripwire()
    response = await api.post(
        path.format(token=other_id if route == "complete-another" else token_id),
        content=body,
        headers={"Authorization": f"Bearer {public}", "content-type": "application/json"},
    )
    assert response.status_code == 403, response.text
    assert not body.pulled
    assert (await engine.tokens.retrieve(other_id)).is_waiting


async def test_with_credentials_the_body_is_read_and_judged(api: httpx.AsyncClient) -> None:
    token_id, _, public = await _token(api)
    body = Tripwire()
    response = await api.post(
        f"{TOKENS}/{token_id}/complete",
        content=body,
        headers={"Authorization": f"Bearer {public}", "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert body.pulled
    big = Tripwire(b"{}")
    response = await api.post(
        f"{TOKENS}/{token_id}/complete",
        content=big,
        headers={**AUTH, "content-type": "application/json", "content-length": str(HUGE)},
    )
    assert response.status_code == 413, response.text


async def test_a_callback_with_a_wrong_signature_is_401_without_reading_the_body(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    token_id, callback, _ = await _token(api)
    wrong = callback[:-1] + ("0" if callback[-1] != "0" else "1")
    for length in (16, HUGE):
        body = Tripwire()
        response = await api.post(wrong, content=body, headers={"content-length": str(length)})
        assert response.status_code == 401, response.text
        assert not body.pulled
    assert (await engine.tokens.retrieve(token_id)).is_waiting


@pytest.mark.parametrize("page", ["approve", "vote"])
async def test_an_approval_form_without_a_valid_link_is_401_without_reading_the_body(
    api: httpx.AsyncClient, engine: Engine, page: str
) -> None:
    """The one-link approval page and an approver's voting page alike."""
    token_id, _, _ = await _token(api)
    body = Tripwire(b"data.approved=true")
    response = await api.post(
        f"/ui/{page}/{token_id}?t=not-a-link",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded", "content-length": "18"},
    )
    assert response.status_code == 401
    assert not body.pulled
    assert (await engine.tokens.retrieve(token_id)).is_waiting


@pytest.mark.parametrize("declared", [1_000_000, HUGE])
@pytest.mark.parametrize(
    "path", [TOKENS, f"{TOKENS}/waitpoint_x/complete", "/api/v1/tasks/anything/trigger"]
)
def test_a_real_server_answers_401_before_a_declared_body_arrives(
    server: ServeProcess, path: str, declared: int
) -> None:
    """Headers only: the body never comes, and the answer does not wait for it."""
    with server.connect(timeout=10.0) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {declared}\r\n\r\n".encode()
        )
        response = read_response(sock)
    assert status_of(response) == 401, response[:300]
