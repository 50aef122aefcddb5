"""``waitpoint workers`` and the runs no live worker serves: the CLI says so.

In-process (both databases) for the table, the JSON and the notes; as subprocesses for the
whole story: a worker is listed while it runs, a killed one ages out after three lease
periods, and then ``trigger --wait`` and ``runs get`` name the task no live worker serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from engine import Engine
from engine.cli import app
from engine.models import TaskInfo
from engine.storage import NewWorker

runner = CliRunner()


def invoke(database: str, *args: str) -> Result:
    return runner.invoke(app, [*args, "--database", database])


def register(database: str, *task_ids: str, worker: NewWorker | None = None) -> None:
    async def go() -> None:
        async with Engine(database) as engine:
            await engine.storage.register_tasks([TaskInfo(t) for t in task_ids], worker)

    asyncio.run(go())


def test_workers_lists_the_live_workers_their_tasks_load_and_heartbeat(db_url: str) -> None:
    empty = invoke(db_url, "workers")
    assert empty.exit_code == 0 and empty.stdout == ""  # off a terminal, only rows on stdout
    assert empty.stderr.strip() == "no live workers"
    register(db_url, "a", "b", worker=NewWorker("host:1:abcd", ["a", "b"], 4, 30_000))
    table = invoke(db_url, "workers")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()  # piped: one tab-separated line per row
    assert header.split("\t") == ["worker", "tasks", "in use", "last heartbeat"]
    fields = row.split("\t")
    assert fields[:3] == ["host:1:abcd", "a,b", "0/4"] and fields[3].endswith(" s ago")
    listed = invoke(db_url, "workers", "--json")
    assert listed.exit_code == 0, listed.output
    [worker] = json.loads(listed.stdout)["data"]
    assert (worker["id"], worker["tasks"], worker["concurrency"]) == ("host:1:abcd", ["a", "b"], 4)
    assert worker["live"] is True and worker["running"] == 0 and "stoppedAt" not in worker
    assert {"heartbeatAt", "startedAt", "leaseMs"} <= set(worker)


def test_a_stopped_worker_leaves_the_list_and_shows_with_all(db_url: str) -> None:
    register(db_url, "a", worker=NewWorker("w-stopped", ["a"], 2, 30_000))

    async def stop() -> None:
        async with Engine(db_url) as engine:
            await engine.storage.stop_worker("w-stopped")

    asyncio.run(stop())
    assert invoke(db_url, "workers").stderr.strip() == "no live workers"
    everyone = invoke(db_url, "workers", "--all")
    [row] = everyone.stdout.splitlines()[1:]
    assert row.startswith("w-stopped\t") and row.endswith("\tstopped")
    [gone] = json.loads(invoke(db_url, "workers", "--all", "--json").stdout)["data"]
    assert gone["live"] is False and gone["stoppedAt"]


def test_runs_get_of_a_queued_run_says_no_live_worker_serves_its_task(db_url: str) -> None:
    register(db_url, "boom")  # by a worker that is gone (no heartbeat)
    triggered = invoke(db_url, "trigger", "boom", "--json")
    assert triggered.exit_code == 0, triggered.output
    run_id = json.loads(triggered.stdout)["id"]
    shown = invoke(db_url, "runs", "get", run_id)
    assert shown.exit_code == 0, shown.output
    assert run_id in shown.stdout
    assert shown.stderr.strip() == (
        "note: no live worker serves task 'boom' (last seen 0 s ago):"
        " the run stays QUEUED until one starts"
    )
    as_json = invoke(db_url, "runs", "get", run_id, "--json")
    assert json.loads(as_json.stdout)["id"] == run_id  # stdout stays JSON; the note is on stderr
    assert "no live worker serves task 'boom'" in as_json.stderr


def test_a_run_a_live_worker_serves_gets_no_note(db_url: str) -> None:
    register(db_url, "served", worker=NewWorker("w-live", ["served"], 1, 30_000))
    run_id = json.loads(invoke(db_url, "trigger", "served", "--json").stdout)["id"]
    shown = invoke(db_url, "runs", "get", run_id)
    assert shown.exit_code == 0 and shown.stderr == ""


def test_trigger_wait_names_the_task_no_live_worker_serves(db_url: str) -> None:
    register(db_url, "boom")
    result = invoke(db_url, "trigger", "boom", "--wait", "--timeout", "0.2")
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: run ")
    assert line.endswith(
        "is still QUEUED after 0.2 seconds: no live worker serves task 'boom' (last seen 0 s ago)"
    )


# --- as subprocesses ---------------------------------------------------------------------

TASKS = textwrap.dedent(
    """
    from engine import task

    @task("boom")
    async def boom(payload: dict) -> dict:
        return {"ok": True}
    """
)
LEASE_SECONDS = 1.0
"""The workers' lease here: live for 3 s after their last heartbeat."""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory with a tasks module, and the environment the commands run in."""
    (tmp_path / "boom_tasks.py").write_text(TASKS)
    env = {
        **os.environ,
        "WAITPOINT_DATABASE_URL": f"sqlite:///{tmp_path}/engine.db",
        "WAITPOINT_LEASE_SECONDS": str(LEASE_SECONDS),
        "WAITPOINT_LOG_FORMAT": "json",
    }
    for name in ("WAITPOINT_API_URL", "WAITPOINT_PUBLIC_URL"):
        env.pop(name, None)
    yield tmp_path, env


def waitpoint(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    cwd, env = project
    command = [str(Path(sys.executable).parent / "waitpoint"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def start_worker(project: tuple[Path, dict[str, str]]) -> subprocess.Popen[bytes]:
    cwd, env = project
    command = [str(Path(sys.executable).parent / "waitpoint"), "worker", "--tasks", "boom_tasks"]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def workers(project: tuple[Path, dict[str, str]], *args: str) -> list[dict[str, Any]]:
    listed = waitpoint(project, "workers", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)["data"]
    return found


def until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_killed_worker_ages_out_and_the_cli_says_no_live_worker_serves_its_task(
    project: tuple[Path, dict[str, str]],
) -> None:
    worker = start_worker(project)
    try:
        [listed] = until(lambda: workers(project))
        assert listed["tasks"] == ["boom"] and listed["live"] and listed["leaseMs"] == 1000
        table = waitpoint(project, "workers")
        assert listed["id"] in table.stdout and "boom" in table.stdout
        done = waitpoint(project, "trigger", "boom", "--wait", "--timeout", "30", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "COMPLETED"
        # heartbeats go on while it idles: still live well past three lease periods
        time.sleep(4 * LEASE_SECONDS)
        assert [w["id"] for w in workers(project)] == [listed["id"]]
    finally:
        worker.kill()  # SIGKILL: it cannot say it stopped
        worker.wait(10)

    assert until(lambda: workers(project) == [], timeout=3 * LEASE_SECONDS + 5)
    [silent] = workers(project, "--all")
    assert silent["id"] == listed["id"] and not silent["live"] and "stoppedAt" not in silent

    waited = waitpoint(project, "trigger", "boom", "--wait", "--timeout", "0.5")
    assert waited.returncode == 1
    [line] = waited.stderr.strip().splitlines()
    assert "is still QUEUED after 0.5 seconds: no live worker serves task 'boom' (last seen" in line
    run_id = line.split()[2]
    shown = waitpoint(project, "runs", "get", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "note: no live worker serves task 'boom' (last seen " in shown.stderr

    # without --timeout, trigger --wait says why at once, and goes on waiting: a worker that
    # starts then runs it
    cwd, env = project
    command = [str(Path(sys.executable).parent / "waitpoint"), "trigger", "boom", "--wait"]
    worker = None
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as waiting:
        try:
            assert waiting.stderr is not None
            note = waiting.stderr.readline()
            assert note.startswith("note: no live worker serves task 'boom' (last seen ")
            assert note.rstrip().endswith("): the run waits until one starts")
            worker = start_worker(project)
            out, _ = waiting.communicate(timeout=30)
            assert waiting.returncode == 0 and "COMPLETED" in out
            live = until(lambda: [w for w in workers(project) if w["live"]])
        finally:
            if waiting.poll() is None:
                waiting.kill()
            # a worker that stops cleanly (SIGTERM) says so: it leaves the list at once
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(20) == 0
    assert workers(project) == []
    stopped = next(w for w in workers(project, "--all") if w["id"] == live[0]["id"])
    assert stopped["stoppedAt"] and not stopped["live"]
