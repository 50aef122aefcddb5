"""Real processes: the ``waitpoint`` worker and CLI against one SQLite file.

The durability promise end to end: a run parked on a token survives ``kill -9`` of its
worker, the token is completed while no worker runs at all, and a new worker finishes the
run with the completion data, without running the finished step again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TASKS_MODULE = """
import asyncio

from engine import create_token, step, task, wait_for_token


def append_line(path: str) -> str:
    with open(path, "a") as file:
        file.write("side effect\\n")
    return path


@task("accept-flow")
async def accept_flow(payload: dict) -> dict:
    await step("side-effect", append_line, payload["file"])
    token = await create_token(timeout="1h")
    result = await wait_for_token(token)
    return {"data": result.output}


@task("accept-echo")
async def accept_echo(payload: dict) -> dict:
    return {"echo": payload}


@task("accept-boom")
async def accept_boom(payload: dict) -> dict:
    raise RuntimeError("boom on purpose")


@task("accept-slow")
async def accept_slow(payload: dict) -> dict:
    await asyncio.sleep(60)
    return {}
"""

CLI_TIMEOUT = 30.0


def waitpoint_command() -> list[str]:
    """The installed console script next to this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("waitpoint")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from engine.cli import main; main()"]


class Deployment:
    """A temp dir holding the tasks module and the database; starts workers, runs the CLI."""

    def __init__(self, root: Path, database: str) -> None:
        self.root = root
        self.database = database
        (root / "acceptance_tasks.py").write_text(TASKS_MODULE)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start a worker process and return once it has registered its tasks."""
        log_path = self.root / f"worker-{len(self.workers)}.log"
        with log_path.open("wb") as log:
            command = [*waitpoint_command(), "worker", "--tasks", "acceptance_tasks"]
            process = subprocess.Popen(
                [*command, "--database", self.database],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.workers.append((process, log_path))

        def started() -> bool:
            assert process.poll() is None, f"the worker exited early:\n{log_path.read_text()}"
            return "worker.started" in log_path.read_text()

        self.wait_for(started, "the worker to start")
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        return next(path.read_text() for p, path in self.workers if p is process)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``waitpoint ARGS --json`` on this deployment's database to completion."""
        return subprocess.run(
            [*waitpoint_command(), *args, "--json", "--database", self.database],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )

    def cli(self, *args: str) -> Any:
        """Run ``waitpoint ARGS --json``, check it succeeded, and return its parsed stdout."""
        result = self.run_cli(*args)
        assert result.returncode == 0, f"waitpoint {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def wait_for_run(self, run_id: str, status: str, timeout: float = 30.0) -> Any:
        """Poll ``runs get`` until the run has ``status``; return it."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.cli("runs", "get", run_id))
            return bool(seen["status"] == status)

        self.wait_for(reached, f"run {run_id} to be {status} (last: {seen})", timeout)
        return seen

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = "\n".join(path.read_text()[-2000:] for _, path in self.workers)
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Terminate every worker this deployment started (by PID), killing stragglers."""
        for process, _ in self.workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


@pytest.fixture
def deployment(tmp_path: Path, db_url: str) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, db_url)
    try:
        yield deployed
    finally:
        deployed.stop_all()


def test_waiting_run_survives_kill_9_and_a_completion_while_no_worker_runs(
    deployment: Deployment, tmp_path: Path
) -> None:
    side_effects = tmp_path / "side-effects.txt"
    first = deployment.start_worker()
    run = deployment.cli(
        "trigger", "accept-flow", "--payload", json.dumps({"file": str(side_effects)})
    )
    waiting = deployment.wait_for_run(run["id"], "WAITING")
    [token_id] = waiting["waitingOn"]

    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    completed = deployment.cli("tokens", "complete", token_id, "--data", '{"approved": true}')
    assert completed["status"] == "COMPLETED"
    assert deployment.cli("runs", "get", run["id"])["status"] == "QUEUED"

    deployment.start_worker()
    done = deployment.wait_for_run(run["id"], "COMPLETED")
    assert done["output"] == {"data": {"approved": True}}
    assert side_effects.read_text().splitlines() == ["side effect"]
    assert deployment.cli("tokens", "get", token_id)["completedVia"] == "cli"


def test_trigger_wait_prints_the_finished_run_and_fails_for_a_failed_one(
    deployment: Deployment,
) -> None:
    deployment.start_worker()
    done = deployment.cli(
        "trigger", "accept-echo", "--payload", "[1, 2]", "--wait", "--timeout", "20"
    )
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"echo": [1, 2]}

    failed = deployment.run_cli("trigger", "accept-boom", "--wait", "--timeout", "20")
    assert failed.returncode == 1
    run = json.loads(failed.stdout)
    assert run["status"] == "FAILED"
    assert run["error"]["message"] == "boom on purpose"
    assert failed.stderr.strip() == f"error: run {run['id']} ended FAILED"


def test_sigterm_stops_an_idle_worker_cleanly(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert "worker.stopped" in deployment.log_of(worker)


def test_first_sigterm_drains_and_a_second_one_hands_the_run_back(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    run = deployment.cli("trigger", "accept-slow")
    deployment.wait_for_run(run["id"], "EXECUTING")

    worker.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(1)  # draining: the attempt is still running

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert deployment.cli("runs", "get", run["id"])["status"] == "QUEUED"
