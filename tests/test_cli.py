"""The ``waitpoint`` CLI, invoked in-process: JSON round trips and one-line errors."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer.main
from pydantic.alias_generators import to_camel
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from engine import Engine
from engine.cli import app
from engine.cli_words import in_cli_words, option_names, walk
from engine.models import TaskInfo

from .cli_runs import (
    DIVIDE_LINE,
    boom,
    child,
    drive,
    failed,
    napper,
    parent,
    waiting_on_a_child,
    waiting_on_a_token,
)

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
    empty = invoke(database, "runs", "list")
    assert empty.stdout == "" and empty.stderr.strip() == "no runs"  # stdout: rows only


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


def test_tokens_create_takes_a_title_a_description_and_a_context(database: str) -> None:
    created = ok_json(
        database,
        "tokens",
        "create",
        "--title",
        "Refund order 42",
        "--description",
        "The parcel never came.",
        "--context",
        '{"amount": 19.99, "order": 42}',
    )
    assert created["title"] == "Refund order 42"
    assert created["description"] == "The parcel never came."
    assert created["context"] == {"amount": 19.99, "order": 42}
    assert ok_json(database, "tokens", "get", created["id"]) == created


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--context", "[1, 2]"), "--context must be a JSON object (a dict), got list"),
        (("--context", "{amount: 1}"), "--context is not valid JSON"),
        (("--title", "x" * 201), "--title must be at most 200 characters long, got 201"),
        (("--description", "x" * 4001), "--description must be at most 4000 characters long"),
    ],
)
def test_tokens_create_refuses_bad_details_in_one_line(
    database: str, args: tuple[str, ...], fragment: str
) -> None:
    assert_one_line_error(invoke(database, "tokens", "create", *args), fragment)
    assert ok_json(database, "tokens", "list")["data"] == []


# --- help, version, completion ---------------------------------------------------------


COMMANDS = [path for path, _ in walk(typer.main.get_command(app))]


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    root = typer.main.get_command(app)
    missing = [
        f"waitpoint {path} {param.name}".replace("  ", " ")
        for path, command in [("", root), *walk(root)]
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == []
    assert {"trigger", "runs list", "tokens create", "tokens link"} <= set(COMMANDS)


@pytest.mark.parametrize("path", ["", *COMMANDS])
def test_help_names_values_not_python_types(path: str) -> None:
    """``--payload JSON``, ``--wait`` alone: never ``<str>``, ``<bool>`` or ``<list[str]>``."""
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.findall(r"<[a-z][^>]*>", result.stdout) == []
    assert "Show this message and exit." in result.stdout


def test_help_of_trigger_names_each_value() -> None:
    shown = runner.invoke(app, ["trigger", "--help"], env={"COLUMNS": "200"}).stdout
    for option, value in [
        ("--payload", "JSON"),
        ("--idempotency-key", "KEY"),
        ("--delay", "DURATION"),
        ("--max-attempts", "N"),
        ("--database", "URL"),
    ]:
        assert re.search(rf"{option}\s+{value}\b", shown), option
    assert "TASK_ID" in shown


def test_list_filters_say_that_a_repeated_tag_matches_any() -> None:
    for command in (["runs", "list"], ["tokens", "list"]):
        shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "any of the tags" in shown and "--tag a --tag b" in shown


def test_version_is_the_installed_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"waitpoint {metadata.version('waitpoint')}"


def test_shell_completion_is_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "--install-completion" in shown and "--show-completion" in shown
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="waitpoint")
    assert script.exit_code == 0, script.output
    assert "_WAITPOINT_COMPLETE" in script.stdout


# --- messages in the CLI's words -------------------------------------------------------


def test_a_repeated_tag_lists_what_has_any_of_the_tags(database: str) -> None:
    made = {
        tags: ok_json(database, "tokens", "create", *[a for t in tags for a in ("--tag", t)])["id"]
        for tags in (("a",), ("b",), ("a", "b"), ("c",))
    }
    listed = ok_json(database, "tokens", "list", "--tag", "a", "--tag", "b")["data"]
    assert {t["id"] for t in listed} == {made[("a",)], made[("b",)], made[("a", "b")]}


def test_an_unknown_status_is_named_with_the_known_ones(database: str) -> None:
    result = invoke(database, "runs", "list", "--status", "DONE")
    assert_one_line_error(result, "unknown status 'DONE' (use one of QUEUED, EXECUTING, ")


def test_a_missing_payload_is_asked_for_by_its_option(database: str) -> None:
    schema = {"type": "object", "properties": {"order_id": {"type": "integer"}}}

    async def go() -> None:
        async with Engine(database) as engine:
            await engine.storage.register_tasks([TaskInfo("cli-typed", schema)])

    asyncio.run(go())
    result = invoke(database, "trigger", "cli-typed")
    assert_one_line_error(result, "task 'cli-typed' needs a payload: pass --payload with a JSON")
    assert "(root)" not in result.stderr and "None" not in result.stderr
    assert ok_json(database, "trigger", "cli-typed", "--payload", '{"order_id": 1}')["id"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("tokens", "create", "--timeout", "5x"), "--timeout: invalid duration '5x'"),
        (("trigger", "t", "--delay", "0s"), "--delay: invalid duration '0s'"),
        (("trigger", "t", "--idempotency-key-ttl", "1h"), "--idempotency-key-ttl needs an"),
        (("runs", "list", "--limit", "0"), "--limit must be between 1 and 100"),
        (("trigger", "t", "--metadata", "[1]"), "--metadata must be a JSON object"),
        (("runs", "list", "--since", "soon"), "--since: invalid duration 'soon'"),
    ],
)
def test_messages_name_the_options_not_python_parameters(
    database: str, args: tuple[str, ...], said: str
) -> None:
    register(database, "t")
    result = invoke(database, *args)
    assert_one_line_error(result, said)
    assert "_" not in result.stderr.split("'")[0]  # no Python name before the quoted value


def test_an_approval_link_too_long_names_expires_in(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAITPOINT_PUBLIC_URL", "http://127.0.0.1:9")
    token = ok_json(database, "tokens", "create")
    result = invoke(database, "tokens", "link", token["id"], "--expires-in", "60d")
    assert_one_line_error(result, "--expires-in '60d' is too long: at most 30d")
    assert "expires_in" not in result.stderr


def test_the_api_key_hint_names_the_option_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WAITPOINT_SECRET_KEY", raising=False)
    result = runner.invoke(app, ["runs", "list", "--api-url", "http://127.0.0.1:9"])
    assert_one_line_error(result, "pass --api-key or set WAITPOINT_SECRET_KEY")
    assert "api_key=" not in result.stderr


def test_python_names_become_options_outside_quotes_only() -> None:
    options = {"expires_in": "--expires-in", "api_key": "--api-key", "limit": "--limit"}
    assert in_cli_words("expires_in '60d' is too long", options) == "--expires-in '60d' is too long"
    assert in_cli_words("pass api_key= or set X", options) == "pass --api-key or set X"
    assert in_cli_words("unknown task 'expires_in'", options) == "unknown task 'expires_in'"
    assert in_cli_words("limit must be 1-100", options) == "--limit must be 1-100"
    assert in_cli_words("no limit here", options) == "no limit here"


def test_options_are_named_by_the_wire_forms_the_models_give_fields() -> None:
    """cli_words spells camelCase itself (pydantic's import would slow --help): every option's
    wire form is the one the models' alias generator gives."""
    options = option_names(typer.main.get_command(app))
    for name, option in options.items():
        if "_" in name:
            assert options[to_camel(name)] == option


# --- failures, stack traces and the timeline -------------------------------------------


def test_a_failed_run_shows_its_stack_trace_as_text_below_the_view(database: str) -> None:
    run_id = drive(database, boom, failed, idempotency_key="boom-once")
    shown = invoke(database, "runs", "get", run_id)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert "error\tZeroDivisionError: division by zero" in lines  # one line, no JSON
    trace = lines[lines.index("Traceback (most recent call last):") :]
    assert trace[-1] == "ZeroDivisionError: division by zero"
    assert f'File "{Path(__file__).parent / "cli_runs.py"}", line {DIVIDE_LINE}, in divide' in (
        "\n".join(trace)
    )
    assert "\\n" not in shown.stdout and "stackTrace" not in shown.stdout
    assert lines.index("Traceback (most recent call last):") > lines.index(
        next(line for line in lines if line.startswith("at\t"))
    )  # below the timeline, which follows the view

    as_json = ok_json(database, "runs", "get", run_id)
    assert as_json["error"]["stackTrace"].startswith("Traceback (most recent call last):")
    assert as_json["error"]["stackTrace"] == "\n".join(trace) + "\n"

    again = invoke(database, "trigger", "cli-boom", "--idempotency-key", "boom-once", "--wait")
    assert again.exit_code == 1
    assert "Traceback (most recent call last):" in again.stdout.splitlines()
    assert again.stderr.strip().splitlines()[-1] == f"error: run {run_id} ended FAILED"


def test_the_worker_logs_where_in_the_task_a_run_failed(database: str) -> None:
    with capture_logs() as events:
        drive(database, boom, failed)
    [event] = [e for e in events if e["event"] == "run.failed"]
    assert event["error"] == "division by zero"
    path = Path(__file__).parent / "cli_runs.py"
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    assert event["where"] == f"{shown}:{DIVIDE_LINE} in divide"


def test_the_timeline_says_how_long_a_sleep_is_and_which_token_it_waits_on(
    database: str,
) -> None:
    run_id = drive(database, napper, waiting_on_a_token)
    shown = invoke(database, "runs", "timeline", run_id)
    assert shown.exit_code == 0, shown.output
    rows = [line.split("\t") for line in shown.stdout.splitlines()]
    assert rows[0] == ["at", "call", "attempt", "took", "outcome"]
    outcomes = {(row[1], row[4]) for row in rows[1:]}
    hms = r"\d\d:\d\d:\d\d"
    assert any(
        c == "waiting" and re.fullmatch(rf"sleeping 200ms \(until {hms}\)", o) for c, o in outcomes
    )
    assert any(
        c == "sleep#0" and re.fullmatch(rf"slept 200ms \(until {hms}\)", o) for c, o in outcomes
    )
    token = next(o for c, o in outcomes if c == "create_token#0").removeprefix("created token ")
    assert ("waiting", f"token {token} (waitpoint tokens get {token})") in outcomes
    assert "http" not in shown.stdout and "callback" not in shown.stdout

    entries = ok_json(database, "runs", "timeline", run_id)
    kinds = [[t["kind"] for t in e["waitingOn"]] for e in entries if e["kind"] == "waiting"]
    assert kinds == [["sleep"], ["token"]]


def test_the_timeline_names_a_group_deadline_and_the_child_run_waited_on(
    database: str,
) -> None:
    run_id = drive(database, parent, waiting_on_a_child, tasks=[child])
    child_id = ok_json(database, "runs", "get", run_id)["children"][0]
    shown = invoke(database, "runs", "timeline", run_id)
    assert shown.exit_code == 0, shown.output
    outcomes = [line.split("\t")[4] for line in shown.stdout.splitlines()[1:]]
    token = next(o for o in outcomes if o.startswith("created token ")).split()[-1]
    assert any(
        re.fullmatch(rf"token {token} \(waitpoint tokens get {token}\); deadline [\d:]+", o)
        for o in outcomes
    )
    assert f"timed out: token {token} WAITING" in outcomes
    assert f"run {child_id} (waitpoint runs get {child_id})" in outcomes
