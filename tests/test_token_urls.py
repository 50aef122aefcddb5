"""Who makes a token's callback URL: the layer that hands the token out, never storage.

Storage returns tokens with an empty ``url`` (tests/test_storage_contract.py); these tests
follow a token through every presenting layer and check that each hands it out signed, with
the URL its process's signer makes and that the API's check accepts.
"""

from __future__ import annotations

from engine import Engine, Token, complete_token, create_token, task, wait_for_token
from engine.client.local import verify_callback

from .conftest import StartWorker


def _signature(token: Token) -> str:
    return token.url.rsplit("/", 1)[1]


async def _signed_by(engine: Engine, token: Token) -> bool:
    return token.url == engine.signer.url(token.id) and await verify_callback(
        engine.signer, engine.storage, token.id, _signature(token)
    )


@task("url-maker")
async def url_maker(payload: None) -> dict[str, str]:
    made = await create_token(timeout="1h")
    other = await create_token(timeout="1h")
    completed = await complete_token(other.id, {"ok": True})
    await wait_for_token(other)
    return {"id": made.id, "url": made.url, "other": other.id, "other_url": completed.token.url}


async def test_a_token_made_in_a_run_is_handed_to_the_task_signed(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([url_maker])
    run = await engine.trigger("url-maker")
    output = (await engine.wait_for_run(run.id, timeout=20)).output
    made = await engine.tokens.retrieve(output["id"])
    assert output["url"] == made.url == engine.signer.url(made.id)
    assert output["other_url"] == engine.signer.url(output["other"])
    timeline = await engine.runs.timeline(run.id)
    tokens = [entry.token for entry in timeline if entry.token is not None]
    assert tokens and all([await _signed_by(engine, token) for token in tokens])


async def test_every_facade_call_hands_tokens_out_signed(engine: Engine) -> None:
    made = await engine.tokens.create(timeout="1h")
    assert await _signed_by(engine, made)
    assert await _signed_by(engine, await engine.tokens.retrieve(made.id))
    listed = (await engine.tokens.list()).data
    assert listed and all([await _signed_by(engine, token) for token in listed])
    assert await _signed_by(engine, (await engine.tokens.complete(made.id, 1)).token)
    other = await engine.tokens.create()
    assert await _signed_by(engine, (await engine.tokens.cancel(other.id)).token)
    assert await engine.storage.get_token(made.id) != await engine.tokens.retrieve(made.id)
    assert (await engine.storage.get_token(made.id)).url == ""
