"""Runs sent round again by hand: ``engine.runs.retry``, ``replay`` and ``fork`` (and
``retry_matching``, the CLI's ``runs retry|replay|fork``).

Real workers on a real database (both backends). Step bodies count their executions, so each
test sees which steps ran again and which were replayed from the journal.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, Retry, Run, RunStatus, TaskDefinition, ValidationError, step
from engine.errors import RunStateError
from engine.models import TaskInfo

from .conftest import StartWorker, wait_for_status
from .test_cli import assert_one_line_error, invoke, ok_json, register
from .test_pause import buttons
from .ui.conftest import KEY as UI_KEY
from .ui.conftest import client_for

ran: Counter[str] = Counter()
broken: set[str] = set()
"""The steps that raise while their name is here."""


def _body(name: str, value: Any) -> Any:
    async def body() -> Any:
        ran[name] += 1
        if name in broken:
            raise RuntimeError(f"{name} is broken")
        return value

    return body


async def flow(payload: Any) -> dict[str, Any]:
    """Three steps; ``b`` fails while it is broken."""
    a = await step("a", _body("a", 1))
    b = await step("b", _body("b", 2))
    notify = await step("notify", _body("notify", payload))
    return {"a": a, "b": b, "notify": notify}


async def slow(payload: Any) -> str:
    """A step that outlasts the task's max_duration while ``slow`` is broken."""
    await step("a", _body("a", 1))

    async def maybe_slow() -> str:
        ran["slow"] += 1
        if "slow" in broken:
            await asyncio.sleep(5)
        return "fast"

    return await step("slow", maybe_slow)


class Order(BaseModel):
    sku: str


async def typed(payload: Order) -> str:
    return payload.sku


FLOW = TaskDefinition(id="repair-flow", fn=flow, retry=Retry(max_attempts=1))
TWICE = TaskDefinition(
    id="repair-twice", fn=flow, retry=Retry(max_attempts=2, min_delay=timedelta(milliseconds=10))
)
SLOW = TaskDefinition(id="repair-slow", fn=slow, retry=Retry(max_attempts=1), max_duration_ms=300)
TYPED = TaskDefinition(id="repair-typed", fn=typed, payload_model=Order)
TASKS = [FLOW, TWICE, SLOW, TYPED]


@pytest.fixture(autouse=True)
def fresh() -> None:
    ran.clear()
    broken.clear()


async def _failed(engine: Engine, task: TaskDefinition, payload: Any = "hi") -> str:
    broken.add("b")
    run = await engine.trigger(task.id, payload)
    await wait_for_status(engine, run.id, "FAILED")
    return run.id


async def test_a_failed_run_retried_runs_the_failed_step_again_and_replays_the_rest(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id = await _failed(engine, FLOW)
    assert ran == {"a": 1, "b": 1}
    broken.clear()  # the fix is deployed
    retried = await engine.runs.retry(run_id)
    assert retried.status is not RunStatus.FAILED and retried.error is None  # queued, or taken
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.status is RunStatus.COMPLETED
    assert done.output == {"a": 1, "b": 2, "notify": "hi"}
    assert ran == {"a": 1, "b": 2, "notify": 1}  # "a" was replayed, not run again
    assert done.attempt_count == 2
    kinds = [entry.kind for entry in await engine.runs.timeline(run_id)]
    assert "retried" in kinds and kinds.index("retried") > kinds.index("finished")
    with pytest.raises(RunStateError, match="is COMPLETED: only a FAILED, CRASHED or TIMED_OUT"):
        await engine.runs.retry(run_id)


async def test_a_retry_gives_the_run_its_retry_policy_afresh(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id = await _failed(engine, TWICE)
    assert ran["b"] == 2  # its two attempts
    await engine.runs.retry(run_id)  # still broken: two more attempts, then FAILED again
    run = await _until(engine, run_id, lambda r: r.attempt_count == 4 and r.is_finished)
    assert (run.status, ran["a"], ran["b"]) == (RunStatus.FAILED, 1, 4)


async def _until(engine: Engine, run_id: str, done: Callable[[Run], bool]) -> Run:
    """The run once ``done`` holds for it (a retry may fail again before a poll sees it
    queued, so tests wait for where it ends, not for the states it passes)."""
    async with asyncio.timeout(20):
        while True:
            run = await engine.runs.retrieve(run_id)
            if done(run):
                return run
            await asyncio.sleep(0.02)


async def test_a_timed_out_run_retried_gets_its_whole_max_duration_again(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    broken.add("slow")
    run = await engine.trigger(SLOW.id)
    await wait_for_status(engine, run.id, "TIMED_OUT")
    broken.clear()
    await engine.runs.retry(run.id)
    done = await engine.wait_for_run(run.id, timeout=20)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "fast")
    assert ran == {"a": 1, "slow": 2}


async def test_a_crashed_run_retried_starts_its_crash_count_over(engine: Engine) -> None:
    """The worker that held it stopped answering: a rescue past the limit makes it CRASHED."""
    storage = engine.storage
    await storage.register_tasks([TaskInfo(FLOW.id)])
    run = await engine.trigger(FLOW.id, "x")
    [claimed] = await storage.claim_runs("gone", 1, 1, [FLOW.id])
    await asyncio.sleep(0.01)  # its 1 ms lease runs out
    assert await storage.rescue_expired_leases(max_recoveries=1) == 1
    assert (await engine.runs.retrieve(run.id)).status is RunStatus.CRASHED
    await engine.runs.retry(run.id)
    [again] = await storage.claim_runs("w", 1, 60_000, [FLOW.id])
    assert (again.id, again.attempt, again.attempt_base) == (run.id, 2, 1)
    assert again.epoch > claimed.epoch  # nothing the lost attempt still writes lands


async def test_retry_refuses_unknown_and_unfinished_runs(engine: Engine) -> None:
    await engine.storage.register_tasks([TaskInfo(FLOW.id)])
    queued = await engine.trigger(FLOW.id)
    with pytest.raises(RunStateError, match="is QUEUED"):
        await engine.runs.retry(queued.id)
    assert (await engine.runs.retrieve(queued.id)).status is RunStatus.QUEUED
    with pytest.raises(Exception, match="no run with id"):
        await engine.runs.retry("run_nope")


async def test_a_replay_is_a_new_run_of_everything_linked_to_the_original(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    first = await engine.trigger(FLOW.id, "first", tags=["orders"])
    await engine.wait_for_run(first.id, timeout=20)
    again = await engine.runs.replay(first.id)
    assert again.id != first.id
    assert (again.origin_run_id, again.origin, again.tags) == (first.id, "replay", ["orders"])
    done = await engine.wait_for_run(again.id, timeout=20)
    assert done.output == {"a": 1, "b": 2, "notify": "first"}
    assert ran == {"a": 2, "b": 2, "notify": 2}  # every step ran again
    second = await engine.runs.replay(first.id, "second")
    other = await engine.wait_for_run(second.id, timeout=20)
    assert other.output == {"a": 1, "b": 2, "notify": "second"}
    original = await engine.runs.timeline(first.id)
    replays = [e.detail for e in original if e.kind == "replayed"]
    assert replays == [{"runId": again.id}, {"runId": other.id}]
    created = [e.detail for e in await engine.runs.timeline(again.id) if e.kind == "created"]
    assert created == [{"replay": first.id}]


async def test_a_replay_payload_is_checked_like_a_triggers(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    first = await engine.trigger(TYPED.id, {"sku": "A1"})
    await engine.wait_for_run(first.id, timeout=20)
    with pytest.raises(ValidationError, match="sku"):
        await engine.runs.replay(first.id, {"wrong": 1})
    replayed = await engine.runs.replay(first.id, {"sku": "B2"})
    assert (await engine.wait_for_run(replayed.id, timeout=20)).output == "B2"
    assert len((await engine.runs.list(task=TYPED.id)).data) == 2  # the refused one made none


async def test_a_fork_replays_the_journal_before_its_step_and_runs_the_rest_anew(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    first = await engine.trigger(FLOW.id, "hi")
    await engine.wait_for_run(first.id, timeout=20)
    fork = await engine.runs.fork(first.id, from_step="notify")
    assert (fork.origin_run_id, fork.origin) == (first.id, "fork")
    done = await engine.wait_for_run(fork.id, timeout=20)
    assert done.output == {"a": 1, "b": 2, "notify": "hi"}
    assert ran == {"a": 1, "b": 1, "notify": 2}  # only "notify" ran again
    from_start = await engine.runs.fork(first.id, from_step="step:a#0")
    await engine.wait_for_run(from_start.id, timeout=20)
    assert ran == {"a": 2, "b": 2, "notify": 3}
    forks = [e.detail for e in await engine.runs.timeline(first.id) if e.kind == "forked"]
    assert forks == [
        {"runId": fork.id, "from": "step:notify#0"},
        {"runId": from_start.id, "from": "step:a#0"},
    ]


async def test_a_fork_of_a_failed_run_from_its_failed_step_runs_it_again(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id = await _failed(engine, FLOW)
    broken.clear()
    fork = await engine.runs.fork(run_id, from_step="b")
    done = await engine.wait_for_run(fork.id, timeout=20)
    assert done.status is RunStatus.COMPLETED
    assert ran == {"a": 1, "b": 2, "notify": 1}
    assert (await engine.runs.retrieve(run_id)).status is RunStatus.FAILED  # untouched


async def test_a_fork_from_a_step_the_run_never_made_names_the_ones_it_did(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    first = await engine.trigger(FLOW.id, "hi")
    await engine.wait_for_run(first.id, timeout=20)
    with pytest.raises(ValidationError, match=r"no call 'charge' .*its steps: a, b, notify"):
        await engine.runs.fork(first.id, from_step="charge")
    assert len((await engine.runs.list(task=FLOW.id)).data) == 1  # nothing made


async def test_failed_runs_are_retried_by_filter_and_only_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    failed = [await _failed(engine, FLOW, n) for n in range(3)]
    broken.clear()
    fine = await engine.trigger(FLOW.id, "fine")
    await engine.wait_for_run(fine.id, timeout=20)
    dry = await engine.runs.retry_matching(task=FLOW.id, dry_run=True)
    assert (dry.matched, dry.changed, dry.dry_run) == (3, 0, True)
    seen: list[tuple[int, int]] = []
    done = await engine.runs.retry_matching(task=FLOW.id, progress=lambda d, m: seen.append((d, m)))
    assert (done.matched, done.changed, seen) == (3, 3, [(3, 3)])
    for run_id in failed:
        assert (await engine.wait_for_run(run_id, timeout=20)).status is RunStatus.COMPLETED
    again = await engine.runs.retry_matching(task=FLOW.id)
    assert (again.matched, again.changed) == (0, 0)
    with pytest.raises(ValidationError, match="only runs that are FAILED, TIMED_OUT, CRASHED"):
        await engine.runs.retry_matching(status="COMPLETED")


async def test_the_run_page_retries_a_failed_run_and_replays_it_as_a_new_one(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id = await _failed(engine, FLOW, "page")
    page = f"/ui/runs/{run_id}"
    async with client_for(engine, UI_KEY) as ui:
        await ui.post("/ui/login", data={"key": UI_KEY, "next": "/ui/runs"})
        assert buttons((await ui.get(page)).text) == ["Retry run", "Replay as a new run"]
        broken.clear()
        retried = await ui.post(f"{page}/retry")
        assert (retried.status_code, retried.headers["location"]) == (303, f"{page}?done=retry")
        assert "Run retried" in (await ui.get(retried.headers["location"])).text
        assert (await engine.wait_for_run(run_id, timeout=20)).status is RunStatus.COMPLETED
        assert buttons((await ui.get(page)).text) == ["Replay as a new run"]
        replayed = await ui.post(f"{page}/replay")
        new_page, _, query = replayed.headers["location"].partition("?")
        assert new_page != page and query == "done=replay"
        shown = (await ui.get(replayed.headers["location"])).text
        assert "A replay of the run" in shown and f'href="/ui/runs/{run_id}"' in shown
        assert "Replay of" in shown


@pytest.fixture
def database(db_url: str) -> str:
    return db_url


def test_the_commands_retry_replay_and_fork(database: str) -> None:
    """The CLI over a database no worker serves: retry queues, replay and fork make runs."""
    register(database, "cli-repair")
    made: Any = ok_json(database, "trigger", "cli-repair", "--payload", '{"n": 1}')
    assert_one_line_error(invoke(database, "runs", "retry", made["id"]), "is QUEUED")
    replayed: Any = ok_json(database, "runs", "replay", made["id"], "--payload", '{"n": 2}')
    assert (replayed["originRunId"], replayed["origin"]) == (made["id"], "replay")
    assert replayed["payload"] == {"n": 2}
    people = invoke(database, "runs", "get", made["id"])
    assert f"replayed as run {replayed['id']}" in people.stdout
    assert f"replay of run {made['id']}" in invoke(database, "runs", "get", replayed["id"]).stdout
    assert_one_line_error(
        invoke(database, "runs", "fork", made["id"], "--from-step", "x"), "journaled no call 'x'"
    )
    assert_one_line_error(
        invoke(database, "runs", "replay", made["id"], "--payload", "{"), "--payload is not valid"
    )
    dry: Any = ok_json(
        database, "runs", "retry", "--task", "cli-repair", "--created-after", "1h", "--dry-run"
    )
    assert dry == {"matched": 0, "retried": 0, "dryRun": True}
    assert_one_line_error(invoke(database, "runs", "retry"), "pass RUN_ID, or filters")
