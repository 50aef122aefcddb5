"""A process that dies at each named crash point (``WAITPOINT_CRASH_AT``) loses nothing.

For every point a worker (or the completer) exits right there, like ``kill -9``; a fresh
worker then finishes the run. Checked afterwards: the run COMPLETED with the right output,
no journal key recorded twice, the database intact, and the step after the wait ran once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine
from engine.faults import CRASH_EXIT_CODE, POINTS

TASKS = textwrap.dedent(
    """
    import asyncio
    from engine import create_token, step, task, wait_for_token

    def mark(path: str, line: str) -> str:
        with open(path, "a") as file:
            file.write(line + "\\n")
        return line

    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "worked"

    @task("cp-flow")
    async def flow(payload: dict) -> dict:
        await step("before", mark, payload["log"], "before")
        await step("work", work, payload["work"])
        token = await create_token(timeout=payload.get("timeout"))
        result = await wait_for_token(token)
        await step("after", mark, payload["log"], "after")
        return {"ok": result.ok, "data": result.output}
    """
)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from engine import Engine, Worker
    from engine.registry import load_tasks

    async def main() -> None:
        async with Engine(sys.argv[1]) as engine:
            await Worker(engine, load_tasks("cp_tasks"), poll_seconds=0.1).run()

    asyncio.run(main())
    """
)

WORKER_POINTS = [
    "commit.before",
    "commit.after",
    "journal.before_commit",
    "suspend.before_commit",
    "timers.before_commit",
    "lease.renew",
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "cp_tasks.py").write_text(TASKS)
    return tmp_path


def worker(folder: Path, url: str, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WAITPOINT_LEASE_SECONDS": "1", "WAITPOINT_LOG_FORMAT": "json"}
    env.pop("WAITPOINT_CRASH_AT", None)
    if crash_at:
        env["WAITPOINT_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def check_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        duplicated = conn.execute(
            "SELECT run_id, key FROM journal WHERE is_error = 0"
            " GROUP BY run_id, key HAVING count(*) > 1"
        ).fetchall()
        assert duplicated == []


def test_every_crash_point_is_listed() -> None:
    others = {"complete.before_commit", "api.complete.before_response"}
    assert set(WORKER_POINTS) | others == POINTS


@pytest.mark.parametrize("point", WORKER_POINTS)
async def test_a_worker_dying_at_a_crash_point_loses_nothing(
    folder: Path, processes: list[subprocess.Popen[bytes]], point: str
) -> None:
    url = f"sqlite:///{folder}/engine.db"
    log = folder / "steps.log"
    crashing = worker(folder, url, point)
    processes.append(crashing)
    async with Engine(url) as engine:
        from engine.models import TaskInfo

        await engine.storage.register_tasks([TaskInfo("cp-flow")])
        timeout = "1s" if point == "timers.before_commit" else None
        work = 1.0 if point == "lease.renew" else 0
        run = await engine.trigger("cp-flow", {"log": str(log), "work": work, "timeout": timeout})
        code = await asyncio.to_thread(crashing.wait, 30)
        assert code == CRASH_EXIT_CODE, f"the worker did not crash at {point}"

        processes.append(worker(folder, url))
        for _ in range(600):
            current = await engine.runs.retrieve(run.id)
            if current.status == "WAITING" or current.is_finished:
                break
            await asyncio.sleep(0.05)
        if timeout is None:
            [token_id] = (await engine.runs.retrieve(run.id)).waiting_on
            await engine.tokens.complete(token_id, {"approved": True})
        done = await engine.wait_for_run(run.id, timeout=30)
    expected = {"ok": False, "data": None} if timeout else {"ok": True, "data": {"approved": True}}
    assert done.output == expected
    lines = log.read_text().splitlines()
    assert lines.count("after") == 1
    assert 1 <= lines.count("before") <= 2  # twice only if the crash hit before its record
    check_database(folder / "engine.db")


async def test_a_completer_dying_before_its_commit_leaves_the_token_waiting(
    folder: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{folder}/engine.db"
    processes.append(worker(folder, url))
    cli = str(Path(sys.executable).parent / "waitpoint")
    async with Engine(url) as engine:
        from engine.models import TaskInfo

        await engine.storage.register_tasks([TaskInfo("cp-flow")])
        run = await engine.trigger("cp-flow", {"log": str(folder / "steps.log"), "work": 0})
        for _ in range(600):
            if (await engine.runs.retrieve(run.id)).status == "WAITING":
                break
            await asyncio.sleep(0.05)
        [token_id] = (await engine.runs.retrieve(run.id)).waiting_on
        env = {**os.environ, "WAITPOINT_CRASH_AT": "complete.before_commit"}
        crashed = await asyncio.to_thread(
            subprocess.run,
            [cli, "tokens", "complete", token_id, "--data", '{"n": 1}', "--database", url],
            env=env,
            capture_output=True,
            timeout=30,
        )
        assert crashed.returncode == CRASH_EXIT_CODE
        assert (await engine.tokens.retrieve(token_id)).status == "WAITING"  # not acknowledged
        await engine.tokens.complete(token_id, {"n": 2})
        done = await engine.wait_for_run(run.id, timeout=30)
    assert done.output == {"ok": True, "data": {"n": 2}}
    check_database(folder / "engine.db")


async def test_an_api_dying_after_the_commit_keeps_the_completion(folder: Path) -> None:
    import httpx

    from .test_remote import KEY, free_port

    url = f"sqlite:///{folder}/engine.db"
    cli = str(Path(sys.executable).parent / "waitpoint")
    env = {**os.environ, "WAITPOINT_SECRET_KEY": KEY}

    def serve(port: int, crash: bool) -> subprocess.Popen[bytes]:
        extra = {"WAITPOINT_CRASH_AT": "api.complete.before_response"} if crash else {}
        return subprocess.Popen(
            [cli, "serve", "--port", str(port), "--database", url],
            cwd=folder,
            env={**env, **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def up(base: str) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("the API did not start")

    async with Engine(url) as engine:
        token = await engine.tokens.create()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(port, crash=True)
    try:
        await up(base)
        path = f"{base}/api/v1/waitpoints/tokens/{token.id}/complete"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):  # the server died before answering
                await client.post(path, json={"data": {"n": 1}}, headers=headers)
        assert await asyncio.to_thread(server.wait, 10) == CRASH_EXIT_CODE
        server = serve(port, crash=False)
        await up(base)
        async with httpx.AsyncClient() as client:  # the client retries, as the SDK would
            again = await client.post(path, json={"data": {"n": 2}}, headers=headers)
        assert again.status_code == 200 and again.json()["applied"] is False
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)
    async with Engine(url) as engine:
        assert (await engine.tokens.retrieve(token.id)).data == {"n": 1}  # the first one won
