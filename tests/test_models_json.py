"""The wire JSON of tokens (against the seed waitpoint token schema) and of runs."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft7Validator, FormatChecker

from engine import Engine, RunStatus, Token, WaitpointStatus
from engine.models import TaskInfo

SCHEMA_PATH = Path(__file__).with_name("waitpoint-token.schema.json")
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
URL_TAIL = re.compile(
    r"/api/v1/waitpoints/tokens/(waitpoint_[0-9a-z]{26})/callback/([0-9a-f]{64})$"
)
TASK_ID = "models-json-shape"


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True  # format checks only apply to strings
    parsed = datetime.fromisoformat(value)  # raises on malformed text
    return parsed.tzinfo is not None and parsed.utcoffset() is not None


def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def _format_checker() -> FormatChecker:
    """jsonschema's checker, with fallbacks for the formats that need optional packages.

    ``date-time`` needs rfc3339-validator and ``uri`` needs rfc3987 (or rfc3986-validator);
    when they are not installed jsonschema silently skips those formats, so check them here.
    """
    checker = FormatChecker()
    if "date-time" not in checker.checkers:
        checker.checks("date-time", raises=ValueError)(_is_datetime)
    if "uri" not in checker.checkers:
        checker.checks("uri")(_is_uri)
    return checker


VALIDATOR = Draft7Validator(SCHEMA, format_checker=_format_checker())


def test_seed_schema_is_valid_draft7_and_its_formats_are_checked() -> None:
    Draft7Validator.check_schema(SCHEMA)
    assert {"date-time", "uri"} <= set(VALIDATOR.format_checker.checkers)  # type: ignore[union-attr]


def test_format_checker_fallbacks_reject_bad_values() -> None:
    bad = {
        "id": "waitpoint_x",
        "status": "WAITING",
        "url": "not a url",
        "createdAt": "yesterday",
        "expiresAt": "2025-01-01T00:00:00",  # no timezone
    }
    paths = sorted(".".join(map(str, e.absolute_path)) for e in VALIDATOR.iter_errors(bad))
    assert paths == ["createdAt", "expiresAt", "url"]


def assert_token_json(token: Token) -> dict[str, Any]:
    """Validate the token's wire JSON against the seed schema and the shapes it leaves open."""
    data = token.model_dump(mode="json", by_alias=True)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert errors == []
    # json round trip: the dump is plain JSON
    assert json.loads(json.dumps(data)) == data
    assert data["id"] == token.id
    assert data["id"].startswith("waitpoint_")
    assert data["url"].startswith(("http://", "https://"))
    match = URL_TAIL.search(data["url"])
    assert match is not None, data["url"]
    assert match.group(1) == token.id
    for key in ("createdAt", "expiresAt", "completedAt", "idempotencyKeyExpiresAt"):
        if data.get(key) is not None:
            assert datetime.fromisoformat(data[key]).utcoffset() == timedelta(0)
    # null where the schema allows it, absent where it does not
    assert "expiresAt" in data
    assert "completedAt" in data
    for key in ("idempotencyKey", "ttl", "completedVia", "idempotencyKeyExpiresAt"):
        assert data.get(key, "absent") is not None, f"{key} must be absent rather than null"
    # Python-only fields stay off the wire
    for key in ("isCached", "is_cached", "dataSchema", "data_schema"):
        assert key not in data
    assert all("_" not in key for key in data), "keys are camelCase"
    return data


async def test_plain_waiting_token_json(engine: Engine) -> None:
    token = await engine.tokens.create()
    data = assert_token_json(token)
    assert data["status"] == "WAITING"
    assert data["tags"] == []
    assert data["expiresAt"] is None
    assert data["completedAt"] is None
    assert data["data"] is None
    for key in ("idempotencyKey", "ttl", "completedVia", "idempotencyKeyExpiresAt"):
        assert key not in data


async def test_retrieved_token_json_equals_created(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1h", tags=["a"])
    again = await engine.tokens.retrieve(token.id)
    assert assert_token_json(again) == assert_token_json(token)


async def test_token_url_carries_a_signature_the_storage_accepts(engine: Engine) -> None:
    token = await engine.tokens.create()
    match = URL_TAIL.search(token.url)
    assert match is not None
    assert engine.signer.verify(token.id, match.group(2))


async def test_token_with_timeout_and_tags_json(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1h", tags=["order:1", "vip"])
    data = assert_token_json(token)
    assert data["ttl"] == "1h"
    assert data["tags"] == ["order:1", "vip"]
    expires = datetime.fromisoformat(data["expiresAt"])
    created = datetime.fromisoformat(data["createdAt"])
    assert timedelta(minutes=59, seconds=59) <= expires - created <= timedelta(hours=1, seconds=1)


async def test_token_with_absolute_deadline_has_expires_at_but_no_ttl(engine: Engine) -> None:
    deadline = datetime.now(UTC) + timedelta(days=2)
    data = assert_token_json(await engine.tokens.create(timeout=deadline))
    assert "ttl" not in data
    assert abs(datetime.fromisoformat(data["expiresAt"]) - deadline) < timedelta(milliseconds=2)


async def test_token_with_idempotency_key_json(engine: Engine) -> None:
    token = await engine.tokens.create(idempotency_key="charge-42", idempotency_key_ttl="1d")
    data = assert_token_json(token)
    assert data["idempotencyKey"] == "charge-42"
    assert "idempotencyKeyExpiresAt" in data
    cached = await engine.tokens.create(idempotency_key="charge-42")
    assert cached.is_cached
    assert assert_token_json(cached) == data


async def test_completed_token_json_carries_data(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1h")
    result = await engine.tokens.complete(token.id, {"approved": True, "by": ["ann"]})
    assert result.applied
    data = assert_token_json(result.token)
    assert data["status"] == "COMPLETED"
    assert data["data"] == {"approved": True, "by": ["ann"]}
    assert data["completedVia"] == "python"
    assert datetime.fromisoformat(data["completedAt"]) >= datetime.fromisoformat(data["createdAt"])
    assert assert_token_json(await engine.tokens.retrieve(token.id)) == data


async def test_cancelled_token_json(engine: Engine) -> None:
    token = await engine.tokens.create()
    result = await engine.tokens.cancel(token.id)
    data = assert_token_json(result.token)
    assert data["status"] == "CANCELLED"
    assert data["completedAt"] is not None
    assert data["data"]["code"] == "WAITPOINT_CANCELLED"
    assert token.id in data["data"]["message"]


async def test_timed_out_token_json(engine: Engine) -> None:
    token = await engine.tokens.create(timeout="1s", tags="slow")
    await asyncio.sleep(1.1)
    assert await engine.storage.fire_due_timers(100) == 1
    data = assert_token_json(await engine.tokens.retrieve(token.id))
    assert data["status"] == WaitpointStatus.TIMED_OUT.value
    assert data["ttl"] == "1s"
    assert data["tags"] == ["slow"]
    assert data["completedVia"] == "timeout"
    assert data["completedAt"] is not None
    assert datetime.fromisoformat(data["completedAt"]) >= datetime.fromisoformat(data["expiresAt"])
    assert data["data"]["code"] == "TRIGGER_WAITPOINT_TIMEOUT"
    assert data["data"]["message"].startswith("Waitpoint timed out at ")


async def test_listed_tokens_all_match_schema(engine: Engine) -> None:
    await engine.tokens.create()
    await engine.tokens.create(timeout="5m", tags=["x"], idempotency_key="k")
    done = await engine.tokens.create()
    await engine.tokens.complete(done.id, [1, 2, 3])
    page = await engine.tokens.list()
    assert len(page.data) == 3
    for token in page.data:
        assert_token_json(token)


# runs ------------------------------------------------------------------------------------


@pytest.fixture
async def task_id(engine: Engine) -> str:
    await engine.storage.register_tasks([TaskInfo(TASK_ID, None)])
    return TASK_ID


async def test_queued_run_json(engine: Engine, task_id: str) -> None:
    run = await engine.trigger(task_id, {"order": 1}, tags=["t1"])
    data = run.model_dump(mode="json", by_alias=True)
    assert set(data) == {
        "id",
        "taskIdentifier",
        "status",
        "payload",
        "tags",
        "attemptCount",
        "createdAt",
        "updatedAt",
        "waitingOn",
        "depth",
        "children",
    }
    assert data["depth"] == 0
    assert data["id"].startswith("run_")
    assert data["taskIdentifier"] == task_id
    assert data["status"] == RunStatus.QUEUED.value
    assert data["payload"] == {"order": 1}
    assert data["tags"] == ["t1"]
    assert data["attemptCount"] == 0
    assert data["waitingOn"] == []
    for key in ("createdAt", "updatedAt"):
        assert datetime.fromisoformat(data[key]).utcoffset() == timedelta(0)
    for key in ("output", "error", "startedAt", "finishedAt", "idempotencyKey", "isCached"):
        assert key not in data


async def test_run_json_keeps_null_payload(engine: Engine, task_id: str) -> None:
    data = (await engine.trigger(task_id)).model_dump(mode="json", by_alias=True)
    assert "payload" in data
    assert data["payload"] is None


async def test_run_json_with_idempotency_key(engine: Engine, task_id: str) -> None:
    run = await engine.trigger(task_id, idempotency_key="once")
    data = run.model_dump(mode="json", by_alias=True)
    assert data["idempotencyKey"] == "once"
    again = await engine.trigger(task_id, idempotency_key="once")
    assert again.is_cached
    assert again.model_dump(mode="json", by_alias=True) == data


async def test_canceled_run_json_has_finished_at(engine: Engine, task_id: str) -> None:
    run = await engine.trigger(task_id)
    data = (await engine.runs.cancel(run.id)).model_dump(mode="json", by_alias=True)
    assert data["status"] == "CANCELED"
    assert datetime.fromisoformat(data["finishedAt"]) >= datetime.fromisoformat(data["createdAt"])
    for key in ("output", "error", "startedAt"):
        assert key not in data


async def test_run_json_without_alias_uses_snake_case_and_still_omits_unset(
    engine: Engine, task_id: str
) -> None:
    data = (await engine.trigger(task_id)).model_dump(mode="json")
    assert data["task_identifier"] == task_id
    assert data["attempt_count"] == 0
    for key in ("output", "error", "started_at", "finished_at", "idempotency_key"):
        assert key not in data
