"""Dashboard sessions end: a one-click sign-in link works once, signing out ends the session
for every copy of its cookie, and a new secret key signs everyone out.

What ended is kept in the database (``spent_credentials``), so it holds for every server
process of that database and after restarts: checked in-process over httpx and with real
``waitpoint serve`` processes sharing one SQLite file.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine import Engine
from engine.api import create_app
from engine.errors import AuthError
from engine.ui import login_link
from engine.ui.sessions import COOKIE, Sessions

from .conftest import ServeProcess

KEY = "sk_test_waitpoint_sessions_0123456789abcdef"
BASE_URL = "http://testserver"
BROWSER = {"origin": BASE_URL}
"""What a browser sends with a form post from our own pages."""


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[Engine]:
    async with Engine(sqlite_url) as opened:
        yield opened


def browser(engine: Engine, key: str = KEY) -> httpx.AsyncClient:
    """A client on a fresh app over ``engine``: a browser of its own (cookies kept)."""
    app = create_app(engine, secret_key=key)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=BROWSER
    )


def ticket_path(key: str = KEY) -> str:
    return login_link(BASE_URL, key).removeprefix(BASE_URL)


async def test_a_one_click_link_signs_in_once(engine: Engine) -> None:
    path = ticket_path()
    async with browser(engine) as first, browser(engine) as second:
        used = await first.get(path)
        assert used.status_code == 200, used.text
        assert COOKIE in used.cookies

        again = await second.get(path)
        assert again.status_code == 401
        assert "already used" in again.text
        assert 'name="key"' in again.text  # the sign-in form, to sign in with the key
        assert "set-cookie" not in again.headers
        assert (await second.get("/ui/tokens")).status_code == 401

        assert (await first.get(path)).status_code == 401  # the same browser, too
        assert (await first.get("/ui/tokens")).status_code == 200  # its session goes on


async def test_signing_out_ends_every_copy_of_the_session_cookie(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1h")
    async with browser(engine) as signed_in, browser(engine) as thief:
        answer = await signed_in.post("/ui/login", data={"key": KEY})
        assert answer.status_code == 303
        thief.cookies.set(COOKIE, signed_in.cookies[COOKIE])
        assert (await thief.get("/ui/tokens")).status_code == 200
        assert (await thief.get("/api/v1/runs/run_x/stream")).status_code == 404

        assert (await signed_in.post("/ui/logout")).status_code == 303

        assert (await thief.get("/ui/tokens")).status_code == 401
        page = await thief.get(f"/ui/tokens/{token.id}")
        assert page.status_code == 401 and "signed out" in page.text
        assert (await thief.post(f"/ui/tokens/{token.id}/cancel")).status_code == 401
        assert (await thief.get("/api/v1/runs/run_x/stream")).status_code == 401
    assert (await engine.tokens.retrieve(token.id)).is_waiting


async def test_signing_out_one_session_leaves_the_others_signed_in(engine: Engine) -> None:
    async with browser(engine) as laptop, browser(engine) as phone:
        for client in (laptop, phone):
            assert (await client.post("/ui/login", data={"key": KEY})).status_code == 303
        assert (await laptop.post("/ui/logout")).status_code == 303
        assert (await laptop.get("/ui/tokens")).status_code == 401
        assert (await phone.get("/ui/tokens")).status_code == 200


async def test_signing_out_without_a_valid_session_is_harmless(engine: Engine) -> None:
    async with browser(engine) as client:
        assert (await client.post("/ui/logout")).status_code == 303
        client.cookies.set(COOKIE, "forged.session")
        assert (await client.post("/ui/logout")).status_code == 303
        assert (await client.post("/ui/login", data={"key": KEY})).status_code == 303
        assert (await client.get("/ui/tokens")).status_code == 200


async def test_a_new_secret_key_signs_every_session_and_link_out(engine: Engine) -> None:
    other = "sk_test_waitpoint_sessions_another_key_0123"
    unused_ticket = ticket_path()
    async with browser(engine) as old:
        assert (await old.post("/ui/login", data={"key": KEY})).status_code == 303
        session = old.cookies[COOKIE]
    async with browser(engine, key=other) as new:
        new.cookies.set(COOKIE, session)
        assert (await new.get("/ui/tokens")).status_code == 401
        assert (await new.get(unused_ticket)).status_code == 401
        assert (await new.post("/ui/login", data={"key": KEY})).status_code == 401
        assert (await new.post("/ui/login", data={"key": other})).status_code == 303
        assert (await new.get("/ui/tokens")).status_code == 200


# --- the storage, on both backends --------------------------------------------------------


async def test_a_credential_is_spent_once_and_forgotten_a_day_after_it_expired(
    db_url: str,
) -> None:
    async with Engine(db_url) as opened:
        storage = opened.storage
        now = storage.now_ms()
        assert not await storage.credential_spent("login:a")
        assert await storage.spend_credential("login:a", now + 60_000)
        assert not await storage.spend_credential("login:a", now + 60_000)
        assert await storage.credential_spent("login:a")
        assert not await storage.credential_spent("session:a")  # purposes never mix

        assert await storage.spend_credential("session:old", now - 2 * 86_400_000)
        assert await storage.spend_credential("session:b", now + 60_000)  # drops the old one
        assert not await storage.credential_spent("session:old")
        assert await storage.credential_spent("login:a")


async def test_a_database_made_before_migration_5_migrates_and_keeps_its_sessions(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session signed before the upgrade stays valid after it; signing out then works."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    module = f"engine.storage.{backend}"
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    assert len(migrations) >= 5
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:2])
        async with Engine(db_url) as old:
            assert await old.storage.migrate() == 2
            token = await old.tokens.create(timeout="1h")
    session = Sessions(KEY).issue("session", 3600)
    async with Engine(db_url) as new:
        assert await new.storage.migrate() == len(migrations)
        assert (await new.tokens.retrieve(token.id)).is_waiting
        sessions = Sessions(KEY, storage=lambda: new.storage)
        await sessions.verify(session)
        await sessions.revoke(session)
        with pytest.raises(AuthError, match="signed out"):
            await sessions.verify(session)


# --- real servers: several processes, restarts ----------------------------------------------


@contextmanager
def serving(root: Path, database: str, key: str) -> Iterator[ServeProcess]:
    """``waitpoint serve`` on ``database`` with ``key``, stopped by PID afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    process = ServeProcess(root, WAITPOINT_DATABASE_URL=database, WAITPOINT_SECRET_KEY=key)
    process.secret_key = key
    try:
        process.start()
        yield process
    finally:
        process.stop()


def page(server: ServeProcess, path: str, session: str | None = None) -> httpx.Response:
    headers = {"cookie": f"{COOKIE}={session}"} if session else {}
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        return client.get(path, headers=headers)


def post_form(
    server: ServeProcess, path: str, data: dict[str, str], session: str | None = None
) -> httpx.Response:
    headers = {"origin": server.base_url}
    if session:
        headers["cookie"] = f"{COOKIE}={session}"
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        return client.post(path, data=data, headers=headers)


def cookie_of(response: httpx.Response) -> str:
    value = response.cookies.get(COOKIE)
    assert value, response.headers
    return value


def test_a_link_and_a_signed_out_session_stay_spent_on_every_process_and_after_restarts(
    tmp_path: Path,
) -> None:
    key = "wp_test_" + secrets.token_urlsafe(32)
    database = f"sqlite:///{tmp_path}/shared.db"
    with serving(tmp_path / "a", database, key) as a, serving(tmp_path / "b", database, key) as b:
        ticket = login_link(a.base_url, key).removeprefix(a.base_url)
        session = cookie_of(page(a, ticket))
        again = page(b, ticket)
        assert again.status_code == 401 and "already used" in again.text
        assert "set-cookie" not in again.headers
        assert page(b, "/ui/tokens", session).status_code == 200

        assert post_form(a, "/ui/logout", {}, session).status_code == 303
        assert page(b, "/ui/tokens", session).status_code == 401
        assert page(a, "/ui/tokens", session).status_code == 401
        fresh = cookie_of(post_form(b, "/ui/login", {"key": key}))
    with serving(tmp_path / "a", database, key) as restarted:
        assert page(restarted, ticket).status_code == 401
        assert page(restarted, "/ui/tokens", session).status_code == 401
        assert page(restarted, "/ui/tokens", fresh).status_code == 200


def test_a_server_restarted_with_a_new_secret_key_has_signed_everyone_out(
    tmp_path: Path,
) -> None:
    database = f"sqlite:///{tmp_path}/engine.db"
    old_key = "wp_test_" + secrets.token_urlsafe(32)
    new_key = "wp_test_" + secrets.token_urlsafe(32)
    with serving(tmp_path / "old", database, old_key) as server:
        session = cookie_of(post_form(server, "/ui/login", {"key": old_key}))
        unused = login_link(server.base_url, old_key).removeprefix(server.base_url)
        assert page(server, "/ui/tokens", session).status_code == 200
    with serving(tmp_path / "new", database, new_key) as server:
        assert page(server, "/ui/tokens", session).status_code == 401
        assert page(server, unused).status_code == 401
        assert post_form(server, "/ui/login", {"key": old_key}).status_code == 401
        session = cookie_of(post_form(server, "/ui/login", {"key": new_key}))
        assert page(server, "/ui/tokens", session).status_code == 200
