"""Decision receipts (``engine.receipts``): a closed token's signed record of what was decided,
how and when, checked in Python, over the REST API (and an HTTP engine), with the CLI, and
downloaded from the dashboard. Both backends, through the ``engine``/``db_url`` fixtures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from engine import Engine, RunStateError, Settings, TokenNotFoundError, ValidationError
from engine.api import create_app
from engine.cli import app as cli_app
from engine.client.http import HttpConnection
from engine.keys import SigningSecrets, derive_signing_secret
from engine.models import CompletionSource, Token, WaitpointStatus
from engine.receipts import (
    FIELDS,
    canonical_json,
    data_sha256,
    instant,
    key_id,
    make_receipt,
    receipt_key,
    verify_receipt,
)
from tests.api.conftest import AUTH, BASE_URL, KEY, TOKENS, api_client
from tests.ui.conftest import KEY as UI_KEY
from tests.ui.conftest import client_for

RECEIPTS = "/api/v1/waitpoints/receipts/verify"
DATA = {"approved": True, "reviewer": "ana@example.com", "note": "ok, déjà vu", "n": 1.5}
OLD_KEY = "wp_test_old_" + "o" * 32
NEW_KEY = "wp_test_new_" + "n" * 32
runner = CliRunner()


async def completed(engine: Engine, data: Any = DATA, **options: Any) -> Token:
    token = await engine.tokens.create(title="Refund order 42", **options)
    await engine.tokens.complete(token.id, data)
    return await engine.tokens.retrieve(token.id)


def secrets_of(*keys: str) -> SigningSecrets:
    """What a process with these secret keys (current, then previous) signs with."""
    derived = [derive_signing_secret(key) for key in keys]
    return SigningSecrets(derived[0], derived[1] if len(derived) > 1 else None)


# --- Python -----------------------------------------------------------------------------


async def test_a_completed_tokens_receipt_says_what_was_decided_and_verifies(
    engine: Engine,
) -> None:
    token = await completed(engine)
    receipt = await engine.tokens.receipt(token.id)

    assert list(receipt) == list(FIELDS)
    assert "runId" not in receipt  # the Token model does not say which run made it
    assert receipt["type"] == "waitpoint.receipt" and receipt["version"] == 1
    assert receipt["tokenId"] == token.id
    assert receipt["status"] == "COMPLETED"
    assert token.completed_at is not None
    assert receipt["completedAt"] == instant(token.completed_at)
    assert receipt["completedVia"] == "python"
    assert receipt["answeredBy"] is None and receipt["linkId"] is None
    assert receipt["title"] == "Refund order 42"
    canonical = json.dumps(DATA, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert receipt["dataSha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert receipt["dataSha256"] == data_sha256(token.data)
    assert re.fullmatch(r"[0-9a-f]{64}", receipt["signature"])
    assert re.fullmatch(r"[0-9a-f]{16}", receipt["keyId"])
    issued = datetime.fromisoformat(receipt["issuedAt"].replace("Z", "+00:00"))
    assert abs((issued - datetime.now(UTC)).total_seconds()) < 60
    assert json.loads(json.dumps(receipt)) == receipt  # plain JSON

    await engine.tokens.verify_receipt(receipt)
    verify_receipt(receipt, engine.signer.secrets)


async def test_the_signature_is_hmac_of_the_other_fields_under_a_key_of_its_own(
    engine: Engine,
) -> None:
    token = await completed(engine)
    receipt = await engine.tokens.receipt(token.id)
    unsigned = {name: value for name, value in receipt.items() if name != "signature"}
    secret = engine.signer.secrets.current
    derived = hmac.new(secret.encode(), b"waitpoint receipt v1", hashlib.sha256).digest()
    assert derived == receipt_key(secret)
    signed = hmac.new(derived, canonical_json(unsigned), hashlib.sha256).hexdigest()
    assert receipt["signature"] == signed
    assert receipt["keyId"] == key_id(derived)
    # a receipt's signature never opens a callback URL, nor the other way round
    assert not engine.signer.verify(token.id, receipt["signature"])
    assert receipt["signature"] != engine.signer.signature(token.id)


async def test_cancelled_and_timed_out_tokens_have_receipts_too(engine: Engine) -> None:
    cancelled = await engine.tokens.create()
    await engine.tokens.cancel(cancelled.id, source=CompletionSource.CLI)
    receipt = await engine.tokens.receipt(cancelled.id)
    assert (receipt["status"], receipt["completedVia"], receipt["title"]) == (
        "CANCELLED",
        "cli",
        None,
    )
    closed = await engine.tokens.retrieve(cancelled.id)
    assert receipt["dataSha256"] == data_sha256(closed.data)
    await engine.tokens.verify_receipt(receipt)

    timing_out = await engine.tokens.create(timeout="1s")
    for _ in range(60):
        await engine.storage.fire_due_timers(100)
        if not (await engine.tokens.retrieve(timing_out.id)).is_waiting:
            break
        await asyncio.sleep(0.1)
    receipt = await engine.tokens.receipt(timing_out.id)
    assert (receipt["status"], receipt["completedVia"]) == ("TIMED_OUT", "timeout")
    await engine.tokens.verify_receipt(receipt)


async def test_a_waiting_token_has_no_receipt_and_an_unknown_one_is_not_found(
    engine: Engine,
) -> None:
    waiting = await engine.tokens.create(timeout="1h")
    with pytest.raises(RunStateError, match=f"token {waiting.id} is still WAITING: it has no"):
        await engine.tokens.receipt(waiting.id)
    with pytest.raises(TokenNotFoundError):
        await engine.tokens.receipt("waitpoint_nope")


TAMPERED = {
    "dataSha256": hashlib.sha256(b'{"approved":false}').hexdigest(),
    "completedVia": "ui",
    "completedAt": "2020-01-01T00:00:00.000Z",
    "issuedAt": "2020-01-01T00:00:00.000Z",
    "status": "CANCELLED",
    "title": "Refund order 43",
    "tokenId": "waitpoint_another",
    "answeredBy": "mallory@example.com",
    "signature": "0" * 64,
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
async def test_a_tampered_receipt_does_not_verify(engine: Engine, field: str) -> None:
    receipt = await engine.tokens.receipt((await completed(engine)).id)
    assert receipt[field] != TAMPERED[field]
    changed = {**receipt, field: TAMPERED[field]}
    with pytest.raises(ValidationError, match="invalid receipt: bad signature: the receipt was"):
        await engine.tokens.verify_receipt(changed)
    with pytest.raises(ValidationError, match="bad signature"):
        verify_receipt(changed, engine.signer.secrets)


def _without(receipt: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in receipt.items() if key != name}


MALFORMED = [
    (lambda r: _without(r, "signature"), "invalid receipt: missing field 'signature'"),
    (
        lambda r: _without(_without(r, "keyId"), "dataSha256"),
        "invalid receipt: missing fields 'dataSha256', 'keyId'",
    ),
    (lambda r: {**r, "runId": "run_1"}, "invalid receipt: unexpected field 'runId'"),
    (lambda r: {**r, "keyId": "0123456789abcdef"}, "invalid receipt: unknown key '0123456789ab"),
    (lambda r: {**r, "type": "invoice"}, "type is \"invoice\", not 'waitpoint.receipt'"),
    (lambda r: {**r, "version": 2}, "version 2 is not supported"),
    (lambda r: {**r, "version": True}, "version true is not supported"),
    (lambda r: {**r, "status": "WAITING"}, 'status is "WAITING", not one of CANCELLED'),
    (lambda r: {**r, "completedVia": "email"}, 'completedVia is "email", not one of python'),
    (lambda r: {**r, "completedAt": "yesterday"}, 'completedAt is "yesterday", not a UTC time'),
    (lambda r: {**r, "dataSha256": "ABC"}, 'dataSha256 is "ABC", not 64 lowercase hex'),
    (lambda r: {**r, "signature": r["signature"].upper()}, "invalid receipt: signature is "),
    (lambda r: {**r, "title": ["a"]}, 'title is ["a"], not a string or null'),
    (lambda r: [r], "a receipt is a JSON object, not an array"),
]


@pytest.mark.parametrize(("change", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
async def test_a_malformed_receipt_is_refused_naming_the_problem(
    engine: Engine, change: Any, message: str
) -> None:
    receipt = await engine.tokens.receipt((await completed(engine)).id)
    with pytest.raises(ValidationError) as refused:
        await engine.tokens.verify_receipt(change(receipt))
    assert message in str(refused.value)


async def test_a_receipt_outlives_a_key_rotation_while_the_old_key_is_configured(
    db_url: str,
) -> None:
    async with Engine(db_url, settings=Settings(secret_key=OLD_KEY)) as old:
        receipt = await old.tokens.receipt((await completed(old)).id)
        await old.tokens.verify_receipt(receipt)
    rotating = Settings(secret_key=NEW_KEY, previous_secret_key=OLD_KEY)
    async with Engine(db_url, settings=rotating) as new:
        await new.tokens.verify_receipt(receipt)  # signed with the previous key: still valid
        fresh = await new.tokens.receipt(receipt["tokenId"])
        assert fresh["keyId"] != receipt["keyId"]  # new receipts: the new key
        await new.tokens.verify_receipt(fresh)
    async with Engine(db_url, settings=Settings(secret_key=NEW_KEY)) as rotated:
        await rotated.tokens.verify_receipt(fresh)
        with pytest.raises(ValidationError, match=f"unknown key '{receipt['keyId']}'"):
            await rotated.tokens.verify_receipt(receipt)


def test_make_and_verify_work_on_a_token_and_the_secrets_alone() -> None:
    now = datetime(2026, 3, 29, 1, 2, 3, 456789, tzinfo=UTC)
    token = Token(
        id="waitpoint_x",
        status=WaitpointStatus.COMPLETED,
        created_at=now,
        completed_at=now,
        completed_via=CompletionSource.API,
        data=[1, "\ud800"],  # a lone surrogate (JSON allows it, UTF-8 does not) still hashes
    )
    receipt = make_receipt(token, secrets_of(OLD_KEY), now, answered_by="ana", link_id="l_1")
    assert receipt["issuedAt"] == receipt["completedAt"] == "2026-03-29T01:02:03.456Z"
    assert (receipt["answeredBy"], receipt["linkId"]) == ("ana", "l_1")
    verify_receipt(receipt, secrets_of(OLD_KEY))
    verify_receipt(receipt, secrets_of(NEW_KEY, OLD_KEY))
    with pytest.raises(ValidationError, match="unknown key"):
        verify_receipt(receipt, secrets_of(NEW_KEY))
    with pytest.raises(RunStateError, match="no decision yet"):
        waiting = token.model_copy(update={"status": WaitpointStatus.WAITING})
        make_receipt(waiting, secrets_of(OLD_KEY), now)


# --- REST API and the HTTP engine -------------------------------------------------------


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(engine) as client:
        yield client


async def test_the_api_gives_and_checks_receipts(engine: Engine, api: httpx.AsyncClient) -> None:
    token = await completed(engine)
    got = await api.get(f"{TOKENS}/{token.id}/receipt", headers=AUTH)
    assert got.status_code == 200, got.text
    receipt = got.json()
    assert receipt["tokenId"] == token.id and receipt["completedVia"] == "python"
    await engine.tokens.verify_receipt(receipt)

    checked = await api.post(RECEIPTS, json=receipt, headers=AUTH)
    assert (checked.status_code, checked.json()) == (200, {"valid": True})
    tampered = await api.post(RECEIPTS, json={**receipt, "completedVia": "ui"}, headers=AUTH)
    assert tampered.status_code == 422
    assert tampered.json()["error"].startswith("invalid receipt: bad signature")
    missing = await api.post(RECEIPTS, json=_without(receipt, "keyId"), headers=AUTH)
    assert (missing.status_code, missing.json()["error"]) == (
        422,
        "invalid receipt: missing field 'keyId'",
    )
    for body in ([receipt], "receipt", None):
        refused = await api.post(RECEIPTS, json=body, headers=AUTH)
        assert refused.status_code == 422, refused.text


async def test_the_api_refuses_a_waiting_token_an_unknown_one_and_other_callers(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    created = await api.post(TOKENS, json={"timeout": "1h"}, headers=AUTH)
    token_id, public = created.json()["id"], created.headers["x-trigger-jwt"]
    waiting = await api.get(f"{TOKENS}/{token_id}/receipt", headers=AUTH)
    assert waiting.status_code == 409
    assert "still WAITING: it has no decision yet" in waiting.json()["error"]
    unknown = await api.get(f"{TOKENS}/waitpoint_nope/receipt", headers=AUTH)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "Waitpoint not found")
    await engine.tokens.complete(token_id, DATA)
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {public}"}, 403)):
        assert (await api.get(f"{TOKENS}/{token_id}/receipt", headers=headers)).status_code == (
            status
        )
        assert (await api.post(RECEIPTS, json={}, headers=headers)).status_code == status


@pytest.fixture
async def remote(engine: Engine) -> AsyncIterator[Engine]:
    """``Engine("http://...")`` on the API of ``engine``, in-process (no socket)."""
    app = create_app(engine, secret_key=KEY)
    over_http = Engine(BASE_URL, api_key=KEY)
    connection = over_http._connection
    assert isinstance(connection, HttpConnection)
    await connection.api.close()
    connection.api._client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    async with over_http:
        yield over_http


async def test_an_http_engine_asks_the_server(engine: Engine, remote: Engine) -> None:
    token = await completed(engine)
    receipt = await remote.tokens.receipt(token.id)
    local = await engine.tokens.receipt(token.id)
    anew = {"issuedAt", "signature"}  # issued at another moment, so signed anew

    def lasting(of: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in of.items() if name not in anew}

    assert lasting(receipt) == lasting(local)
    await remote.tokens.verify_receipt(receipt)
    verify_receipt(receipt, engine.signer.secrets)
    with pytest.raises(ValidationError, match="invalid receipt: bad signature"):
        await remote.tokens.verify_receipt({**receipt, "completedAt": TAMPERED["completedAt"]})
    with pytest.raises(RunStateError, match="no decision yet"):
        await remote.tokens.receipt((await engine.tokens.create()).id)
    with pytest.raises(TokenNotFoundError):
        await remote.tokens.receipt("waitpoint_nope")


# --- CLI --------------------------------------------------------------------------------


def _completed_id(database: str) -> str:
    async def go() -> str:
        async with Engine(database) as engine:
            return (await completed(engine)).id

    return asyncio.run(go())


def _cli(database: str, *args: str, stdin: str | None = None) -> Any:
    return runner.invoke(cli_app, [*args, "--database", database], input=stdin)


def _one_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    return str(lines[0])


def test_the_cli_prints_saves_and_verifies_a_receipt(db_url: str, tmp_path: Path) -> None:
    token_id = _completed_id(db_url)
    printed = _cli(db_url, "tokens", "receipt", token_id)
    assert printed.exit_code == 0, printed.output
    receipt = json.loads(printed.stdout)
    assert (receipt["tokenId"], receipt["status"]) == (token_id, "COMPLETED")

    saved = tmp_path / "receipt.json"
    written = _cli(db_url, "tokens", "receipt", token_id, "--output", str(saved))
    assert (written.exit_code, written.stdout) == (0, ""), written.output
    assert json.loads(saved.read_text())["tokenId"] == token_id

    for args in (["--verify", str(saved)], [token_id, "--verify", str(saved)]):
        checked = _cli(db_url, "tokens", "receipt", *args)
        assert (checked.exit_code, checked.stdout) == (0, "valid\n"), checked.output
    piped = _cli(db_url, "tokens", "receipt", "--verify", "-", stdin=printed.stdout)
    assert (piped.exit_code, piped.stdout) == (0, "valid\n"), piped.output


def test_the_cli_says_in_one_line_why_a_receipt_is_not_valid(db_url: str, tmp_path: Path) -> None:
    token_id = _completed_id(db_url)
    receipt = json.loads(_cli(db_url, "tokens", "receipt", token_id).stdout)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**receipt, "dataSha256": TAMPERED["dataSha256"]}))
    error = _one_error(_cli(db_url, "tokens", "receipt", "--verify", str(tampered)))
    assert error.startswith("error: invalid receipt: bad signature")

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_without(receipt, "signature")))
    error = _one_error(_cli(db_url, "tokens", "receipt", "--verify", str(broken)))
    assert error == "error: invalid receipt: missing field 'signature'"

    (tmp_path / "not.json").write_text("{nope")
    error = _one_error(_cli(db_url, "tokens", "receipt", "--verify", str(tmp_path / "not.json")))
    assert error.startswith(f"error: --verify: {tmp_path}/not.json is not JSON")
    error = _one_error(_cli(db_url, "tokens", "receipt", "--verify", str(tmp_path / "gone")))
    assert error == f"error: --verify: cannot read {tmp_path}/gone: No such file or directory"

    good = tmp_path / "good.json"
    good.write_text(json.dumps(receipt))
    error = _one_error(_cli(db_url, "tokens", "receipt", "waitpoint_other", "--verify", str(good)))
    assert error == f"error: the receipt is valid, but of token {token_id}, not waitpoint_other"


def test_the_cli_refuses_a_waiting_token_an_unknown_one_and_no_id(db_url: str) -> None:
    async def waiting() -> str:
        async with Engine(db_url) as engine:
            return (await engine.tokens.create()).id

    token_id = asyncio.run(waiting())
    error = _one_error(_cli(db_url, "tokens", "receipt", token_id))
    assert f"token {token_id} is still WAITING: it has no decision yet" in error
    assert "waitpoint_nope" in _one_error(_cli(db_url, "tokens", "receipt", "waitpoint_nope"))
    assert "give the TOKEN_ID" in _one_error(_cli(db_url, "tokens", "receipt"))


# --- dashboard --------------------------------------------------------------------------


@pytest.fixture
async def dashboard(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, UI_KEY) as client:
        answer = await client.post("/ui/login", data={"key": UI_KEY, "next": "/ui/tokens"})
        assert answer.status_code == 303, answer.text
        yield client


async def test_the_token_page_offers_the_receipt_of_a_closed_token_as_a_download(
    engine: Engine, dashboard: httpx.AsyncClient
) -> None:
    token = await completed(engine)
    page = await dashboard.get(f"/ui/tokens/{token.id}")
    link = f'href="/ui/tokens/{token.id}/receipt"'
    assert page.status_code == 200 and link in page.text and "Download receipt" in page.text

    download = await dashboard.get(f"/ui/tokens/{token.id}/receipt")
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "application/json"
    disposition = f"attachment; filename=receipt-{token.id}.json"
    assert download.headers["content-disposition"] == disposition
    assert download.headers["cache-control"] == "no-store"
    receipt = download.json()
    assert receipt["tokenId"] == token.id
    await engine.tokens.verify_receipt(receipt)

    waiting = await engine.tokens.create()
    page = await dashboard.get(f"/ui/tokens/{waiting.id}")
    assert page.status_code == 200 and "Download receipt" not in page.text
    refused = await dashboard.get(f"/ui/tokens/{waiting.id}/receipt")
    assert refused.status_code == 409 and "no decision yet" in refused.text
    assert (await dashboard.get("/ui/tokens/waitpoint_nope/receipt")).status_code == 404


async def test_the_download_needs_a_session(engine: Engine) -> None:
    token = await completed(engine)
    async with client_for(engine, UI_KEY) as anonymous:
        answer = await anonymous.get(f"/ui/tokens/{token.id}/receipt")
    assert answer.status_code == 401
    assert "waitpoint.receipt" not in answer.text
