"""Child runs and token groups: every kind of wait on one waitpoint mechanism."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from engine import (
    ChildRunError,
    Engine,
    NotInRunError,
    RunFailedError,
    Worker,
    create_token,
    task,
    wait_for_token,
    wait_for_tokens,
)

from .conftest import StartWorker, wait_for_status

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    """Each test (and each backend's run of it) counts its own child runs."""
    RAN.clear()


@task("ch-double")
async def double(payload: dict[str, Any]) -> int:
    RAN[f"double-{payload['n']}"] += 1
    if payload.get("fail"):
        raise ValueError(f"cannot double {payload['n']}")
    if payload.get("token"):
        await wait_for_token(payload["token"])
    return int(payload["n"]) * 2


@task("ch-parent")
async def parent(payload: dict[str, Any]) -> dict[str, Any]:
    result = await double.trigger_and_wait(payload)
    if payload.get("unwrap"):
        result.unwrap()
    return {
        "ok": result.ok,
        "output": result.output,
        "child": result.run_id,
        "error": type(result.error).__name__ if result.error else None,
    }


async def test_trigger_and_wait_parks_the_parent_until_the_child_finishes(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([parent, double])
    run = await engine.trigger("ch-parent", {"n": 21})
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["ok"] is True and done.output["output"] == 42
    child = await engine.runs.retrieve(done.output["child"])
    assert child.parent_run_id == run.id and child.depth == 1
    assert (await engine.runs.retrieve(run.id)).children == [child.id]
    assert child.status == "COMPLETED"
    assert RAN["double-21"] == 1  # the parent's replay did not start a second child
    children = await engine.runs.list(task="ch-double")
    assert [c.id for c in children.data if c.parent_run_id == run.id] == [child.id]


async def test_a_failed_child_does_not_fail_the_parent_unless_it_unwraps(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([parent, double])
    run = await engine.trigger("ch-parent", {"n": 1, "fail": True})
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["ok"] is False and done.output["error"] == "ChildRunError"
    unwrapping = await engine.trigger("ch-parent", {"n": 2, "fail": True, "unwrap": True})
    with pytest.raises(RunFailedError, match=r"child run .* ended FAILED"):
        await engine.wait_for_run(unwrapping.id, timeout=15)
    failed = await engine.runs.retrieve(unwrapping.id)
    assert failed.error is not None and failed.error.name == "engine.errors.ChildRunError"


@task("ch-batch")
async def batch_parent(payload: list[int]) -> list[Any]:
    results = await double.batch_trigger_and_wait([{"n": n} for n in payload])
    return [r.output if r.ok else "failed" for r in results]


async def test_batch_trigger_and_wait_returns_every_result_in_order(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([batch_parent, double])
    run = await engine.trigger("ch-batch", [3, 4, 5])
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output == [6, 8, 10]


async def test_a_child_awaited_across_a_worker_restart(engine: Engine) -> None:
    token = await engine.tokens.create()
    tasks = {"ch-parent": parent, "ch-double": double}
    first = Worker(engine, tasks, poll_seconds=0.1)
    running = asyncio.create_task(first.run())
    run = await engine.trigger("ch-parent", {"n": 7, "token": token.id})
    await wait_for_status(engine, run.id, "WAITING")
    [child] = (await engine.runs.retrieve(run.id)).children
    await wait_for_status(engine, child, "WAITING")  # it ran up to its own wait
    first.stop(graceful=False)
    await running
    await engine.tokens.complete(token.id)  # the child can go on, no worker runs
    second = Worker(engine, tasks, poll_seconds=0.1)
    running = asyncio.create_task(second.run())
    try:
        done = await engine.wait_for_run(run.id, timeout=15)
    finally:
        second.stop(graceful=False)
        await running
    assert done.output["output"] == 14
    assert RAN["double-7"] == 2  # once before its own wait, once after


@task("ch-fire-and-wait")
async def fire_and_wait(payload: dict[str, str]) -> None:
    await double.trigger({"n": 100, "token": payload["free"]})  # not awaited
    await double.trigger_and_wait({"n": 200, "token": payload["held"]})


async def test_cancelling_a_parent_cancels_the_children_it_waits_on_only(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([fire_and_wait, double])
    free, held = await engine.tokens.create(), await engine.tokens.create()
    run = await engine.trigger("ch-fire-and-wait", {"free": free.id, "held": held.id})
    await wait_for_status(engine, run.id, "WAITING")
    children = {c.payload["n"]: c for c in (await engine.runs.list(task="ch-double")).data}
    await wait_for_status(engine, children[200].id, "WAITING")
    await engine.runs.cancel(run.id)
    assert (await engine.runs.retrieve(children[200].id)).status == "CANCELED"
    assert (await engine.runs.retrieve(children[100].id)).status != "CANCELED"


@task("ch-shared-parent")
async def shared_parent(payload: dict[str, Any]) -> Any:
    child = {"n": payload["n"], "token": payload["token"]}
    result = await double.trigger_and_wait(child, idempotency_key=payload["key"])
    return {"output": result.output, "child": result.run_id}


async def test_cancelling_one_parent_spares_the_child_another_parent_waits_on(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([shared_parent, double])
    token = await engine.tokens.create()
    payload = {"n": 4, "token": token.id, "key": "shared-child"}
    first = await engine.trigger("ch-shared-parent", payload)
    await wait_for_status(engine, first.id, "WAITING")
    second = await engine.trigger("ch-shared-parent", payload)
    await wait_for_status(engine, second.id, "WAITING")
    [child] = (await engine.runs.list(task="ch-double")).data  # one child, found by its key
    await wait_for_status(engine, child.id, "WAITING")

    assert (await engine.runs.cancel(first.id)).status == "CANCELED"
    assert (await engine.runs.retrieve(child.id)).status == "WAITING"
    assert (await engine.runs.retrieve(second.id)).status == "WAITING"
    await engine.tokens.complete(token.id)
    done = await engine.wait_for_run(second.id, timeout=15)
    assert done.status == "COMPLETED"
    assert done.output == {"output": 8, "child": child.id}
    assert (await engine.runs.retrieve(child.id)).status == "COMPLETED"
    assert (await engine.runs.retrieve(first.id)).status == "CANCELED"


async def test_task_trigger_outside_a_run_uses_the_current_engine(engine: Engine) -> None:
    run = await double.trigger({"n": 1})
    assert run.task_identifier == "ch-double" and run.parent_run_id is None
    with pytest.raises(NotInRunError):
        await double.trigger_and_wait({"n": 1})


@task("ch-group")
async def group(payload: dict[str, Any]) -> dict[str, Any]:
    tokens = [await create_token(tags=["group"]) for _ in range(payload["count"])]
    result = await wait_for_tokens(tokens, mode=payload["mode"], timeout=payload.get("timeout"))
    return {
        "ok": result.ok,
        "first": result.first,
        "timed_out": result.timed_out,
        "outputs": {k: (v.output if v else None) for k, v in result.results.items()},
        "ids": [t.id for t in tokens],
    }


async def group_tokens(engine: Engine, run_id: str, count: int) -> list[str]:
    await wait_for_status(engine, run_id, "WAITING")
    page = await engine.tokens.list(tags=["group"], status="WAITING")
    waiting = (await engine.runs.retrieve(run_id)).waiting_on
    ids = [t.id for t in page.data if t.id in waiting]
    assert len(ids) == count
    return ids


async def test_group_all_resumes_once_every_token_closed(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([group])
    run = await engine.trigger("ch-group", {"count": 2, "mode": "all"})
    first, second = await group_tokens(engine, run.id, 2)
    await engine.tokens.complete(first, "a")
    await asyncio.sleep(0.3)
    assert (await engine.runs.retrieve(run.id)).status == "WAITING"
    await engine.tokens.complete(second, "b")
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output["ok"] is True and done.output["outputs"] == {first: "a", second: "b"}


async def test_group_any_resumes_at_the_first_and_leaves_the_others_waiting(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([group])
    run = await engine.trigger("ch-group", {"count": 3, "mode": "any"})
    ids = await group_tokens(engine, run.id, 3)
    await engine.tokens.complete(ids[1], "winner")
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output["first"] == ids[1] and done.output["ok"] is True
    assert done.output["outputs"][ids[1]] == "winner"
    assert done.output["outputs"][ids[0]] is None
    assert (await engine.tokens.retrieve(ids[0])).status == "WAITING"
    await engine.tokens.complete(ids[0], "late")  # nobody waits on it any more
    assert (await engine.runs.retrieve(run.id)).status == "COMPLETED"


async def test_group_timeout_closes_the_group(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker([group])
    run = await engine.trigger("ch-group", {"count": 2, "mode": "all", "timeout": "1s"})
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["timed_out"] is True and done.output["ok"] is False
    assert done.output["first"] is None


def test_child_run_error_carries_the_run_and_its_error() -> None:
    error = ChildRunError("run_x", "FAILED", {"message": "boom"})
    assert (error.run_id, error.status) == ("run_x", "FAILED") and "boom" in str(error)


@task("ch-keyed")
async def keyed(payload: dict[str, Any]) -> dict[str, Any]:
    fired = await double.trigger({"n": 5}, idempotency_key=payload["key"])
    awaited = await double.trigger_and_wait({"n": 5}, idempotency_key=payload["key"])
    return {"fired": fired.id, "awaited": awaited.run_id, "output": awaited.output}


async def test_children_triggered_with_one_idempotency_key_are_one_run(
    engine: Engine, start_worker: StartWorker
) -> None:
    """Trigger.dev semantics: a key already used gives that run back, even to a parent that
    waits for it (and one that already finished resumes the parent at once)."""
    await start_worker([keyed, double])
    first = await engine.wait_for_run((await engine.trigger("ch-keyed", {"key": "k1"})).id)
    assert first.status == "COMPLETED", first.error
    assert first.output["fired"] == first.output["awaited"]
    assert first.output["output"] == 10
    again = await engine.wait_for_run((await engine.trigger("ch-keyed", {"key": "k1"})).id)
    assert again.status == "COMPLETED", again.error
    assert again.output == first.output  # the finished child, found by its key
    assert RAN["double-5"] == 1
