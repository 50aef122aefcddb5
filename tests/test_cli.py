"""The ``waitpoint`` CLI, invoked in-process: JSON round trips and one-line errors."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner, Result

from engine import Engine
from engine.cli import app
from engine.models import TaskInfo

runner = CliRunner()


@pytest.fixture
def database(db_url: str) -> str:
    return db_url


def when(text: str) -> datetime:
    """An ISO 8601 time from the wire (compare times, never their strings: fractions vary)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def invoke(database: str, *args: str) -> Result:
    return runner.invoke(app, [*args, "--database", database])


def ok_json(database: str, *args: str) -> Any:
    """Run a command with --json, check it succeeded, and return the parsed stdout."""
    result = invoke(database, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit code 1, exactly one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def register(database: str, *task_ids: str) -> None:
    """What a worker does at start: record the tasks it runs, so triggers are accepted."""

    async def go() -> None:
        async with Engine(database) as engine:
            await engine.storage.register_tasks([TaskInfo(t, None) for t in task_ids])

    asyncio.run(go())


def test_token_create_get_list_complete_round_trip(database: str) -> None:
    created = ok_json(database, "tokens", "create", "--timeout", "1h", "--tag", "a", "--tag", "b")
    assert created["status"] == "WAITING"
    assert created["tags"] == ["a", "b"]
    assert created["ttl"] == "1h"

    fetched = ok_json(database, "tokens", "get", created["id"])
    assert fetched == created

    listed = ok_json(database, "tokens", "list", "--tag", "a")
    assert [t["id"] for t in listed["data"]] == [created["id"]]
    assert listed["nextCursor"] is None

    done = ok_json(database, "tokens", "complete", created["id"], "--data", '{"approved": true}')
    assert done["status"] == "COMPLETED"
    assert done["completedVia"] == "cli"
    assert done["data"] == {"approved": True}
    assert ok_json(database, "tokens", "get", created["id"])["completedVia"] == "cli"
    completed = ok_json(database, "tokens", "list", "--status", "completed")
    assert [t["id"] for t in completed["data"]] == [created["id"]]


def test_completing_twice_changes_nothing_and_says_so(database: str) -> None:
    token = ok_json(database, "tokens", "create")
    ok_json(database, "tokens", "complete", token["id"], "--data", "1")
    again = invoke(database, "tokens", "complete", token["id"], "--data", "2", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["data"] == 1
    assert "already COMPLETED" in again.stderr


def test_token_cancel_marks_it_cancelled_by_the_cli(database: str) -> None:
    token = ok_json(database, "tokens", "create")
    cancelled = ok_json(database, "tokens", "cancel", token["id"])
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["completedVia"] == "cli"


def test_token_list_pages_with_the_cursor(database: str) -> None:
    ids = [ok_json(database, "tokens", "create")["id"] for _ in range(3)]
    first = ok_json(database, "tokens", "list", "--limit", "2")
    assert len(first["data"]) == 2
    assert first["nextCursor"]
    rest = ok_json(database, "tokens", "list", "--limit", "2", "--after", first["nextCursor"])
    seen = [t["id"] for t in first["data"] + rest["data"]]
    assert sorted(seen) == sorted(ids)
    assert rest["nextCursor"] is None


def test_tables_and_key_value_views_for_people(database: str) -> None:
    token = ok_json(database, "tokens", "create", "--tag", "[red]x")
    table = invoke(database, "tokens", "list")
    assert table.exit_code == 0
    assert token["id"] in table.stdout
    assert "[red]x" in table.stdout  # shown as data, never interpreted as markup
    single = invoke(database, "tokens", "get", token["id"])
    assert single.exit_code == 0
    assert token["id"] in single.stdout and "WAITING" in single.stdout
    assert invoke(database, "runs", "list").stdout.strip() == "no runs"


def test_trigger_then_inspect_and_cancel_the_run(database: str) -> None:
    register(database, "t")
    run = ok_json(database, "trigger", "t", "--payload", '{"n": 1}', "--tag", "x")
    assert run["status"] == "QUEUED"
    assert run["payload"] == {"n": 1}
    assert ok_json(database, "runs", "get", run["id"])["id"] == run["id"]
    listed = ok_json(database, "runs", "list", "--task", "t", "--status", "QUEUED")
    assert [r["id"] for r in listed["data"]] == [run["id"]]
    assert ok_json(database, "runs", "cancel", run["id"])["status"] == "CANCELED"


def test_trigger_with_an_idempotency_key_returns_the_same_run(database: str) -> None:
    register(database, "t")
    first = ok_json(database, "trigger", "t", "--idempotency-key", "k1")
    second = ok_json(database, "trigger", "t", "--idempotency-key", "k1")
    assert first["id"] == second["id"]


def test_trigger_options_reach_the_run(database: str) -> None:
    register(database, "t")
    run = ok_json(
        database,
        "trigger",
        "t",
        "--delay",
        "1h",
        "--ttl",
        "2h",
        "--metadata",
        '{"customer": "acme"}',
        "--max-attempts",
        "2",
        "--max-duration",
        "10m",
        "--concurrency-key",
        "acme",
        "--idempotency-key",
        "k2",
        "--idempotency-key-ttl",
        "1d",
    )
    assert run["status"] == "DELAYED" and when(run["delayedUntil"]) > when(run["createdAt"])
    assert run["ttl"] == "2h" and run["metadata"] == {"customer": "acme"}
    recent = ok_json(database, "runs", "list", "--since", "1h", "--status", "DELAYED")
    assert [r["id"] for r in recent["data"]] == [run["id"]]


def test_trigger_with_bad_metadata_is_one_clear_line(database: str) -> None:
    register(database, "t")
    assert_one_line_error(invoke(database, "trigger", "t", "--metadata", "[1, 2]"), "metadata")


def test_trigger_wait_gives_up_after_its_timeout(database: str) -> None:
    register(database, "t")
    result = invoke(database, "trigger", "t", "--wait", "--timeout", "0.2")
    assert_one_line_error(result, "still QUEUED")


def test_trigger_timeout_without_wait_is_refused(database: str) -> None:
    register(database, "t")
    assert_one_line_error(invoke(database, "trigger", "t", "--timeout", "5"), "--wait")
    assert ok_json(database, "runs", "list")["data"] == []


def test_trigger_of_an_unknown_task_is_one_clear_line(database: str) -> None:
    result = invoke(database, "trigger", "no-such-task", "--payload", "{}")
    assert_one_line_error(result, "unknown task", "no-such-task")


def test_malformed_completion_data_is_one_clear_line(database: str) -> None:
    token = ok_json(database, "tokens", "create")
    result = invoke(database, "tokens", "complete", token["id"], "--data", "{approved: true")
    assert_one_line_error(result, "--data is not valid JSON")
    assert ok_json(database, "tokens", "get", token["id"])["status"] == "WAITING"


def test_malformed_payload_is_one_clear_line(database: str) -> None:
    register(database, "t")
    assert_one_line_error(invoke(database, "trigger", "t", "--payload", "{"), "--payload")
    assert ok_json(database, "runs", "list")["data"] == []


def test_bad_duration_is_refused(database: str) -> None:
    result = invoke(database, "tokens", "create", "--timeout", "5x")
    assert_one_line_error(result, "invalid duration '5x'")


def test_eleven_tags_are_refused(database: str) -> None:
    tags = [arg for i in range(11) for arg in ("--tag", f"t{i}")]
    assert_one_line_error(invoke(database, "tokens", "create", *tags), "too many tags")
    assert ok_json(database, "tokens", "list")["data"] == []


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "get", "run_unknown"),
        ("runs", "cancel", "run_unknown"),
        ("tokens", "get", "waitpoint_unknown"),
        ("tokens", "complete", "waitpoint_unknown"),
        ("tokens", "cancel", "waitpoint_unknown"),
    ],
)
def test_unknown_ids_are_one_clear_line(database: str, args: tuple[str, ...]) -> None:
    assert_one_line_error(invoke(database, *args), args[2])


def test_unknown_status_is_refused(database: str) -> None:
    assert_one_line_error(invoke(database, "runs", "list", "--status", "bogus"), "unknown status")


def test_worker_without_tasks_exits_with_one_line(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty_tasks.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_tasks puts the cwd on it
    result = invoke(database, "worker", "--tasks", "empty_tasks")
    assert_one_line_error(result, "no tasks found", "empty_tasks")
    missing = invoke(database, "worker", "--tasks", "no_such_module_here")
    assert_one_line_error(missing, "no_such_module_here")


def test_invoking_the_cli_in_process_leaves_logging_as_it_was(database: str) -> None:
    before = structlog.get_config()
    was_configured = structlog.is_configured()
    ok_json(database, "tokens", "create")
    assert_one_line_error(invoke(database, "runs", "get", "run_unknown"), "run_unknown")
    assert structlog.get_config() == before
    assert structlog.is_configured() == was_configured
