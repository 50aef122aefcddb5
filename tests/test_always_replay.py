"""Always-replay mode: a run is handed back and replayed after every new durable call.

``WAITPOINT_ALWAYS_REPLAY=1`` (or ``Worker(always_replay=True)``) makes a worker end the attempt
once it journaled a new call, put the run back in the queue, and resume it by replaying the
journal from the top. The functional suite must pass that way (the last test here runs it in
a subprocess); the other tests check that the replays really happen and that the mode catches
nondeterminism a run that never waits would hide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Engine,
    Worker,
    create_token,
    current_run,
    step,
    task,
    wait_for_token,
)
from engine.settings import Settings

from .conftest import StartWorker, wait_for_status

ROOT = Path(__file__).resolve().parent.parent
RAN: Counter[str] = Counter()


def bump(run_id: str, name: str) -> str:
    RAN[f"{run_id}:{name}"] += 1
    return name


async def claims(engine: Engine, run_id: str) -> int:
    """How many times workers claimed the run: its first start and every resume."""
    timeline = await engine.runs.timeline(run_id)
    return sum(entry.kind == "attempt_started" for entry in timeline)


@task("ar-steps")
async def four_calls(payload: None) -> list[str]:
    run_id = current_run().id
    names = [await step(name, bump, run_id, name) for name in ("a", "b", "c")]
    token = await create_token(timeout="1h")
    return [*names, token.id[:10]]


@pytest.mark.parametrize(("always_replay", "expected_claims"), [(False, 1), (True, 5)])
async def test_every_new_durable_call_is_followed_by_a_replay(
    engine: Engine, start_worker: StartWorker, always_replay: bool, expected_claims: int
) -> None:
    await start_worker([four_calls], always_replay=always_replay)
    run = await engine.trigger("ar-steps")
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output == ["a", "b", "c", "waitpoint_"]
    # a claim per new call, and one that replays all four and returns; a run that never waits
    # runs straight through otherwise
    assert await claims(engine, run.id) == expected_claims
    assert done.attempt_count == 1  # handing a run back is neither a failed attempt nor a retry
    assert [RAN[f"{run.id}:{name}"] for name in "abc"] == [1, 1, 1]  # replayed, not re-run
    calls = [e.kind for e in await engine.runs.timeline(run.id) if e.key is not None]
    assert calls == ["step", "step", "step", "create_token"]


@task("ar-fixture")
async def two_steps(payload: None) -> str:
    run_id = current_run().id
    await step("one", bump, run_id, "one")
    await step("two", bump, run_id, "two")
    return "done"


async def test_workers_from_the_fixture_follow_the_setting(
    engine: Engine, start_worker: StartWorker
) -> None:
    """Run here and, under WAITPOINT_ALWAYS_REPLAY=1, in the subprocess of the last test."""
    await start_worker([two_steps])
    run = await engine.trigger("ar-fixture")
    assert (await engine.wait_for_run(run.id, timeout=15)).output == "done"
    assert await claims(engine, run.id) == (3 if Settings().always_replay else 1)


def test_the_setting_comes_from_the_environment_and_the_option_overrides_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAITPOINT_ALWAYS_REPLAY", "1")
    engine = Engine(sqlite_url)
    assert engine.settings.always_replay
    assert Worker(engine, {}).always_replay
    assert not Worker(engine, {}, always_replay=False).always_replay
    monkeypatch.setenv("WAITPOINT_ALWAYS_REPLAY", "0")
    assert not Worker(Engine(sqlite_url), {}).always_replay


@task("ar-wait")
async def step_then_wait(payload: None) -> Any:
    await step("before", bump, current_run().id, "before")
    token = await create_token()
    return (await wait_for_token(token)).output


async def test_a_waiting_run_is_replayed_at_every_call_and_after_its_wait(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([step_then_wait], always_replay=True)
    run = await engine.trigger("ar-wait")
    await wait_for_status(engine, run.id, "WAITING")
    token_id = (await engine.runs.retrieve(run.id)).waiting_on[0]
    await engine.tokens.complete(token_id, {"approved": True})
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output == {"approved": True} and done.attempt_count == 1
    kinds = [e.kind for e in await engine.runs.timeline(run.id)]
    assert kinds == [
        "created",
        "attempt_started",
        "step",
        "attempt_started",  # replays the step, creates the token
        "create_token",
        "attempt_started",  # replays both, parks on the token
        "waiting",
        "attempt_started",  # resumes: the wait journals how the token closed
        "wait_for_token",
        "attempt_started",  # a pure replay returns the output
        "finished",
    ]
    assert RAN[f"{run.id}:before"] == 1


EXECUTIONS: Counter[str] = Counter()


@task("ar-nondeterministic")
async def nondeterministic(payload: None) -> str:
    # a value read outside a step that changes between executions (like the clock would)
    EXECUTIONS[current_run().id] += 1
    await step(f"fetch-{EXECUTIONS[current_run().id]}", bump, current_run().id, "fetch")
    await step("save", bump, current_run().id, "save")
    return "saved"


@pytest.mark.parametrize("always_replay", [False, True])
async def test_nondeterminism_hidden_by_a_run_that_never_waits_is_caught(
    engine: Engine, start_worker: StartWorker, always_replay: bool
) -> None:
    await start_worker([nondeterministic], always_replay=always_replay)
    run = await engine.trigger("ar-nondeterministic")
    await wait_for_status(engine, run.id, "FAILED" if always_replay else "COMPLETED", 15)
    if always_replay:
        failed = await engine.runs.retrieve(run.id)
        assert failed.error is not None
        assert failed.error.name == "engine.errors.NondeterminismError"
        assert "'step:fetch-1#0'" in failed.error.message
        assert "'step:fetch-2#0'" in failed.error.message


def test_the_functional_suite_passes_in_always_replay_mode() -> None:
    """The runtime, wait, child-run and failure tests (on SQLite), every run replayed."""
    if Settings().always_replay:
        pytest.skip("this whole session already runs in always-replay mode")
    suite = ["test_runtime.py", "test_waits.py", "test_children.py", "test_failures.py"]
    fixture_check = "tests/test_always_replay.py::test_workers_from_the_fixture_follow_the_setting"
    env = {**os.environ, "WAITPOINT_ALWAYS_REPLAY": "1", "WAITPOINT_LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k"]
    command += ["not postgres", *(f"tests/{name}" for name in suite), fixture_check]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-5000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 45, summary
    skipped = re.search(r"(\d+) skipped", summary)
    assert skipped is not None and int(skipped.group(1)) == 2, summary  # the NORMAL_MODE_ONLY
    assert "failed" not in summary and "error" not in summary, summary
    handed_back = done.stderr.count('"event": "run.handed_back"')  # 60 when this was written
    assert handed_back >= 40, f"only {handed_back} runs were handed back for a replay"
