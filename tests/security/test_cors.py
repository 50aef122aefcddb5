"""CORS on a real ``waitpoint serve``: by the standard, and only where meant.

The preflight of the public-token routes (complete a token, retrieve a run: what
``useWaitToken`` and ``useRun`` call) names ``Authorization`` (the Fetch standard's ``*`` does
not cover it), ``Content-Type`` and the SDK's headers, and never answers ``*``. Only those
routes, and only for their own method, answer other origins: the rest of the API, the
browser UI under ``/ui`` (a ``/ui/.../complete`` form post included), ``/docs`` and
``/openapi.json`` send no ``Access-Control-*`` header, to simple requests and preflights
alike. What Chromium does with these answers is tested in ``test_react_hooks_cors.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.api.auth import Auth
from tests.security.conftest import TOKENS, ServeProcess

ORIGIN = "https://frontend.example"
SDK_HEADERS = [
    "authorization",
    "content-type",
    "trigger-version",
    "x-trigger-api-version",
    "x-trigger-client",
    "x-trigger-realtime-streams-version",
    "x-trigger-request-idempotency-key",
    "x-trigger-source",
]


@pytest.fixture
def anonymous(server: ServeProcess) -> Iterator[httpx.Client]:
    """A client without the key: what a page on another origin has."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def preflight(
    client: httpx.Client, path: str, method: str = "POST", headers: str = ""
) -> httpx.Response:
    ask = {"Origin": ORIGIN, "Access-Control-Request-Method": method}
    if headers:
        ask["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=ask)


def allowed_headers(response: httpx.Response) -> list[str]:
    return [
        name.strip().lower()
        for name in response.headers.get("access-control-allow-headers", "").split(",")
        if name.strip()
    ]


def test_the_complete_preflight_names_authorization_and_the_sdk_headers(
    server: ServeProcess, anonymous: httpx.Client
) -> None:
    token = server.new_token()
    asked = [*SDK_HEADERS, "x-trigger-added-in-a-later-sdk"]
    answer = preflight(anonymous, f"{TOKENS}/{token['id']}/complete", headers=",".join(asked))
    assert answer.status_code == 204, answer.text
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "POST" in answer.headers["access-control-allow-methods"].split(", ")
    allowed = allowed_headers(answer)
    assert "*" not in allowed, answer.headers
    assert set(asked) <= set(allowed), answer.headers
    assert "access-control-allow-credentials" not in answer.headers
    assert "Access-Control-Request-Headers" in answer.headers.get("vary", "")
    # A preflight that names no headers still learns the SDK's own (a cached answer covers them).
    bare = preflight(anonymous, f"{TOKENS}/{token['id']}/complete")
    assert set(SDK_HEADERS) <= set(allowed_headers(bare)), bare.headers


def test_the_preflight_allows_no_header_beyond_the_sdks(
    server: ServeProcess, anonymous: httpx.Client
) -> None:
    token = server.new_token()
    answer = preflight(
        anonymous,
        f"{TOKENS}/{token['id']}/complete",
        headers="authorization, cookie-ish, x-forwarded-for, x-trigger-client",
    )
    allowed = allowed_headers(answer)
    assert "authorization" in allowed and "x-trigger-client" in allowed
    assert not {"cookie-ish", "x-forwarded-for", "*"} & set(allowed), answer.headers


def test_every_answer_of_the_complete_route_is_readable_cross_origin(
    server: ServeProcess, anonymous: httpx.Client
) -> None:
    token = server.new_token()
    path = f"{TOKENS}/{token['id']}/complete"
    public = Auth(server.secret_key).public_token([f"write:waitpoints:{token['id']}"])
    refused = anonymous.post(path, json={"data": 1}, headers={"Origin": ORIGIN})
    done = anonymous.post(
        path, json={"data": 1}, headers={"Origin": ORIGIN, "Authorization": f"Bearer {public}"}
    )
    assert [refused.status_code, done.status_code] == [401, 200]
    for answer in (refused, done):
        assert answer.headers.get("access-control-allow-origin") == "*", answer.headers


def test_the_run_route_answers_other_origins_for_reading(
    server: ServeProcess, anonymous: httpx.Client
) -> None:
    """``useRun`` reads a run with the run's public access token (trigger returns it); its
    refusals are readable too (test_react_hooks_cors.py reads a real run in Chromium)."""
    path = "/api/v3/runs/run_unknown"
    asked = preflight(anonymous, path, "GET", ",".join(SDK_HEADERS))
    assert asked.status_code == 204
    assert asked.headers["access-control-allow-origin"] == "*"
    assert asked.headers["access-control-allow-methods"] == "GET"
    assert set(SDK_HEADERS) <= set(allowed_headers(asked)), asked.headers
    for headers in ({}, {"Authorization": f"Bearer {server.secret_key}"}):
        answer = anonymous.get(path, headers={"Origin": ORIGIN, **headers})
        assert answer.status_code in (401, 404), answer.text
        assert answer.headers.get("access-control-allow-origin") == "*", answer.headers


def _everything_else(server: ServeProcess) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request options) for every other kind of route, with real ids."""
    token = server.new_token()
    token_path = f"{TOKENS}/{token['id']}"
    signature = token["url"].rsplit("/", 1)[1]
    with server.client() as client:
        link = client.post(f"{token_path}/approval-link", json={}).json()["url"]
    approve = link.split(server.base_url, 1)[1]
    form = {"data": {"__json__": "{}"}}
    return [
        # The browser UI: its own complete form first (a path that ends in /complete, too).
        ("POST", f"/ui/tokens/{token['id']}/complete", form),
        ("POST", f"/ui/tokens/{token['id']}/cancel", {}),
        ("GET", "/ui/tokens", {}),
        ("GET", f"/ui/tokens/{token['id']}", {}),
        ("GET", "/ui/runs", {}),
        ("GET", "/ui/login", {}),
        ("GET", "/ui/static/app.css", {}),
        ("GET", approve, {}),
        ("POST", approve, form),
        # The public-token routes with another method than their own.
        ("GET", f"{token_path}/complete", {}),
        ("DELETE", f"{token_path}/complete", {}),
        ("POST", "/api/v3/runs/run_nope", {"json": {}}),
        # Paths that end in /complete but are not the token route.
        ("POST", "/api/v2/runs/run_nope/complete", {}),
        ("POST", f"{token_path}/complete/extra", {}),
        ("POST", "/complete", {}),
        # The rest of the API: secret-key routes, the callback, health and docs.
        ("GET", TOKENS, {}),
        ("POST", TOKENS, {"json": {}}),
        ("GET", token_path, {}),
        ("POST", f"{token_path}/cancel", {}),
        ("POST", f"{token_path}/approval-link", {"json": {}}),
        ("POST", f"{token_path}/callback/{signature}", {"json": {}}),
        ("POST", "/api/v1/tasks/nothing/trigger", {"json": {}}),
        ("GET", "/api/v1/runs", {}),
        ("POST", "/api/v2/runs/run_nope/cancel", {}),
        ("GET", "/api/v1/runs/run_nope/timeline", {}),
        ("GET", "/api/v1/stats", {}),
        ("GET", "/metrics", {}),  # 404 here (metrics off); on: tests/test_metrics.py
        ("GET", "/healthz", {}),
        ("GET", "/docs", {}),
        ("GET", "/openapi.json", {}),
    ]


def test_no_other_route_answers_another_origin(
    server: ServeProcess, anonymous: httpx.Client
) -> None:
    """Neither a simple request nor a preflight from another origin gets an
    ``Access-Control-Allow-*`` header anywhere else, so a page there can read nothing."""
    offenders = []
    for method, path, options in _everything_else(server):
        simple = anonymous.request(method, path, headers={"Origin": ORIGIN}, **options)
        asked = preflight(anonymous, path.split("?")[0], method, "authorization, content-type")
        for kind, answer in (("request", simple), ("preflight", asked)):
            granted = {k: v for k, v in answer.headers.items() if k.startswith("access-control-")}
            if granted:
                offenders.append(f"{kind} {method} {path} -> {answer.status_code} {granted}")
    assert not offenders, "\n".join(offenders)
