"""Fixtures and helpers for the in-process REST API tests (httpx over ASGITransport).

``api`` is an ``httpx.AsyncClient`` on ``create_app(engine, secret_key=KEY)``. Every token JSON
the API answers with (retrieve, list, cancel) is checked against the seed schema by a
response hook, so no route can slip a non-conforming token past the tests.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from jsonschema import Draft7Validator, FormatChecker

from engine import Engine, Settings
from engine.api import create_app
from engine.signing import AUDIENCE, ISSUER
from engine.storage.sql import rows

KEY = "sk_test_waitpoint_api_tests_0123456789abcdef"  # >= 32 bytes: PyJWT does not warn
BASE_URL = "http://testserver"
TOKENS = "/api/v1/waitpoints/tokens"
SDK_HEADERS = {"x-trigger-api-version": "2025-07-16"}

SCHEMA = json.loads((Path(__file__).parent.parent / "waitpoint-token.schema.json").read_text())
_formats = FormatChecker()


@_formats.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time with an offset")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@_formats.checks("uri", raises=ValueError)
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{value!r} is not an absolute URI")
    return True


TOKEN_VALIDATOR = Draft7Validator(SCHEMA, format_checker=_formats)
Draft7Validator.check_schema(SCHEMA)


def check_token(body: Any) -> dict[str, Any]:
    """Assert ``body`` is a token the seed schema accepts; return it."""
    errors = sorted(TOKEN_VALIDATOR.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    assert isinstance(body, dict)
    return body


def null_keys(value: Any, path: str = "$") -> list[str]:
    """Every JSON path in ``value`` whose value is null."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None:
                found.append(f"{path}.{key}")
            else:
                found.extend(null_keys(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(null_keys(item, f"{path}[{index}]"))
    return found


def sdk_nulls(token: dict[str, Any]) -> list[str]:
    """Null values in a token's fields, the completion ``data`` (any JSON) aside."""
    return [path for path in null_keys(token) if not re.match(r"^\$\.data(\b|$)", path)]


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


AUTH = bearer()


def path_of(url: str) -> str:
    """The path of an absolute URL (callback URLs carry the configured public base)."""
    return urlsplit(url).path


def sign_jwt(
    scopes: list[str],
    *,
    key: str = KEY,
    algorithm: str = "HS256",
    **overrides: Any,
) -> str:
    """A public access token as Trigger.dev issues them; ``overrides`` replace claims."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "waitpoint",
        "pub": True,
        "scopes": scopes,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=algorithm)


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _is_token_route(request: httpx.Request) -> bool:
    path = request.url.path
    if not path.startswith(TOKENS):
        return False
    rest = path[len(TOKENS) :].strip("/").split("/")
    if request.method == "GET":
        return len(rest) == 1  # list or retrieve (not a token's receipt)
    return request.method == "POST" and len(rest) == 2 and rest[1] == "cancel"


async def _validate_tokens(response: httpx.Response) -> None:
    """Response hook: every token the token routes answer with matches the seed schema."""
    if response.status_code != 200 or not _is_token_route(response.request):
        return
    await response.aread()
    body = response.json()
    rest = response.request.url.path[len(TOKENS) :].strip("/")
    tokens = body["data"] if response.request.method == "GET" and not rest else [body]
    for token in tokens:
        check_token(token)
        if "x-trigger-api-version" in response.request.headers:
            assert not sdk_nulls(token), sdk_nulls(token)
            assert token["status"] != "CANCELLED"


@asynccontextmanager
async def api_client(
    engine: Engine, *, secret_key: str = KEY, settings: Settings | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, secret_key=secret_key, settings=settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url=BASE_URL,
        event_hooks={"response": [_validate_tokens]},
    ) as client:
        yield client


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(engine) as client:
        yield client


class ShiftedClock:
    """The system clock moved ``seconds`` ahead (fires timers without sleeping)."""

    def __init__(self, seconds: float) -> None:
        self.offset_ms = int(seconds * 1000)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


async def fire_timers_later(db_url: str, seconds: float) -> int:
    """Fire every token timer due ``seconds`` from now, through a second engine on the file."""
    async with Engine(db_url, clock=ShiftedClock(seconds)) as later:
        return await later.storage.fire_due_timers(1000)


async def create_token(api: httpx.AsyncClient, **body: Any) -> httpx.Response:
    response = await api.post(TOKENS, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response


async def new_token(api: httpx.AsyncClient, **body: Any) -> str:
    token_id: str = (await create_token(api, **body)).json()["id"]
    return token_id


async def get_token(api: httpx.AsyncClient, token_id: str, **headers: str) -> dict[str, Any]:
    response = await api.get(f"{TOKENS}/{token_id}", headers={**AUTH, **headers})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def token_row_count(engine: Engine) -> int:
    query = rows("SELECT count(*) AS n FROM waitpoints")
    found = await engine.storage._read(query)  # type: ignore[attr-defined]
    return int(found[0]["n"])
