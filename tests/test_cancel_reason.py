"""Cancelling a token with a reason (#18): from Python, the CLI, the REST API (and the HTTP
client over it) and the dashboard; kept on the token (``cancelReason``) and seen by the
waiting run as ``WaitpointCancelledError.reason``, the same on every replay, in groups too.
Bad reasons are refused before anything changes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html import unescape
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from engine import (
    Engine,
    Settings,
    ValidationError,
    WaitpointCancelledError,
    create_token,
    task,
    wait_for_token,
    wait_for_tokens,
)
from engine.api.auth import Auth
from engine.cli import app
from engine.client.http import HttpAPI, HttpTokens
from engine.journal import decode_error, encode_error
from engine.models import CompletionSource, Token, WaitpointStatus, WaitResult
from engine.signing import approval_url
from engine.storage.groups import as_waiting

from .api.conftest import AUTH, TOKENS, api_client, check_token
from .conftest import StartWorker, wait_for_status
from .ui.conftest import KEY as UI_KEY
from .ui.conftest import client_for, field_errors, local_path

runner = CliRunner()

BAD_REASONS: list[tuple[Any, str]] = [
    ("x" * 1001, "1000"),
    ("  " + "x" * 1001 + "  ", "1000"),
    ("", "1 to 1000"),
    (" \n\t ", "1 to 1000"),
    ("stop\x00", "U+0000"),
    ("\x1b[31mred\x1b[0m", "U+001B"),
    ("line\rover", "U+000D"),
    ("del\x7f", "U+007F"),
    ("next\x85line", "U+0085"),
    (42, "must be a string"),
]


def reason_ids(value: Any) -> str:
    return repr(value)[:20]


@task("cr-wait")
async def wait_and_tell(payload: None) -> dict[str, Any]:
    result = await wait_for_token(await create_token(timeout="1h"))
    error = result.error
    return {
        "ok": result.ok,
        "cancelled": isinstance(error, WaitpointCancelledError),
        "reason": error.reason if isinstance(error, WaitpointCancelledError) else "n/a",
        "message": str(error),
    }


@task("cr-group")
async def group_and_tell(payload: None) -> list[Any]:
    first = await create_token(timeout="1h")
    second = await create_token(timeout="1h")
    group = await wait_for_tokens([first, second], mode="all")
    seen: list[Any] = []
    for item in group.items:
        assert isinstance(item, WaitResult)
        error = item.error
        reason = error.reason if isinstance(error, WaitpointCancelledError) else None
        seen.append({"ok": item.ok, "output": item.output, "reason": reason})
    return seen


async def waiting_on(engine: Engine, run_id: str, count: int = 1) -> list[str]:
    await wait_for_status(engine, run_id, "WAITING")
    found = (await engine.runs.retrieve(run_id)).waiting_on
    assert len(found) == count
    return found


# Python ------------------------------------------------------------------------------------


@pytest.mark.parametrize("always_replay", [False, True], ids=["normal", "always-replay"])
async def test_the_waiting_run_sees_the_reason_and_replays_it(
    engine: Engine, start_worker: StartWorker, always_replay: bool
) -> None:
    await start_worker([wait_and_tell], always_replay=always_replay)
    run = await engine.trigger("cr-wait")
    [token_id] = await waiting_on(engine, run.id)
    reason = "Refund too large:\n\tneeds finance's sign-off"
    cancelled = await engine.tokens.cancel(token_id, f"  {reason}\n")
    assert cancelled.applied and cancelled.token.cancel_reason == reason
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output == {
        "ok": False,
        "cancelled": True,
        "reason": reason,
        "message": f"Waitpoint {token_id} was cancelled: {reason}",
    }
    # the wait journaled the token with its reason: what every replay returns
    [wait] = [e for e in await engine.runs.timeline(run.id) if e.kind == "wait_for_token"]
    assert wait.token is not None and wait.token.cancel_reason == reason
    # under always-replay the output above was made by a pure replay of the journal
    claims = [e for e in await engine.runs.timeline(run.id) if e.kind == "attempt_started"]
    assert len(claims) == (4 if always_replay else 2)


async def test_without_a_reason_the_run_sees_none_and_the_token_is_as_before(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([wait_and_tell])
    run = await engine.trigger("cr-wait")
    [token_id] = await waiting_on(engine, run.id)
    await engine.tokens.cancel(token_id)
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output == {
        "ok": False,
        "cancelled": True,
        "reason": None,
        "message": f"Waitpoint {token_id} was cancelled",
    }
    token = await engine.tokens.retrieve(token_id)
    assert token.cancel_reason is None
    assert token.data == {
        "code": "WAITPOINT_CANCELLED",
        "message": f"Waitpoint {token_id} was cancelled",
    }
    assert "cancelReason" not in token.model_dump(mode="json", by_alias=True)


async def test_retrieve_and_list_show_the_reason_kept_beside_the_error(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1h")
    await engine.tokens.cancel(token.id, "duplicate request", source=CompletionSource.PYTHON)
    found = await engine.tokens.retrieve(token.id)
    assert found.status is WaitpointStatus.CANCELLED
    assert found.cancel_reason == "duplicate request"
    assert found.data == {
        "code": "WAITPOINT_CANCELLED",
        "message": f"Waitpoint {token.id} was cancelled: duplicate request",
        "reason": "duplicate request",
    }
    wire = found.model_dump(mode="json", by_alias=True)
    assert wire["cancelReason"] == "duplicate request"
    assert Token.model_validate(wire).cancel_reason == "duplicate request"  # round trip
    [listed] = (await engine.tokens.list(status="CANCELLED")).data
    assert listed.cancel_reason == "duplicate request"


async def test_a_reason_of_exactly_the_limit_and_line_breaks_and_tabs_are_kept(
    engine: Engine,
) -> None:
    longest = "é" * 1000
    token = await engine.tokens.create()
    result = await engine.tokens.cancel(token.id, f"\n  {longest}  \t")
    assert result.token.cancel_reason == longest
    other = await engine.tokens.create()
    kept = "first line\nsecond\tcolumn — ünïcode ✓"
    assert (await engine.tokens.cancel(other.id, kept)).token.cancel_reason == kept


@pytest.mark.parametrize(("reason", "words"), BAD_REASONS, ids=reason_ids)
async def test_a_bad_reason_is_refused_and_nothing_changes(
    engine: Engine, reason: Any, words: str
) -> None:
    token = await engine.tokens.create(timeout="1h")
    with pytest.raises(ValidationError, match="reason") as refused:
        await engine.tokens.cancel(token.id, reason)
    assert words in str(refused.value)
    after = await engine.tokens.retrieve(token.id)
    assert after.status is WaitpointStatus.WAITING and after.data is None
    assert after.cancel_reason is None


async def test_a_bad_reason_leaves_the_waiting_run_waiting(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([wait_and_tell])
    run = await engine.trigger("cr-wait")
    [token_id] = await waiting_on(engine, run.id)
    with pytest.raises(ValidationError, match="1000"):
        await engine.tokens.cancel(token_id, "x" * 1001)
    assert (await engine.runs.retrieve(run.id)).status == "WAITING"
    await engine.tokens.cancel(token_id, "now properly")
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["reason"] == "now properly"


async def test_cancelling_again_keeps_the_first_reason(engine: Engine) -> None:
    token = await engine.tokens.create()
    assert (await engine.tokens.cancel(token.id, "first")).applied
    again = await engine.tokens.cancel(token.id, "second")
    assert not again.applied and again.token.cancel_reason == "first"
    plain = await engine.tokens.create()
    await engine.tokens.cancel(plain.id)
    assert (await engine.tokens.cancel(plain.id, "late")).token.cancel_reason is None


@pytest.mark.parametrize("always_replay", [False, True], ids=["normal", "always-replay"])
async def test_a_group_member_cancelled_with_a_reason_carries_it(
    engine: Engine, start_worker: StartWorker, always_replay: bool
) -> None:
    await start_worker([group_and_tell], always_replay=always_replay)
    run = await engine.trigger("cr-group")
    first, second = await waiting_on(engine, run.id, 2)
    # waiting_on is ordered by id, the same order as creation (ids sort by time)
    await engine.tokens.complete(second, {"fine": True})
    await engine.tokens.cancel(first, "not needed any more")
    done = await engine.wait_for_run(run.id, timeout=15)
    assert sorted(done.output, key=lambda item: item["ok"]) == [
        {"ok": False, "output": None, "reason": "not needed any more"},
        {"ok": True, "output": {"fine": True}, "reason": None},
    ]


def test_a_token_shown_as_still_waiting_in_a_group_snapshot_has_no_reason() -> None:
    closed = Token(
        id="waitpoint_x",
        status=WaitpointStatus.CANCELLED,
        created_at=datetime.now(UTC),
        data={"code": "WAITPOINT_CANCELLED", "message": "m", "reason": "why"},
        cancel_reason="why",
    )
    assert as_waiting(closed).cancel_reason is None


def test_a_wait_journaled_before_reasons_reads_as_before() -> None:
    old = {
        "id": "waitpoint_old",
        "status": "CANCELLED",
        "createdAt": "2025-01-01T00:00:00Z",
        "data": {"code": "WAITPOINT_CANCELLED", "message": "Waitpoint waitpoint_old was cancelled"},
    }
    result = WaitResult.from_token(Token.model_validate(old))
    assert isinstance(result.error, WaitpointCancelledError)
    assert result.error.reason is None
    assert str(result.error) == "Waitpoint waitpoint_old was cancelled"


def test_the_error_keeps_its_reason_when_a_step_journals_it() -> None:
    error = WaitpointCancelledError("Waitpoint w was cancelled: why", reason="why")
    rebuilt = decode_error(encode_error(error))
    assert isinstance(rebuilt, WaitpointCancelledError)
    assert rebuilt.reason == "why" and str(rebuilt) == "Waitpoint w was cancelled: why"
    assert WaitpointCancelledError().reason is None


# CLI ---------------------------------------------------------------------------------------


def test_the_cli_cancels_with_a_reason_and_refuses_a_bad_one(db_url: str) -> None:
    def invoke(*args: str) -> Any:
        return runner.invoke(app, [*args, "--database", db_url])

    made = invoke("tokens", "create", "--json")
    assert made.exit_code == 0, made.output
    token_id = json.loads(made.stdout)["id"]

    refused = invoke("tokens", "cancel", token_id, "--reason", "x" * 1001, "--json")
    assert refused.exit_code == 1, refused.output
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: --reason must be 1 to 1000 characters")
    assert refused.stdout == ""
    assert json.loads(invoke("tokens", "get", token_id, "--json").stdout)["status"] == "WAITING"

    done = invoke("tokens", "cancel", token_id, "--reason", "wrong customer", "--json")
    assert done.exit_code == 0, done.output
    token = json.loads(done.stdout)
    assert token["status"] == "CANCELLED" and token["completedVia"] == "cli"
    assert token["cancelReason"] == "wrong customer"
    shown = invoke("tokens", "get", token_id)
    assert "wrong customer" in shown.stdout


# REST --------------------------------------------------------------------------------------


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(engine) as client:  # every token answered is checked by the schema
        yield client


async def test_the_rest_cancel_takes_a_reason_the_run_sees(
    engine: Engine, start_worker: StartWorker, api: httpx.AsyncClient
) -> None:
    await start_worker([wait_and_tell])
    run = await engine.trigger("cr-wait")
    [token_id] = await waiting_on(engine, run.id)
    answer = await api.post(
        f"{TOKENS}/{token_id}/cancel", json={"reason": "cancelled by ops"}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    body = check_token(answer.json())
    assert body["status"] == "CANCELLED" and body["cancelReason"] == "cancelled by ops"
    assert json.loads(body["output"])["reason"] == "cancelled by ops"
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["reason"] == "cancelled by ops"
    retrieved = (await api.get(f"{TOKENS}/{token_id}", headers=AUTH)).json()
    assert retrieved["cancelReason"] == "cancelled by ops"
    for_sdk = await api.get(
        f"{TOKENS}/{token_id}", headers={**AUTH, "x-trigger-api-version": "2025-07-16"}
    )
    assert for_sdk.json()["status"] == "TIMED_OUT"  # as before: the SDK has no CANCELLED
    assert "cancelled by ops" in json.loads(for_sdk.json()["output"])["message"]


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{}", b"null", b'{"reason": null}'],
    ids=["no-body", "empty-body", "empty-object", "null", "null-reason"],
)
async def test_a_rest_cancel_without_a_reason_works_as_before(
    engine: Engine, api: httpx.AsyncClient, content: bytes | None
) -> None:
    token = await engine.tokens.create(timeout="1h")
    headers = AUTH if content is None else {**AUTH, "content-type": "application/json"}
    answer = await api.post(f"{TOKENS}/{token.id}/cancel", headers=headers, content=content)
    assert answer.status_code == 200, answer.text
    body = check_token(answer.json())
    assert body["status"] == "CANCELLED" and "cancelReason" not in body
    assert body["data"] == {
        "code": "WAITPOINT_CANCELLED",
        "message": f"Waitpoint {token.id} was cancelled",
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        *[({"reason": reason}, words) for reason, words in BAD_REASONS],
        ({"reason": ["a"]}, "reason"),
        ({"why": "typo"}, "why"),
    ],
    ids=[*(reason_ids(r) for r, _ in BAD_REASONS), "list", "unknown-field"],
)
async def test_a_rest_cancel_with_a_bad_reason_is_422_and_changes_nothing(
    engine: Engine, api: httpx.AsyncClient, body: dict[str, Any], words: str
) -> None:
    token = await engine.tokens.create(timeout="1h")
    answer = await api.post(f"{TOKENS}/{token.id}/cancel", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    if isinstance(body.get("reason"), str):
        assert words in answer.text
    assert (await engine.tokens.retrieve(token.id)).status is WaitpointStatus.WAITING


async def test_the_http_client_sends_the_reason_and_checks_it_first(engine: Engine) -> None:
    sent: list[httpx.Request] = []

    async with api_client(engine) as client:
        api = HttpAPI("http://testserver", "sk_unused")
        await api.close()

        async def record(request: httpx.Request) -> None:
            sent.append(request)

        client.headers.update(AUTH)
        client.event_hooks["request"] = [record]
        api._client = client  # the in-process app, as the HTTP transport's connection
        tokens = HttpTokens(api)

        plain = await engine.tokens.create(timeout="1h")
        result = await tokens.cancel(plain.id)
        assert result.applied and result.token.cancel_reason is None
        assert sent[-1].content == b""  # no reason: no body, as before reasons

        token = await engine.tokens.create(timeout="1h")
        before = len(sent)
        with pytest.raises(ValidationError, match="1000"):
            await tokens.cancel(token.id, "x" * 1001)
        assert len(sent) == before  # refused before anything was sent
        result = await tokens.cancel(token.id, " over the wire ")
        assert result.applied and result.token.cancel_reason == "over the wire"
        assert json.loads(sent[-1].content) == {"reason": "over the wire"}
        assert (await tokens.retrieve(token.id)).cancel_reason == "over the wire"


# the dashboard -----------------------------------------------------------------------------


@pytest.fixture
async def dashboard(db_url: str) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    async with Engine(db_url, settings=Settings(secret_key=UI_KEY)) as opened:
        async with client_for(opened) as client:
            answer = await client.post("/ui/login", data={"key": UI_KEY, "next": "/ui/tokens"})
            assert answer.status_code == 303, answer.text
            yield opened, client


async def test_the_token_page_cancels_with_a_reason_and_shows_it(
    dashboard: tuple[Engine, httpx.AsyncClient],
) -> None:
    engine, ui = dashboard
    token = await engine.tokens.create(timeout="1h")
    page = await ui.get(f"/ui/tokens/{token.id}")
    assert 'name="reason"' in page.text and 'maxlength="1000"' in page.text
    answer = await ui.post(
        f"/ui/tokens/{token.id}/cancel", data={"reason": "Wrong <b>amount</b>\r\nsee #42"}
    )
    assert answer.status_code == 303
    found = await engine.tokens.retrieve(token.id)
    assert found.completed_via is CompletionSource.UI
    assert found.cancel_reason == "Wrong <b>amount</b>\nsee #42"  # a browser's CRLF as LF
    shown = await ui.get(f"/ui/tokens/{token.id}")
    assert "Wrong &lt;b&gt;amount&lt;/b&gt;\nsee #42</dd>" in shown.text  # escaped, not markup
    assert 'name="reason"' not in shown.text


async def test_a_blank_reason_or_no_field_cancels_without_one(
    dashboard: tuple[Engine, httpx.AsyncClient],
) -> None:
    engine, ui = dashboard
    blank = await engine.tokens.create(timeout="1h")
    assert (await ui.post(f"/ui/tokens/{blank.id}/cancel", data={"reason": "  "})).is_redirect
    bare = await engine.tokens.create(timeout="1h")
    assert (await ui.post(f"/ui/tokens/{bare.id}/cancel")).is_redirect
    for token in (blank, bare):
        found = await engine.tokens.retrieve(token.id)
        assert found.status is WaitpointStatus.CANCELLED and found.cancel_reason is None
        assert "<dt>Reason</dt>" not in (await ui.get(f"/ui/tokens/{token.id}")).text


async def test_a_bad_reason_in_the_form_is_shown_by_its_field_and_changes_nothing(
    dashboard: tuple[Engine, httpx.AsyncClient],
) -> None:
    engine, ui = dashboard
    token = await engine.tokens.create(timeout="1h")
    typed = "y" * 1001
    answer = await ui.post(f"/ui/tokens/{token.id}/cancel", data={"reason": typed})
    assert answer.status_code == 422
    assert "1000" in field_errors(answer.text)["field-reason"]
    assert f">{typed}</textarea>" in answer.text  # kept, to be shortened
    control = await ui.post(f"/ui/tokens/{token.id}/cancel", data={"reason": "bell\x07"})
    assert control.status_code == 422
    assert "U+0007" in unescape(field_errors(control.text)["field-reason"])
    assert (await engine.tokens.retrieve(token.id)).status is WaitpointStatus.WAITING


async def test_the_approval_page_of_a_cancelled_token_says_why(
    dashboard: tuple[Engine, httpx.AsyncClient],
) -> None:
    engine, ui = dashboard
    token = await engine.tokens.create(timeout="1h", title="Ship it?")
    await engine.tokens.cancel(token.id, "The order was withdrawn.")
    link = local_path(approval_url("http://127.0.0.1:8030", Auth(UI_KEY), token.id, "1h"))
    page = await ui.get(link)
    assert page.status_code == 410
    assert "was cancelled" in page.text and "The order was withdrawn." in page.text
