"""Wrong credentials are rate-limited per client address.

About ``WAITPOINT_AUTH_FAILURES_PER_MINUTE`` (10) wrong credentials a minute from one address
(API key, public access token, sign-in form, approval link: one budget), then 429 with
``Retry-After`` for every credential from it, the right key included, until the budget
refills. Other addresses, and browsers already signed in, are not affected. The address is
the socket peer unless ``WAITPOINT_TRUSTED_PROXIES`` says to believe a proxy.

In-process tests stop the limiter's clock, so nothing depends on how fast the machine is; the
real-server tests allow one failure a minute, so a refill would need a minute-long stall.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from engine import Engine, Settings
from engine.api import create_app
from engine.api.auth import Auth
from engine.api.limits import FailureLimiter, client_address
from engine.signing import approval_url
from engine.ui.sessions import COOKIE
from tests.api.conftest import sign_jwt

from .conftest import ServeProcess
from .test_credentials_first import Tripwire

KEY = "sk_test_waitpoint_rate_limits_0123456789abcdef"
WRONG = {"Authorization": "Bearer sk_wrong_0123456789abcdef0123456789abcdef"}
RIGHT = {"Authorization": f"Bearer {KEY}"}
BASE_URL = "http://testserver"
TOKENS = "/api/v1/waitpoints/tokens"


class StoppedClock:
    """The limiter's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[Engine]:
    async with Engine(sqlite_url) as opened:
        yield opened


@pytest.fixture
def clock() -> StoppedClock:
    return StoppedClock()


def limited_app(engine: Engine, clock: StoppedClock, per_minute: int | None = None) -> FastAPI:
    settings = engine.settings
    if per_minute is not None:
        settings = settings.model_copy(update={"auth_failures_per_minute": per_minute})
    app = create_app(engine, secret_key=KEY, settings=settings)
    app.state.credential_limiter.clock = clock
    return app


@pytest.fixture
def app(engine: Engine, clock: StoppedClock) -> FastAPI:
    return limited_app(engine, clock)


@asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser or script at ``address`` (the ASGI scope's client, as uvicorn sets it)."""
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers={"origin": BASE_URL}
    ) as client:
        yield client


async def spend_budget(client: httpx.AsyncClient, times: int = 10) -> None:
    for attempt in range(times):
        answer = await client.get(TOKENS, headers=WRONG)
        assert answer.status_code == 401, (attempt, answer.text)


async def test_ten_wrong_api_keys_then_429_with_retry_after_for_the_right_key_too(
    app: FastAPI, clock: StoppedClock
) -> None:
    async with client_from(app, "198.51.100.7") as client:
        await spend_budget(client)
        refused = await client.get(TOKENS, headers=WRONG)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "6"
        assert "too many wrong credentials" in refused.json()["error"]

        right = await client.get(TOKENS, headers=RIGHT)
        assert right.status_code == 429  # else 200 vs 429 would tell the right key apart
        assert int(right.headers["retry-after"]) >= 1

        clock.now += 6  # one attempt's worth refilled
        assert (await client.get(TOKENS, headers=RIGHT)).status_code == 200
        assert (await client.get(TOKENS, headers=WRONG)).status_code == 401
        assert (await client.get(TOKENS, headers=WRONG)).status_code == 429

        clock.now += 60  # a whole budget
        await spend_budget(client)


async def test_the_right_key_from_another_address_is_not_locked_out(app: FastAPI) -> None:
    async with (
        client_from(app, "198.51.100.7") as attacker,
        client_from(app, "192.0.2.10") as owner,
    ):
        await spend_budget(attacker)
        assert (await attacker.get(TOKENS, headers=RIGHT)).status_code == 429
        assert (await owner.get(TOKENS, headers=RIGHT)).status_code == 200
        assert (await owner.post("/ui/login", data={"key": KEY})).status_code == 303
        await spend_budget(owner)  # a budget of its own


async def test_a_limited_address_is_refused_before_its_body_is_read(app: FastAPI) -> None:
    async with client_from(app, "198.51.100.7") as client:
        await spend_budget(client)
        body = Tripwire(b'{"data": 1}')
        answer = await client.post(
            f"{TOKENS}/waitpoint_x/complete",
            content=body,
            headers={**RIGHT, "content-type": "application/json"},
        )
        assert answer.status_code == 429
        assert not body.pulled


async def test_wrong_keys_on_the_sign_in_form_share_the_budget_and_get_a_429_page(
    app: FastAPI,
) -> None:
    async with client_from(app, "198.51.100.7") as client:
        await spend_budget(client, 5)
        for _ in range(5):
            wrong = await client.post("/ui/login", data={"key": "not-the-key"})
            assert wrong.status_code == 401
        refused = await client.post("/ui/login", data={"key": KEY})
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("text/html")
        assert int(refused.headers["retry-after"]) >= 1
        assert "Too many attempts" in refused.text
        assert "set-cookie" not in refused.headers
        assert (await client.get(TOKENS, headers=RIGHT)).status_code == 429


async def test_wrong_sign_ins_alone_reach_the_limit(app: FastAPI) -> None:
    async with client_from(app, "198.51.100.7") as client:
        for _ in range(10):
            assert (await client.post("/ui/login", data={"key": "nope"})).status_code == 401
        assert (await client.post("/ui/login", data={"key": KEY})).status_code == 429
        assert (await client.get(TOKENS, headers=RIGHT)).status_code == 429


async def test_forged_tokens_and_wrong_approval_links_count_and_are_refused_too(
    app: FastAPI, engine: Engine
) -> None:
    token = await engine.tokens.create(timeout="1h")
    link = urlsplit(approval_url(BASE_URL, Auth(KEY), token.id, "1h"))
    good_link = f"{link.path}?{link.query}"
    forged = {"Authorization": "Bearer " + sign_jwt(["write:waitpoints:*"], key="x" * 40)}
    async with client_from(app, "198.51.100.7") as client:
        for _ in range(5):
            answer = await client.get(TOKENS, headers=forged)
            assert answer.status_code == 401
        for guess in ("nope", "a.b.c", sign_jwt([f"write:waitpoints:{token.id}"], key="y" * 40)):
            answer = await client.get(f"/ui/approve/{token.id}", params={"t": guess})
            assert answer.status_code == 401
        for _ in range(2):
            answer = await client.get(f"/ui/approve/{token.id}", params={"t": "still-wrong"})
            assert answer.status_code == 401

        for t in (KEY, "wrong-again"):  # the key in a link: 429, not its own 403
            refused = await client.get(f"/ui/approve/{token.id}", params={"t": t})
            assert refused.status_code == 429
            assert "retry-after" in refused.headers
        assert (await client.get(good_link)).status_code == 429
        assert (await client.post(good_link, data={"json": "1"})).status_code == 429
    assert (await engine.tokens.retrieve(token.id)).is_waiting
    async with client_from(app, "192.0.2.10") as reviewer:
        assert (await reviewer.get(good_link)).status_code == 200


async def test_a_browser_signed_in_keeps_working_while_its_address_is_limited(
    app: FastAPI,
) -> None:
    async with client_from(app, "198.51.100.7") as client:
        assert (await client.post("/ui/login", data={"key": KEY})).status_code == 303
        await spend_budget(client)
        assert (await client.get(TOKENS, headers=RIGHT)).status_code == 429
        assert (await client.get("/ui/tokens")).status_code == 200
        assert (await client.get("/api/v1/runs/run_x/stream")).status_code == 404
        assert (await client.post("/ui/logout")).status_code == 303
        assert (await client.post("/ui/login", data={"key": KEY})).status_code == 429


async def test_requests_without_a_bearer_credential_never_count(
    app: FastAPI, engine: Engine
) -> None:
    async with client_from(app, "198.51.100.7") as client:
        for headers in ({}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}):
            for _ in range(12):
                answer = await client.get(TOKENS, headers=headers)
                assert answer.status_code == 401
        for _ in range(12):
            assert (await client.get("/ui/tokens")).status_code == 401  # no session
            assert (await client.get("/ui/login", params={"t": "x.y"})).status_code == 401
        assert (await client.get(TOKENS, headers=RIGHT)).status_code == 200
        assert (await client.post("/ui/login", data={"key": KEY})).status_code == 303


async def test_the_budget_follows_the_setting(engine: Engine, clock: StoppedClock) -> None:
    app = limited_app(engine, clock, per_minute=3)
    async with client_from(app, "198.51.100.7") as client:
        await spend_budget(client, 3)
        refused = await client.get(TOKENS, headers=RIGHT)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "20"


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().auth_failures_per_minute == 10
    assert Settings().trusted_proxies == ""
    monkeypatch.setenv("WAITPOINT_AUTH_FAILURES_PER_MINUTE", "3")
    monkeypatch.setenv("WAITPOINT_TRUSTED_PROXIES", "10.0.0.1,10.0.1.0/24")
    assert Settings().auth_failures_per_minute == 3
    assert Settings().trusted_proxies == "10.0.0.1,10.0.1.0/24"
    monkeypatch.setenv("WAITPOINT_AUTH_FAILURES_PER_MINUTE", "0")
    with pytest.raises(ValueError):
        Settings()


async def test_ipv6_clients_are_counted_per_64_network(app: FastAPI) -> None:
    assert client_address("2001:db8::1") == client_address("2001:db8::ffff:7") == "2001:db8::/64"
    assert client_address("2001:db8:0:1::1") != client_address("2001:db8::1")
    assert client_address("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_address(None) == "unknown"
    async with (
        client_from(app, "2001:db8::1") as first,
        client_from(app, "2001:db8::2") as neighbour,
        client_from(app, "2001:db8:0:1::1") as elsewhere,
    ):
        await spend_budget(first)
        assert (await neighbour.get(TOKENS, headers=RIGHT)).status_code == 429
        assert (await elsewhere.get(TOKENS, headers=RIGHT)).status_code == 200


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    clock = StoppedClock()
    limiter = FailureLimiter(2, clock=clock, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
        clock.now += 0.001
    assert len(limiter) <= 100
    limiter.failed("192.0.2.1")
    limiter.failed("192.0.2.1")
    for n in range(150):  # others keep failing: the latest, limited address stays limited
        limiter.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(limiter) <= 100
    assert limiter.retry_after("192.0.2.1") == 30


# --- a real server: which address counts ------------------------------------------------


@contextmanager
def limited_server(root: Path, **env: str) -> Iterator[ServeProcess]:
    """``waitpoint serve`` allowing one wrong credential a minute per address."""
    process = ServeProcess(root, WAITPOINT_AUTH_FAILURES_PER_MINUTE="1", **env)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def call(
    server: ServeProcess, key: str, *, source: str = "127.0.0.1", forwarded: str | None = None
) -> httpx.Response:
    """``GET /api/v1/waitpoints/tokens`` with ``key``, from the loopback address ``source``."""
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.base_url, transport=transport, timeout=10.0) as client:
        return client.get(TOKENS, headers=headers)


def test_on_a_real_server_the_client_is_the_socket_peer_whatever_it_forwards(
    tmp_path: Path,
) -> None:
    with limited_server(tmp_path) as server:
        wrong = "wp_wrong_" + secrets.token_urlsafe(32)
        assert call(server, wrong, forwarded="203.0.113.1").status_code == 401
        refused = call(server, wrong, forwarded="203.0.113.2")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 1
        assert call(server, server.secret_key, forwarded="203.0.113.3").status_code == 429
        assert call(server, server.secret_key, source="127.0.0.2").status_code == 200
        signed_in = httpx.post(
            f"{server.base_url}/ui/login",
            data={"key": server.secret_key},
            headers={"origin": server.base_url},
        )
        assert signed_in.status_code == 429
        assert COOKIE not in signed_in.cookies


def test_behind_a_trusted_proxy_the_forwarded_address_counts(tmp_path: Path) -> None:
    with limited_server(tmp_path, WAITPOINT_TRUSTED_PROXIES="127.0.0.1") as proxy:
        wrong = "wp_wrong_" + secrets.token_urlsafe(32)
        assert call(proxy, wrong, forwarded="203.0.113.1").status_code == 401
        assert call(proxy, wrong, forwarded="203.0.113.1").status_code == 429
        # a client that writes its own X-Forwarded-For: the proxy appends the real address
        assert call(proxy, wrong, forwarded="203.0.113.9, 203.0.113.1").status_code == 429
        assert call(proxy, proxy.secret_key, forwarded="203.0.113.1").status_code == 429
        assert call(proxy, proxy.secret_key, forwarded="203.0.113.2").status_code == 200
