"""The CLI's output through a real pipe: ``python -m engine ...`` with stdout not a terminal.

Off a terminal a table is a header line and one tab-separated line per row, whatever the
width (``COLUMNS=80`` here, where a rich table would wrap), so ``grep`` finds whole rows; a
failed run's stack trace is plain text below the view; notes go to stderr.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from engine import Engine
from engine.models import TaskInfo

from .cli_runs import boom, drive, failed, napper, waiting_on_a_token

LONG_TASK = "approve-refund-for-a-customer-whose-account-name-is-long-enough-to-wrap-a-table"


def environment() -> dict[str, str]:
    """This environment, 80 columns wide, with no WAITPOINT_* setting but the test server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
    for kept in ("WAITPOINT_TEST_POSTGRES_URL",):
        if kept in os.environ:
            env[kept] = os.environ[kept]
    return env | {"COLUMNS": "80", "TERM": "xterm-256color"}


def waitpoint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=environment(),
    )


def trigger_long(database: str) -> str:
    async def go() -> str:
        async with Engine(database) as engine:
            await engine.storage.register_tasks([TaskInfo(LONG_TASK)])
            tags = ["order:42", "customer:acme-corporation-international-holdings"]
            return (await engine.trigger(LONG_TASK, {"order_id": 42}, tags=tags)).id

    return asyncio.run(go())


def test_a_piped_run_list_keeps_each_run_on_one_line(db_url: str, tmp_path: Path) -> None:
    run_id = trigger_long(db_url)
    listed = waitpoint("runs", "list", "--database", db_url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t") == ["id", "task", "status", "attempts", "tags", "created"]
    assert [row.split("\t")[:3] for row in rows] == [[run_id, LONG_TASK, "QUEUED"]]
    [fields] = [row.split("\t") for row in rows]
    assert fields[4] == "order:42,customer:acme-corporation-international-holdings"
    assert len(rows[0]) > 80  # wider than the terminal it would have wrapped in

    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "engine"])
    grep = subprocess.run(
        f"{command} runs list --database {shlex.quote(db_url)} | grep approve-refund",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environment(),
    )
    assert grep.returncode == 0, grep.stderr
    assert grep.stdout.splitlines() == rows


def test_a_piped_token_list_is_one_line_per_token_and_notes_go_to_stderr(
    db_url: str, tmp_path: Path
) -> None:
    async def go() -> list[str]:
        async with Engine(db_url) as engine:
            tag = "a-tag-long-enough-to-be-folded-by-a-table-eighty-columns-wide"
            return [(await engine.tokens.create(tags=[tag, str(i)])).id for i in range(3)]

    made = asyncio.run(go())
    listed = waitpoint("tokens", "list", "--limit", "2", "--database", db_url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t") == ["id", "status", "tags", "expires", "created"]
    assert [row.split("\t")[0] for row in rows] == made[:0:-1]  # newest first
    assert all(len(row.split("\t")) == 5 for row in rows)
    assert f"more: --after {made[1]}" in listed.stderr

    empty = waitpoint("runs", "list", "--database", db_url, cwd=tmp_path)
    assert empty.returncode == 0 and empty.stdout == "" and "no runs" in empty.stderr


def test_a_piped_failed_run_shows_its_stack_trace_as_text(db_url: str, tmp_path: Path) -> None:
    run_id = drive(db_url, boom, failed)
    shown = waitpoint("runs", "get", run_id, "--database", db_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"id\t{run_id}" in lines
    assert "error\tZeroDivisionError: division by zero" in lines
    start = lines.index("Traceback (most recent call last):")
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert any(line.strip() == "return 1 / n" for line in lines[start:])
    assert "\\n" not in shown.stdout  # never a JSON-escaped string

    as_json = waitpoint("runs", "get", run_id, "--json", "--database", db_url, cwd=tmp_path)
    assert as_json.returncode == 0 and as_json.stdout.count("\n") == 1
    assert '"stackTrace":"Traceback (most recent call last):\\n' in as_json.stdout


def test_a_piped_timeline_is_one_line_per_entry(db_url: str, tmp_path: Path) -> None:
    run_id = drive(db_url, napper, waiting_on_a_token)
    shown = waitpoint("runs", "timeline", run_id, "--database", db_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split("\t") for line in shown.stdout.splitlines()]
    assert rows[0] == ["at", "call", "attempt", "took", "outcome"]
    assert all(len(row) == 5 for row in rows)
    token = next(r[4] for r in rows if r[1] == "create_token#0").removeprefix("created token ")
    assert rows[-1][1:] == ["waiting", "1", "", f"token {token} (waitpoint tokens get {token})"]


def test_version_and_completion_from_the_command_line(tmp_path: Path) -> None:
    version = waitpoint("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout == f"waitpoint {metadata.version('waitpoint')}\n"
    env = environment() | {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = subprocess.run(
        [sys.executable, "-m", "engine", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert script.returncode == 0, script.stderr
    assert "complete" in script.stdout and "_COMPLETE" in script.stdout
