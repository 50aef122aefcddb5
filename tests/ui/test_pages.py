"""Dashboard pages over HTTP: who may see them, what they show, and 4xx pages for bad input."""

from __future__ import annotations

import re

import httpx
import pytest

from engine import Engine
from engine.models import CompletionSource

from .conftest import BASE_URL, KEY, Decision, client_for, field_errors


async def test_the_dashboard_without_a_session_is_a_401_page_with_the_sign_in_form(
    ui: httpx.AsyncClient,
) -> None:
    for path in ("/ui/tokens", "/ui/runs", "/ui/runs/run_x", "/ui/tokens/waitpoint_x"):
        answer = await ui.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["content-type"].startswith("text/html")
        assert 'name="key"' in answer.text
        assert f'name="next" value="{path}"' in answer.text


async def test_signing_in_sets_an_httponly_strict_cookie_that_is_not_the_key(
    ui: httpx.AsyncClient,
) -> None:
    answer = await ui.post("/ui/login", data={"key": KEY, "next": "/ui/runs"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/runs"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert KEY not in cookie
    assert (await ui.get("/ui/runs")).status_code == 200


async def test_a_wrong_key_is_a_401_page_that_says_so(ui: httpx.AsyncClient) -> None:
    answer = await ui.post("/ui/login", data={"key": "wrong", "next": "/ui/runs"})
    assert answer.status_code == 401
    assert "not the secret key" in answer.text
    assert "set-cookie" not in answer.headers


async def test_sign_in_never_redirects_to_another_site(ui: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/api/v1/runs"):
        answer = await ui.post("/ui/login", data={"key": KEY, "next": target})
        assert answer.headers["location"] == "/ui/tokens", target


async def test_a_form_posted_from_another_site_is_refused(ui: httpx.AsyncClient) -> None:
    answer = await ui.post("/ui/login", data={"key": KEY}, headers={"sec-fetch-site": "cross-site"})
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


async def test_a_forged_or_foreign_session_cookie_is_refused(ui_engine: Engine) -> None:
    async with client_for(ui_engine) as first:
        await first.post("/ui/login", data={"key": KEY})
        session = first.cookies["waitpoint_session"]
    async with client_for(ui_engine, key="another_key_0123456789abcdef0123456789") as other:
        other.cookies.set("waitpoint_session", session)
        assert (await other.get("/ui/tokens")).status_code == 401
        other.cookies.set("waitpoint_session", session[:-2] + "xx")
        assert (await other.get("/ui/tokens")).status_code == 401


async def test_signing_out_ends_the_session(dashboard: httpx.AsyncClient) -> None:
    answer = await dashboard.post("/ui/logout")
    assert answer.status_code == 303
    assert (await dashboard.get("/ui/tokens")).status_code == 401


async def test_the_one_click_link_signs_in_and_moves_on_by_itself(
    ui: httpx.AsyncClient,
) -> None:
    from engine.ui import login_link

    link = login_link("http://testserver", KEY)
    answer = await ui.get(link.removeprefix("http://testserver"))
    assert answer.status_code == 200
    assert 'http-equiv="refresh"' in answer.text
    assert KEY not in answer.text
    assert (await ui.get("/ui/tokens")).status_code == 200


async def test_a_bad_or_expired_one_click_link_is_a_401_sign_in_page(ui: httpx.AsyncClient) -> None:
    from engine.ui import login_link

    expired = login_link("http://testserver", KEY, seconds=-1).split("?t=")[1]
    for ticket in ("nonsense", expired, login_link("", "other-key").split("?t=")[1]):
        answer = await ui.get("/ui/login", params={"t": ticket})
        assert answer.status_code == 401, ticket
        assert "set-cookie" not in answer.headers


async def test_the_inbox_shows_waiting_tokens_first_and_filters_by_tag(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    later = await ui_engine.tokens.create(timeout="2h", tags=["refund"])
    sooner = await ui_engine.tokens.create(timeout="10m", tags=["refund", "vip"])
    done = await ui_engine.tokens.create(tags=["refund"])
    await ui_engine.tokens.complete(done.id, {"ok": True})
    other = await ui_engine.tokens.create(timeout="1h", tags=["other"])

    page = (await dashboard.get("/ui/tokens")).text
    waiting, closed = page.split('id="h-closed"')
    assert waiting.index(sooner.id) < waiting.index(later.id) < len(waiting)
    assert done.id in closed and done.id not in waiting
    assert "data-countdown" in waiting
    assert 'data-stream="/api/v1/waitpoints/tokens/stream"' in page

    tagged = (await dashboard.get("/ui/tokens", params={"tag": "vip"})).text
    assert sooner.id in tagged and later.id not in tagged and other.id not in tagged
    only_done = (await dashboard.get("/ui/tokens", params={"status": "COMPLETED"})).text
    assert done.id in only_done and sooner.id not in only_done


async def test_completing_from_the_dashboard_uses_the_schema_form(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h", schema=Decision)
    page = (await dashboard.get(f"/ui/tokens/{token.id}")).text
    assert 'role="switch"' not in page  # `approved` is the Approve/Reject buttons instead
    assert 'name="data.approved" value="true"' in page
    assert 'name="data.level"' in page and 'type="number"' in page

    refused = await dashboard.post(
        f"/ui/tokens/{token.id}/complete",
        data={"data.level": "high", "data.reviewer": "", "data.approved": "true"},
    )
    assert refused.status_code == 422
    errors = field_errors(refused.text)
    assert errors["field-2"] == "'high' is not a whole number"
    assert (await ui_engine.tokens.retrieve(token.id)).is_waiting

    refused = await dashboard.post(
        f"/ui/tokens/{token.id}/complete", data={"data.level": "2", "data.approved": "true"}
    )
    assert refused.status_code == 422
    assert field_errors(refused.text)["field-1"] == "this field is required"  # reviewer

    answer = await dashboard.post(
        f"/ui/tokens/{token.id}/complete",
        data={"data.level": "2", "data.reviewer": "ana", "data.approved": "false"},
    )
    assert answer.status_code == 303
    closed = await ui_engine.tokens.retrieve(token.id)
    assert closed.data == {"approved": False, "reviewer": "ana", "level": 2}
    assert closed.completed_via is CompletionSource.UI


async def test_a_token_without_schema_takes_any_json_and_refuses_broken_json(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h")
    refused = await dashboard.post(f"/ui/tokens/{token.id}/complete", data={"json": "{oops"})
    assert refused.status_code == 422
    assert field_errors(refused.text)["field-json"].startswith("not valid JSON")
    answer = await dashboard.post(f"/ui/tokens/{token.id}/complete", data={"json": "[1, 2]"})
    assert answer.status_code == 303
    assert (await ui_engine.tokens.retrieve(token.id)).data == [1, 2]


async def test_cancelling_a_token_and_then_completing_it_answers_410(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h")
    assert (await dashboard.post(f"/ui/tokens/{token.id}/cancel")).status_code == 303
    assert (await ui_engine.tokens.retrieve(token.id)).completed_via is CompletionSource.UI
    late = await dashboard.post(f"/ui/tokens/{token.id}/complete", data={"json": "1"})
    assert late.status_code == 410
    assert "can no longer be completed" in late.text


async def test_the_token_page_shares_an_approval_link(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h")
    answer = await dashboard.post(f"/ui/tokens/{token.id}/link", data={"expires_in": "1h"})
    assert answer.status_code == 200
    link = re.search(r'id="approval-link" class="mono" readonly value="([^"]+)"', answer.text)
    assert link is not None
    # no public URL configured: the link is on the address the page was asked at
    assert link.group(1).startswith(f"{BASE_URL}/ui/approve/{token.id}?t=")
    refused = await dashboard.post(f"/ui/tokens/{token.id}/link", data={"expires_in": "90d"})
    assert refused.status_code == 422


async def test_unknown_ids_and_paths_are_404_pages(dashboard: httpx.AsyncClient) -> None:
    for path in ("/ui/runs/run_nope", "/ui/tokens/waitpoint_nope", "/ui/nothing/here"):
        answer = await dashboard.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html")
    assert (await dashboard.post("/ui/tokens/waitpoint_nope/cancel")).status_code == 404
    assert (await dashboard.post("/ui/runs/run_nope/cancel")).status_code == 404


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/ui/runs", {"status": "SLEEPY"}),
        ("/ui/tokens", {"status": "NOPE"}),
        ("/ui/tokens", {"tag": "x" * 500}),
    ],
)
async def test_bad_filters_are_4xx_pages(
    dashboard: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    answer = await dashboard.get(path, params=params)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"].startswith("text/html")


async def test_a_cursor_from_nowhere_never_gets_a_5xx(dashboard: httpx.AsyncClient) -> None:
    for path, params in (
        ("/ui/runs", {"after": "not-a-cursor"}),
        ("/ui/runs", {"before": "%%%"}),
        ("/ui/tokens", {"status": "WAITING", "after": "%%%"}),
    ):
        assert (await dashboard.get(path, params=params)).status_code < 500


async def test_odd_form_bodies_are_4xx_pages(
    ui_engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h", schema=Decision)
    path = f"/ui/tokens/{token.id}/complete"
    for body, kind in (
        (b"\xff\xfe", "application/x-www-form-urlencoded"),
        (b'{"data": 1}', "application/json"),
        (b"data.level=" + b"9" * 5000, "application/x-www-form-urlencoded"),
        (b"&".join(b"f%d=1" % i for i in range(500)), "application/x-www-form-urlencoded"),
    ):
        answer = await dashboard.post(path, content=body, headers={"content-type": kind})
        assert 400 <= answer.status_code < 500, (body[:20], answer.status_code)
        assert answer.headers["content-type"].startswith("text/html")
    assert (await ui_engine.tokens.retrieve(token.id)).is_waiting


async def test_pages_carry_a_strict_content_security_policy(dashboard: httpx.AsyncClient) -> None:
    answer = await dashboard.get("/ui/runs")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    css = re.search(r'href="(/ui/static/app\.css\?v=[0-9a-f]+)"', answer.text)
    assert css is not None
    asset = await dashboard.get(css.group(1))
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
