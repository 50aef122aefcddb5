"""Completions refused after a token closed are counted, and only the last 10 are kept.

Anyone holding a callback URL may post to it as often as they like once the token timed out
or was cancelled; each refusal used to add a row, so a closed token's JSON grew without bound
(3,000 anonymous POSTs made it 160 KB). Both backends, through the storage, the API and the
migration that trims the rows an older version kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from engine import Engine
from engine.clock import from_ms
from engine.errors import TokenNotWaitingError
from engine.models import CompletionSource, LateCompletion
from engine.storage import NewToken, Storage, open_storage
from engine.testing import ManualClock

from ..api.conftest import AUTH, SDK_HEADERS, TOKENS, api_client, path_of
from .raw_database import migrations_module, sql

SIGNING_SECRET = "late-completions-test-signing-secret-0123456789"
API = CompletionSource.API
CALLBACK = CompletionSource.CALLBACK


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def storage(db_url: str, clock: ManualClock) -> AsyncIterator[Storage]:
    opened = open_storage(db_url, signing_secret=SIGNING_SECRET, clock=clock)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def refused(storage: Storage, token_id: str, via: CompletionSource) -> None:
    with pytest.raises(TokenNotWaitingError):
        await storage.complete_token(token_id, {"late": True}, via)


async def rows_of(db_url: str, token_id: str) -> int:
    found = await sql(
        db_url, "SELECT count(*) AS n FROM late_completions WHERE token_id = ?", token_id
    )
    return int(found[0]["n"])


async def test_three_hundred_late_completions_keep_ten_rows_and_count_all_of_them(
    storage: Storage, db_url: str, clock: ManualClock
) -> None:
    token = await storage.create_token(NewToken())
    other = await storage.create_token(NewToken())
    await storage.cancel_token(token.id, API)
    await storage.cancel_token(other.id, API)
    await refused(storage, other.id, API)
    for _ in range(29):  # 290 refusals, 10 racing at a time (one millisecond)
        await asyncio.gather(*(refused(storage, token.id, API) for _ in range(10)))
    last: list[LateCompletion] = []
    for i in range(10):  # the last ten, each at its own time and alternating routes
        clock.advance(timedelta(milliseconds=1))
        via = CALLBACK if i % 2 else CompletionSource.PUBLIC_TOKEN
        await refused(storage, token.id, via)
        last.append(LateCompletion(via=via, at=from_ms(clock.now_ms())))

    stored = await storage.get_token(token.id)
    assert stored.late_completion_count == 300
    assert stored.late_completions == last
    assert await rows_of(db_url, token.id) == 10
    untouched = await storage.get_token(other.id)  # counted per token
    assert untouched.late_completion_count == 1 and untouched.late_completions is not None
    assert len(untouched.late_completions) == 1
    json = stored.model_dump(mode="json", by_alias=True)
    assert json["lateCompletionCount"] == 300 and len(json["lateCompletions"]) == 10


async def test_the_api_shows_the_last_ten_late_completions_and_the_count(engine: Engine) -> None:
    async with api_client(engine) as api:  # every token answer is checked against the schema
        created = await api.post(TOKENS, json={}, headers=AUTH)
        token_id, url = created.json()["id"], created.json()["url"]
        await api.post(f"{TOKENS}/{token_id}/cancel", headers=AUTH)
        waiting = (await api.get(f"{TOKENS}/{token_id}", headers=AUTH)).json()
        for i in range(25):
            if i % 5 == 4:  # anonymous, through the callback URL
                answer = await api.post(path_of(url), json={"n": i})
            else:
                answer = await api.post(
                    f"{TOKENS}/{token_id}/complete", json={"data": i}, headers=AUTH
                )
            assert answer.status_code == 410, answer.text
        token = (await api.get(f"{TOKENS}/{token_id}", headers=AUTH)).json()
        sdk = (await api.get(f"{TOKENS}/{token_id}", headers={**AUTH, **SDK_HEADERS})).json()
    assert "lateCompletions" not in waiting and "lateCompletionCount" in token
    assert token["lateCompletionCount"] == 25
    vias = ["callback" if i % 5 == 4 else "api" for i in range(15, 25)]
    assert [entry["via"] for entry in token["lateCompletions"]] == vias
    assert sdk["lateCompletionCount"] == 25 and len(sdk["lateCompletions"]) == 10


async def test_migration_3_keeps_the_last_ten_late_completions_and_counts_the_rest(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made before migration 3 holds every refused completion as a row."""
    module = migrations_module(db_url)
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:2])
        async with Engine(db_url) as old:
            many, few, none = [(await old.tokens.create()).id for _ in range(3)]
            for token_id in (many, few, none):
                await old.tokens.cancel(token_id)
    base = 1_700_000_000_000
    for i in range(25):  # what the old version wrote: one row per refusal
        via = "callback" if i % 2 else "api"
        await sql(
            db_url,
            "INSERT INTO late_completions (token_id, via, attempted_at) VALUES (?, ?, ?)",
            many,
            via,
            base + i,
        )
    for i in range(3):
        await sql(
            db_url,
            "INSERT INTO late_completions (token_id, via, attempted_at) VALUES (?, ?, ?)",
            few,
            "public-token",
            base + i,
        )

    async with Engine(db_url) as new:
        assert await new.storage.migrate() == len(migrations)
        kept = await new.tokens.retrieve(many)
        assert kept.late_completion_count == 25
        assert kept.late_completions == [
            LateCompletion(
                via=CompletionSource("callback" if i % 2 else "api"), at=from_ms(base + i)
            )
            for i in range(15, 25)
        ]
        assert await rows_of(db_url, many) == 10
        small = await new.tokens.retrieve(few)
        assert small.late_completion_count == 3 and small.late_completions is not None
        assert [c.at for c in small.late_completions] == [from_ms(base + i) for i in range(3)]
        clean = await new.tokens.retrieve(none)
        assert clean.late_completions is None and clean.late_completion_count is None

        with pytest.raises(TokenNotWaitingError):  # the numbering goes on after the migration
            await new.tokens.complete(many, {"late": True})
        after = await new.tokens.retrieve(many)
    assert after.late_completion_count == 26
    assert after.late_completions is not None and len(after.late_completions) == 10
    assert after.late_completions[:9] == kept.late_completions[1:]
    assert after.late_completions[-1].via is CompletionSource.PYTHON
    assert await rows_of(db_url, many) == 10
