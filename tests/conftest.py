"""Shared fixtures: a real database per test, an open Engine, and workers run in-process.

``db_url`` runs each test that uses it twice: on a SQLite file of its own and on a PostgreSQL
schema of its own (see ``tests/postgres.py``); the storage contract and the crash points also
run through PgBouncer in transaction mode (``tests/pgbouncer.py``). ``sqlite_url`` is for tests
about SQLite itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import pytest

from engine import Engine, TaskDefinition, Worker
from engine.logs import configure_logging
from engine.settings import Settings

from .pgbouncer import pooled_schema_url
from .pgbouncer import stop as stop_pgbouncer
from .postgres import fresh_schema_url

StartWorker = Callable[..., Awaitable[Worker]]

# The engine logs nothing unless the application asks; this suite asks, as `waitpoint worker`
# does, so that a failing test's captured stderr tells what the engine did (and
# tests/test_always_replay.py counts the hand-backs of a whole run of the suite from it)
configure_logging(os.environ.get("WAITPOINT_LOG_FORMAT", "auto"))

NORMAL_MODE_ONLY = {
    "tests/test_runtime.py::test_timeline_shows_steps_tokens_and_how_each_wait_ended": (
        "asserts the exact attempts of a run that resumes only at its wait"
    ),
    "tests/test_logs.py::test_run_state_changes_are_logged_with_run_task_and_attempt": (
        "asserts the exact log events of a run that resumes only at its wait"
    ),
    "tests/test_children.py::test_a_child_awaited_across_a_worker_restart": (
        "counts how often the child's body ran, which is once per replay"
    ),
}
"""Tests that pin how often a run resumes: skipped under WAITPOINT_ALWAYS_REPLAY=1, where every
worker hands a run back after each new durable call (tests/test_always_replay.py covers them)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not Settings().always_replay:
        return
    for item in items:
        reason = NORMAL_MODE_ONLY.get(item.nodeid.partition("[")[0])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"always-replay mode: {reason}"))


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/engine.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A schema of its own on the test server, dropped afterwards (skips where there is none)."""
    with fresh_schema_url() as url:
        yield url


@pytest.fixture
def pgbouncer_url() -> Iterator[str]:
    """A schema of its own through PgBouncer in transaction mode (``tests/pgbouncer.py``)."""
    with pooled_schema_url() as url:
        yield url


def pytest_sessionfinish() -> None:
    stop_pgbouncer()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[Engine]:
    async with Engine(db_url) as opened:
        yield opened


@pytest.fixture
async def start_worker(engine: Engine) -> AsyncIterator[StartWorker]:
    """Start a Worker for the given tasks in this event loop; all are stopped at teardown."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(
        tasks: Mapping[str, TaskDefinition] | list[TaskDefinition], **options: object
    ) -> Worker:
        mapping = {t.id: t for t in tasks} if isinstance(tasks, list) else dict(tasks)
        options.setdefault("poll_seconds", 0.2)
        worker = Worker(engine, mapping, **options)
        runner = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 5)
        running.append((worker, runner))
        return worker

    yield start
    for worker, runner in running:
        worker.stop(graceful=False)
        await asyncio.wait_for(runner, 10)


async def wait_for_status(engine: Engine, run_id: str, status: str, timeout: float = 10) -> None:
    """Poll until the run reaches ``status`` (fails the test after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await engine.runs.retrieve(run_id)
        if run.status == status:
            return
        if loop.time() > deadline:
            raise AssertionError(f"run {run_id} is {run.status}, expected {status}")
        await asyncio.sleep(0.01)
