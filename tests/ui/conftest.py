"""Fixtures for the browser UI tests: the app in-process over httpx, signed in or not.

``ui`` is an anonymous client (cookies kept, like a browser) on ``create_app`` over a SQLite
engine; ``dashboard`` is the same after signing in with the secret key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import BaseModel

from engine import Engine, Settings
from engine.api import create_app

KEY = "sk_test_waitpoint_ui_tests_0123456789abcdef"
BASE_URL = "http://testserver"


class Decision(BaseModel):
    """The completion data of an approval: what the generated form is built from."""

    approved: bool
    reviewer: str
    level: int = 1
    note: str = ""


@pytest.fixture
async def ui_engine(sqlite_url: str) -> AsyncIterator[Engine]:
    # the key the app gets: as in a server, the engine signs callback URLs with it too
    async with Engine(sqlite_url, settings=Settings(secret_key=KEY)) as opened:
        yield opened


def client_for(engine: Engine, key: str = KEY) -> httpx.AsyncClient:
    """Like a browser, the client sends its ``Origin`` (form posts without one are refused)."""
    app = create_app(engine, secret_key=key)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers={"origin": BASE_URL}
    )


@pytest.fixture
async def ui(ui_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(ui_engine) as client:
        yield client


@pytest.fixture
async def dashboard(ui_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(ui_engine) as client:
        answer = await client.post("/ui/login", data={"key": KEY, "next": "/ui/tokens"})
        assert answer.status_code == 303, answer.text
        yield client


def local_path(url: str) -> str:
    """Path and query of an absolute link (links carry the configured public URL)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def field_errors(html: str) -> dict[str, str]:
    """``{input id: message}`` for every message shown next to a field."""
    found = re.findall(r'<p class="error" id="([^"]+)-error">([^<]*)</p>', html)
    return {field: unescape(message) for field, message in found}


def alert(html: str) -> str:
    match = re.search(r'<div class="alert" role="alert"><p>([^<]*)</p>', html)
    return unescape(match.group(1)) if match else ""
