"""One-link approvals: the link opens one token's page, completes that token and nothing else."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from typer.testing import CliRunner

from engine import ConfigurationError, Engine, Settings, TokenNotFoundError, ValidationError
from engine.api.auth import Auth
from engine.cli import app
from engine.models import CompletionSource
from engine.signing import approval_url
from tests.api.conftest import fire_timers_later

from .conftest import KEY, Decision, client_for, field_errors, local_path

PUBLIC = "http://127.0.0.1:8030"


def link_for(token_id: str, expires_in: str = "1h", key: str = KEY) -> str:
    return local_path(approval_url(PUBLIC, Auth(key), token_id, expires_in))


@pytest.fixture
async def token_id(ui_engine: Engine) -> str:
    token = await ui_engine.tokens.create(timeout="1h", tags=["order:42"], schema=Decision)
    return token.id


async def test_the_link_opens_a_standalone_page_with_the_generated_form(
    ui: httpx.AsyncClient, token_id: str
) -> None:
    page = await ui.get(link_for(token_id))
    assert page.status_code == 200
    assert "Your answer is needed" in page.text
    assert 'class="top"' not in page.text  # no dashboard navigation
    assert ">Approve</button>" in page.text and ">Reject</button>" in page.text
    assert 'name="data.reviewer"' in page.text and "order:42" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"


async def test_approving_completes_the_token_and_shows_the_outcome(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    link = link_for(token_id)
    answer = await ui.post(link, data={"data.reviewer": "ana", "data.approved": "true"})
    assert answer.status_code == 200
    assert "<h1>Approved</h1>" in answer.text
    token = await ui_engine.tokens.retrieve(token_id)
    assert token.data == {"approved": True, "reviewer": "ana"}
    assert token.completed_via is CompletionSource.PUBLIC_TOKEN

    again = await ui.get(link)
    assert again.status_code == 200
    assert "Already answered" in again.text and "<form" not in again.text
    twice = await ui.post(link, data={"data.reviewer": "bo", "data.approved": "false"})
    assert "Already answered" in twice.text
    assert (await ui_engine.tokens.retrieve(token_id)).data["reviewer"] == "ana"


async def test_rejecting_sends_approved_false(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    answer = await ui.post(
        link_for(token_id), data={"data.reviewer": "ana", "data.approved": "false"}
    )
    assert "<h1>Rejected</h1>" in answer.text
    assert (await ui_engine.tokens.retrieve(token_id)).data["approved"] is False


async def test_invalid_answers_are_shown_next_to_their_fields_and_change_nothing(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    answer = await ui.post(link_for(token_id), data={"data.level": "1.5", "data.approved": "true"})
    assert answer.status_code == 422
    errors = field_errors(answer.text)
    assert errors["field-1"] == "this field is required"  # reviewer
    assert errors["field-2"] == "'1.5' is not a whole number"  # level
    assert 'aria-invalid="true"' in answer.text
    assert 'value="1.5"' in answer.text  # what was typed stays in the form
    assert (await ui_engine.tokens.retrieve(token_id)).is_waiting


async def test_pressing_neither_button_asks_for_a_decision(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    answer = await ui.post(link_for(token_id), data={"data.reviewer": "ana"})
    assert answer.status_code == 422
    assert "choose Approve or Reject" in answer.text
    assert (await ui_engine.tokens.retrieve(token_id)).is_waiting


@pytest.mark.parametrize(
    ("make_link", "status", "text"),
    [
        (lambda tid: f"/ui/approve/{tid}", 401, "no access token"),
        (lambda tid: f"/ui/approve/{tid}?t=", 401, "no access token"),
        (lambda tid: f"/ui/approve/{tid}?t=garbage", 401, "not valid"),
        (lambda tid: f"/ui/approve/{tid}?t=a.b.c", 401, "not valid"),
        (lambda tid: link_for(tid, key="another_key_0123456789abcdef0123456789"), 401, "not valid"),
        (
            lambda tid: link_for("waitpoint_other").replace("waitpoint_other", tid, 1),
            403,
            "another",
        ),
        (lambda tid: f"/ui/approve/{tid}?t={KEY}", 403, "their own access token"),
    ],
)
async def test_a_bad_link_is_an_error_page_without_a_form(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str, make_link, status, text
) -> None:  # type: ignore[no-untyped-def]
    link = make_link(token_id)
    for answer in (await ui.get(link), await ui.post(link, data={"data.approved": "true"})):
        assert answer.status_code == status, answer.text
        assert text in answer.text
        assert "<form" not in answer.text
    assert (await ui_engine.tokens.retrieve(token_id)).is_waiting


async def test_an_expired_link_says_so(ui: httpx.AsyncClient, token_id: str) -> None:
    token = Auth(KEY).public_token([f"write:waitpoints:{token_id}"], expires_in=-10)
    answer = await ui.get(f"/ui/approve/{token_id}?t={token}")
    assert answer.status_code == 401
    assert "This link has expired" in answer.text and "<form" not in answer.text


async def test_a_link_to_an_unknown_token_is_a_404_page(ui: httpx.AsyncClient) -> None:
    answer = await ui.get(link_for("waitpoint_doesnotexist"))
    assert answer.status_code == 404
    assert "<form" not in answer.text


async def test_timed_out_and_cancelled_tokens_answer_410_with_a_page_that_says_so(
    ui_engine: Engine, ui: httpx.AsyncClient, sqlite_url: str
) -> None:
    expiring = await ui_engine.tokens.create(timeout="1m")
    cancelled = await ui_engine.tokens.create(timeout="1h")
    await ui_engine.tokens.cancel(cancelled.id)
    assert await fire_timers_later(sqlite_url, 120) >= 1
    for token_id, words in ((expiring.id, "timed out"), (cancelled.id, "was cancelled")):
        for answer in (
            await ui.get(link_for(token_id)),
            await ui.post(link_for(token_id), data={"json": "true"}),
        ):
            assert answer.status_code == 410
            assert "This request is closed" in answer.text and words in answer.text
            assert "<form" not in answer.text


async def test_the_link_grants_nothing_but_completing_its_token_on_the_api(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    ticket = link_for(token_id).split("?t=")[1]
    other = await ui_engine.tokens.create(timeout="1h")
    bearer = {"Authorization": f"Bearer {ticket}"}
    assert (
        await ui.get(f"/api/v1/waitpoints/tokens/{token_id}", headers=bearer)
    ).status_code == 403
    assert (await ui.get("/api/v1/runs", headers=bearer)).status_code == 403
    assert (await ui.get("/ui/tokens", headers=bearer)).status_code == 401
    refused = await ui.post(
        f"/api/v1/waitpoints/tokens/{other.id}/complete", json={"data": 1}, headers=bearer
    )
    assert refused.status_code == 403
    done = await ui.post(
        f"/api/v1/waitpoints/tokens/{token_id}/complete",
        json={"data": {"approved": True, "reviewer": "api"}},
        headers=bearer,
    )
    assert done.status_code == 200


async def test_engine_tokens_approval_link_signs_with_the_configured_key(
    sqlite_url: str, ui_engine: Engine, token_id: str
) -> None:
    settings = Settings(secret_key=KEY, public_url="https://approvals.example.com/base/")
    async with Engine(sqlite_url, settings=settings) as engine:
        link = await engine.tokens.approval_link(token_id, expires_in="2h")
        assert link.startswith(f"https://approvals.example.com/base/ui/approve/{token_id}?t=")
        with pytest.raises(TokenNotFoundError):
            await engine.tokens.approval_link("waitpoint_missing")
        with pytest.raises(ValidationError):
            await engine.tokens.approval_link(token_id, expires_in="31d")
    async with client_for(ui_engine) as browser:
        assert (await browser.get(local_path(link).removeprefix("/base"))).status_code == 200


async def test_approval_link_without_any_key_is_a_configuration_error(
    sqlite_url: str, token_id: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))  # no .waitpoint/secret_key here
    # and none made: an engine with a signing secret of its own needs no secret key to open
    settings = Settings(secret_key=None, signing_secret="approve-tests-signing-secret-0123456789")
    async with Engine(sqlite_url, settings=settings) as engine:
        with pytest.raises(ConfigurationError, match="WAITPOINT_SECRET_KEY"):
            await engine.tokens.approval_link(token_id)


async def test_the_api_route_makes_links_for_remote_engines(
    ui: httpx.AsyncClient, token_id: str
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    route = f"/api/v1/waitpoints/tokens/{token_id}/approval-link"
    answer = await ui.post(route, json={"expiresIn": "3h"}, headers=auth)
    assert answer.status_code == 200
    assert (await ui.get(local_path(answer.json()["url"]))).status_code == 200
    assert (await ui.post(route, headers=auth)).status_code == 200  # no body: 24h
    assert (await ui.post(route, json={"expiresIn": "forever"}, headers=auth)).status_code == 422
    assert (await ui.post(route, json={"expiresIn": "1h"})).status_code == 401
    missing = "/api/v1/waitpoints/tokens/waitpoint_missing/approval-link"
    assert (await ui.post(missing, headers=auth)).status_code == 404


def test_waitpoint_tokens_link_prints_the_url(
    sqlite_url: str, token_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAITPOINT_SECRET_KEY", KEY)
    monkeypatch.setenv("WAITPOINT_PUBLIC_URL", "https://wp.example.com")
    runner = CliRunner()
    result = runner.invoke(app, ["tokens", "link", token_id, "--database", sqlite_url])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"https://wp\.example\.com/ui/approve/{token_id}\?t=[\w.-]+\n", result.stdout
    )
    result = runner.invoke(
        app, ["tokens", "link", token_id, "--expires-in", "7d", "--json", "--database", sqlite_url]
    )
    assert json.loads(result.stdout)["url"].startswith("https://wp.example.com/ui/approve/")
    bad = runner.invoke(
        app, ["tokens", "link", token_id, "--expires-in", "1y", "--database", sqlite_url]
    )
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")
