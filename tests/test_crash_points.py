"""A process that dies at each named crash point (``WAITPOINT_CRASH_AT``) loses nothing.

For every point a worker (or the completer, or the API) exits right there, like ``kill -9``; a
fresh process then finishes the job. Each test runs on SQLite and on PostgreSQL (``db_url``):
both backends have every crash point. Checked afterwards, through the storage API so that the
checks hold for any backend: the run COMPLETED with the right output, each durable call
journaled exactly once, no run left unfinished and no token left waiting, the step after the
wait ran once; on SQLite the file also passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, RunStatus
from engine.faults import CRASH_EXIT_CODE, POINTS
from engine.models import TaskInfo, WaitpointStatus
from engine.storage import PageRequest, RunFilter, TokenFilter
from engine.storage.sqlite import sqlite_path

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


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLite, PostgreSQL, and PostgreSQL through PgBouncer in transaction mode."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


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


# the durable calls of cp-flow, each journaled once (the wait's key names its token)
FLOW_CALLS = [
    "step:before#0",
    "step:work#0",
    "create_token#0",
    "wait_for_token:{}#0",
    "step:after#0",
]


async def check_storage(engine: Engine, url: str, run_ids: list[str]) -> None:
    """What must hold on any backend after the crash and the recovery."""
    storage = engine.storage
    for run_id in run_ids:
        journal = [e for e in await storage.get_journal(run_id) if not e.is_error]
        [token] = [e.value for e in journal if e.key == "create_token#0"]
        keys = Counter(e.key for e in journal)
        assert keys == Counter(key.format(token["id"]) for key in FLOW_CALLS)
        run = await storage.get_run(run_id)
        assert run.status is RunStatus.COMPLETED and run.waiting_on == []
        assert run.attempt_count == 1  # recovering from a crash is not a new attempt
    unfinished = [s for s in RunStatus if not s.is_terminal]
    left = await storage.list_runs(RunFilter(status=unfinished), PageRequest(limit=10))
    assert left.data == []
    waiting_filter = TokenFilter(status=[WaitpointStatus.WAITING])
    waiting = await storage.list_tokens(waiting_filter, PageRequest(limit=10))
    assert waiting.data == []
    if url.startswith("sqlite:"):
        check_sqlite_file(sqlite_path(url))


def check_sqlite_file(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def wait_for_status(engine: Engine, run_id: str, status: str) -> None:
    """Poll (30 s at most) until the run has ``status`` or finished."""
    for _ in range(600):
        current = await engine.runs.retrieve(run_id)
        if current.status == status or current.is_finished:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} is still {current.status}, expected {status}")


def test_every_crash_point_is_listed() -> None:
    others = {"complete.before_commit", "api.complete.before_response"}
    assert set(WORKER_POINTS) | others == POINTS


@pytest.mark.parametrize("point", WORKER_POINTS)
async def test_a_worker_dying_at_a_crash_point_loses_nothing(
    folder: Path, db_url: str, processes: list[subprocess.Popen[bytes]], point: str
) -> None:
    log = folder / "steps.log"
    crashing = worker(folder, db_url, point)
    processes.append(crashing)
    async with Engine(db_url) as engine:
        await engine.storage.register_tasks([TaskInfo("cp-flow")])
        timeout = "1s" if point == "timers.before_commit" else None
        work = 1.0 if point == "lease.renew" else 0
        run = await engine.trigger("cp-flow", {"log": str(log), "work": work, "timeout": timeout})
        code = await asyncio.to_thread(crashing.wait, 30)
        assert code == CRASH_EXIT_CODE, f"the worker did not crash at {point}"

        processes.append(worker(folder, db_url))
        await wait_for_status(engine, run.id, "WAITING")
        if timeout is None:
            [token_id] = (await engine.runs.retrieve(run.id)).waiting_on
            await engine.tokens.complete(token_id, {"approved": True})
        done = await engine.wait_for_run(run.id, timeout=30)
        approved = {"ok": True, "data": {"approved": True}}
        assert done.output == ({"ok": False, "data": None} if timeout else approved)
        lines = log.read_text().splitlines()
        assert lines.count("after") == 1
        assert 1 <= lines.count("before") <= 2  # twice only if the crash hit before its record
        await check_storage(engine, db_url, [run.id])


async def test_a_completer_dying_before_its_commit_leaves_the_token_waiting(
    folder: Path, db_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(worker(folder, db_url))
    cli = str(Path(sys.executable).parent / "waitpoint")
    async with Engine(db_url) as engine:
        await engine.storage.register_tasks([TaskInfo("cp-flow")])
        run = await engine.trigger("cp-flow", {"log": str(folder / "steps.log"), "work": 0})
        await wait_for_status(engine, run.id, "WAITING")
        [token_id] = (await engine.runs.retrieve(run.id)).waiting_on
        env = {**os.environ, "WAITPOINT_CRASH_AT": "complete.before_commit"}
        crashed = await asyncio.to_thread(
            subprocess.run,
            [cli, "tokens", "complete", token_id, "--data", '{"n": 1}', "--database", db_url],
            env=env,
            capture_output=True,
            timeout=30,
        )
        assert crashed.returncode == CRASH_EXIT_CODE
        token = await engine.tokens.retrieve(token_id)
        assert token.status == "WAITING" and token.data is None  # not acknowledged
        assert (await engine.runs.retrieve(run.id)).status == "WAITING"
        await engine.tokens.complete(token_id, {"n": 2})
        done = await engine.wait_for_run(run.id, timeout=30)
        assert done.output == {"ok": True, "data": {"n": 2}}
        await check_storage(engine, db_url, [run.id])


async def test_an_api_dying_after_the_commit_keeps_the_completion(
    folder: Path, db_url: str
) -> None:
    import httpx

    from .test_remote import KEY, free_port

    url = db_url
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
        done = await engine.tokens.retrieve(token.id)
        assert (done.status, done.data) == ("COMPLETED", {"n": 1})  # the first one won
        assert done.completed_via == "api"
    if url.startswith("sqlite:"):
        check_sqlite_file(sqlite_path(url))
