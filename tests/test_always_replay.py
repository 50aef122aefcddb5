"""Always-replay mode: a run is handed back and replayed after every new durable call.

``WAITPOINT_ALWAYS_REPLAY=1`` (or ``Worker(always_replay=True)``) makes a worker end the attempt
once it journaled a new call, put the run back in the queue, and resume it by replaying the
journal from the top. The functional suite must pass that way (the last test here runs it in
a subprocess); the other tests check that the replays really happen, that the mode catches
nondeterminism a run that never waits would hide, and that every durable call returns on its
first execution what its replays return.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    Engine,
    Worker,
    create_token,
    current_run,
    sleep_until,
    step,
    task,
    wait_for_token,
    wait_for_tokens,
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


class Approval(BaseModel):
    approved: bool


class CodedError(Exception):
    """An error whose ``__init__`` takes other arguments than it passes on as ``args``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code


def fail_with_code() -> None:
    raise CodedError(7)


def approval() -> Approval:
    return Approval(approved=True)


def count_and_fail(run_id: str) -> None:
    bump(run_id, "fail")
    raise CodedError(7)


@task("ar-fails")
async def failing(payload: None) -> None:
    await step("fails", count_and_fail, current_run().id)


async def test_a_run_fails_only_from_an_attempt_that_replayed_its_calls(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([failing], always_replay=True)
    run = await engine.trigger("ar-fails")
    await wait_for_status(engine, run.id, "FAILED", 15)
    failed = await engine.runs.retrieve(run.id)
    assert failed.error is not None and failed.error.name.endswith(".CodedError")
    assert failed.error.message == "failed with code 7"  # rebuilt from the journal, the same
    assert await claims(engine, run.id) == 2 and failed.attempt_count == 1
    assert RAN[f"{run.id}:fail"] == 1


SEEN: dict[tuple[str, str], list[Any]] = {}


def seen(label: str, value: Any) -> None:
    """Keep what the task saw at this call, on each execution of the task function."""
    SEEN.setdefault((current_run().id, label), []).append(value)


@task("ar-child")
async def child(payload: int) -> int:
    return payload * 2


@task("ar-every-call")
async def every_call(payload: dict[str, str]) -> str:
    seen("step", await step("model", approval))
    try:
        await step("coded", fail_with_code)
    except CodedError as exc:
        seen("step error", (type(exc).__name__, exc.code, str(exc)))
    token = await create_token(idempotency_key="shared", schema=Approval)  # made outside
    seen("cached token", token.model_dump() | {"is_cached": token.is_cached})
    fresh = await create_token(timeout="1h", schema=Approval, tags=["t"])
    seen("new token", fresh.model_dump() | {"schema": fresh.data_schema})
    result = await wait_for_token(token)
    seen("wait", (result.ok, result.output))
    group = await wait_for_tokens([payload["done"]], mode="any")
    seen("group", (group.ok, group.first, group.results[payload["done"]]))
    await sleep_until(datetime.now(UTC) - timedelta(hours=1))
    started = await child.trigger(1)
    seen("trigger", started.model_dump() | {"is_cached": started.is_cached})
    seen("trigger and wait", await child.trigger_and_wait(2))
    seen("batch", await child.batch_trigger_and_wait([3, 4]))
    return "done"


async def test_durable_calls_return_on_first_execution_what_replays_return(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([every_call, child], always_replay=True)
    cached = await engine.tokens.create(idempotency_key="shared", schema=Approval)
    await engine.tokens.complete(cached.id, {"approved": True})
    done = await engine.tokens.create()
    await engine.tokens.complete(done.id, {"approved": False})
    run = await engine.trigger("ar-every-call", {"done": done.id})
    assert (await engine.wait_for_run(run.id, timeout=30)).output == "done"
    labels = [label for (run_id, label) in SEEN if run_id == run.id]
    assert len(labels) == 9
    for label in labels:
        values = SEEN[(run.id, label)]
        assert len(values) >= 2, f"{label} was never replayed"
        assert all(v == values[0] for v in values), f"{label} replayed differently: {values}"
    assert SEEN[(run.id, "step error")][-1] == ("CodedError", 7, "failed with code 7")
    assert SEEN[(run.id, "wait")][-1] == (True, Approval(approved=True))


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
