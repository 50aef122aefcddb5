"""``Engine("http://...")`` and ``waitpoint --api-url``: the same facade over the REST API,
against a real ``waitpoint dev`` process (worker and API) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from engine import (
    Engine,
    RunFailedError,
    TaskNotFoundError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
)

KEY = "wp_test_" + "k" * 32
TASKS = textwrap.dedent(
    """
    from engine import create_token, task, wait_for_token

    @task("remote-flow")
    async def remote_flow(payload: dict) -> dict:
        token = await create_token(tags=["remote"], timeout="1h")
        result = await wait_for_token(token)
        return {"payload": payload, "data": result.output}
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def dev_server(
    tmp_path: Path, module: str, source: str, key: str, *, tries: int = 200
) -> Iterator[str]:
    """``waitpoint dev`` serving the tasks ``source`` (written as ``module``) on a SQLite file
    in ``tmp_path``, on a free port; yields its URL once ``/healthz`` answers (polled
    ``tries`` times, 50 ms apart) and stops it at the end."""
    (tmp_path / f"{module}.py").write_text(source)
    port = free_port()
    env = {**os.environ, "WAITPOINT_SECRET_KEY": key, "WAITPOINT_LOG_FORMAT": "json"}
    env.pop("WAITPOINT_API_URL", None)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "waitpoint"),
            "dev",
            "--tasks",
            module,
            "--port",
            str(port),
            "--database",
            f"sqlite:///{tmp_path}/engine.db",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(tries):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise AssertionError(f"waitpoint dev exited with {process.returncode}")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``waitpoint dev`` on a free port; yields its URL and stops it at the end."""
    with dev_server(tmp_path, "remote_tasks", TASKS, KEY) as url:
        yield url


class Decision(BaseModel):
    approved: bool


async def test_remote_engine_drives_a_run_through_the_api(server: str) -> None:
    async with Engine(server, api_key=KEY) as engine:
        run = await engine.trigger("remote-flow", {"n": 1}, tags=["r"], idempotency_key="once")
        again = await engine.trigger("remote-flow", {"n": 1}, idempotency_key="once")
        assert again.id == run.id and again.is_cached and not run.is_cached
        for _ in range(200):
            if (await engine.runs.retrieve(run.id)).status == "WAITING":
                break
            await asyncio.sleep(0.05)
        page = await engine.tokens.list(status="WAITING", tags=["remote"])
        [token] = page.data
        result = await engine.tokens.complete(token.id, {"approved": True})
        assert result.applied and result.token.status == "COMPLETED"
        assert result.token.completed_via == "api"
        assert not (await engine.tokens.complete(token.id, {"approved": False})).applied
        done = await engine.wait_for_run(run.id, timeout=20)
        assert done.output == {"payload": {"n": 1}, "data": {"approved": True}}
        listed = await engine.runs.list(status="COMPLETED", task="remote-flow", tags=["r"])
        assert [r.id for r in listed.data] == [run.id]
        timeline = [e for e in await engine.runs.timeline(run.id) if e.key is not None]
        assert [e.kind for e in timeline] == ["create_token", "wait_for_token"]
        waited = timeline[1].token
        assert waited is not None and waited.completed_via == "api"


async def test_remote_engine_raises_the_same_errors_as_the_local_one(server: str) -> None:
    async with Engine(server, api_key=KEY) as engine:
        with pytest.raises(TokenNotFoundError):
            await engine.tokens.retrieve("waitpoint_missing")
        with pytest.raises(TaskNotFoundError, match="remote-flow"):
            await engine.trigger("no-such-task")
        with pytest.raises(ValidationError, match="too many tags"):
            await engine.tokens.create(tags=[f"t{i}" for i in range(11)])
        token = await engine.tokens.create(timeout="1h")
        cancelled = await engine.tokens.cancel(token.id)
        assert cancelled.applied and cancelled.token.status == "CANCELLED"
        with pytest.raises(TokenNotWaitingError, match="cancelled"):
            await engine.tokens.complete(token.id, {"late": True})
        late = await engine.tokens.retrieve(token.id)
        assert late.late_completions is not None and late.late_completions[0].via == "api"
        typed = await engine.tokens.create(schema=Decision)
        with pytest.raises(ValidationError, match="approved"):
            await engine.tokens.complete(typed.id, {"approved": "maybe"})
        assert (await engine.tokens.complete(typed.id, Decision(approved=True))).applied
        run = await engine.trigger("remote-flow", {})
        canceled = await engine.runs.cancel(run.id)
        assert canceled.status == "CANCELED"
        with pytest.raises(RunFailedError):
            await engine.wait_for_run(run.id, timeout=5)


def test_cli_api_url_completes_a_token_without_the_database(server: str, tmp_path: Path) -> None:
    env = {**os.environ, "WAITPOINT_SECRET_KEY": KEY}
    cli = str(Path(sys.executable).parent / "waitpoint")

    def waitpoint(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, *args, "--api-url", server, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    created = waitpoint("tokens", "create", "--tag", "cli-remote")
    assert created.returncode == 0, created.stderr
    token_id = json.loads(created.stdout)["id"]
    completed = waitpoint("tokens", "complete", token_id, "--data", '{"ok": true}')
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["data"] == {"ok": True}
    missing = waitpoint("tokens", "get", "waitpoint_missing")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    assert not (tmp_path / ".waitpoint").exists()  # no local database was touched


async def test_remote_engine_sends_token_details_and_lists_the_servers_workers(
    server: str,
) -> None:
    async with Engine(server, api_key=KEY) as engine:
        details = {"title": "Refund order 42", "description": "Why", "context": {"amount": 19.99}}
        token = await engine.tokens.create(**details)  # type: ignore[arg-type]
        assert (token.title, token.description, token.context) == tuple(details.values())
        with pytest.raises(ValidationError, match="title must be at most 200 characters long"):
            await engine.tokens.create(title="x" * 201)
        [worker] = await engine.workers.list()  # the one `waitpoint dev` runs
        assert worker.live and worker.tasks == ["remote-flow"] and worker.running == 0
        served = await engine.workers.for_task("remote-flow")
        assert served.live_workers == [worker.id] and served.unserved is None
        never = await engine.workers.for_task("no such task")
        assert never.unserved == "no worker has ever served task 'no such task'"
