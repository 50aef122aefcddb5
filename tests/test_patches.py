"""Changing a task's durable calls while runs of it wait: ``patched`` and ``deprecate_patch``.

Each test runs real workers on a real database (both backends): a run starts on one version of
a task and parks, the worker is replaced by one running the next version, and the run resumes
there. Step bodies count their executions, so a test sees which branch ran and that no
journaled step ran again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine import (
    Engine,
    NondeterminismError,
    NotInRunError,
    RunStatus,
    TaskDefinition,
    ValidationError,
    Worker,
    create_token,
    deprecate_patch,
    patched,
    step,
    wait_for_token,
)

from .conftest import wait_for_status

TASK = "patchy-pricing"
ran: Counter[str] = Counter()


def _price(name: str, value: int) -> Callable[[], Awaitable[int]]:
    async def body() -> int:
        ran[name] += 1
        return value

    return body


async def v1(payload: Any) -> dict[str, Any]:
    """The code before the deploy: the old price, then a wait for approval."""
    price = await step("price", _price("price", 10))
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


async def v2(payload: Any) -> dict[str, Any]:
    """The deploy: new runs take the new price; runs that priced before it keep theirs."""
    if await patched("new-pricing"):
        price = await step("price-v2", _price("price-v2", 20))
    else:
        price = await step("price", _price("price", 10))
    assert await patched("new-pricing") is (price == 20)  # asked again: the same answer
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


async def v3(payload: Any) -> dict[str, Any]:
    """Later: no run from before the patch is left, so the old branch is gone."""
    await deprecate_patch("new-pricing")
    price = await step("price-v2", _price("price-v2", 20))
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


async def renamed_without_a_patch(payload: Any) -> dict[str, Any]:
    price = await step("price-v2", _price("price-v2", 20))
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


@asynccontextmanager
async def worker_running(
    engine: Engine, fn: Callable[[Any], Awaitable[Any]]
) -> AsyncIterator[None]:
    """A worker running ``fn`` as the task, stopped (its attempts ended) on exit."""
    worker = Worker(engine, {TASK: TaskDefinition(id=TASK, fn=fn)}, poll_seconds=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 5)
    try:
        yield
    finally:
        worker.stop(graceful=False)
        await asyncio.wait_for(runner, 10)


async def parked(engine: Engine, tag: str) -> str:
    """Trigger a run tagged ``tag`` and wait until it waits on its token."""
    run = await engine.trigger(TASK, tag)
    await wait_for_status(engine, run.id, "WAITING")
    return run.id


async def approve(engine: Engine, tag: str) -> None:
    [token] = (await engine.tokens.list(tags=tag, status="WAITING")).data
    await engine.tokens.complete(token.id, True)


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    ran.clear()


async def test_a_run_from_before_the_deploy_keeps_the_old_branch_and_a_new_run_takes_the_new(
    engine: Engine,
) -> None:
    async with worker_running(engine, v1):
        old = await parked(engine, "old")
    assert ran == {"price": 1}
    async with worker_running(engine, v2):
        new = await parked(engine, "new")
        await approve(engine, "old")
        await approve(engine, "new")
        done_old = await engine.wait_for_run(old, timeout=20)
        done_new = await engine.wait_for_run(new, timeout=20)
    assert done_old.output == {"price": 10, "approved": True}
    assert done_new.output == {"price": 20, "approved": True}
    assert ran == {"price": 1, "price-v2": 1}  # no journaled step ran again
    keys = [entry.key for entry in await engine.runs.timeline(new) if entry.key]
    assert keys[:2] == ["patch:new-pricing#0", "step:price-v2#0"]
    assert not any(
        (entry.key or "").startswith("patch:") for entry in await engine.runs.timeline(old)
    )


async def test_a_deprecated_patch_replays_runs_that_took_it_and_records_nothing_new(
    engine: Engine,
) -> None:
    async with worker_running(engine, v2):
        patched_run = await parked(engine, "patched")
    async with worker_running(engine, v3):
        later = await parked(engine, "later")
        await approve(engine, "patched")
        await approve(engine, "later")
        assert (await engine.wait_for_run(patched_run, timeout=20)).output["price"] == 20
        assert (await engine.wait_for_run(later, timeout=20)).output["price"] == 20
    assert ran == {"price-v2": 2}
    keys = [entry.key for entry in await engine.runs.timeline(later) if entry.key]
    assert "patch:new-pricing#0" not in keys


async def test_the_same_change_without_a_patch_fails_the_waiting_run(engine: Engine) -> None:
    """What ``patched`` is for: renaming the step under a waiting run breaks its replay."""
    async with worker_running(engine, v1):
        old = await parked(engine, "unpatched")
    async with worker_running(engine, renamed_without_a_patch):
        await approve(engine, "unpatched")
        await wait_for_status(engine, old, RunStatus.FAILED.value)
    run = await engine.runs.retrieve(old)
    assert run.error is not None and NondeterminismError.__name__ in run.error.name
    assert ran == {"price": 1}


async def test_patch_calls_belong_in_a_run_and_name_their_patch() -> None:
    with pytest.raises(NotInRunError):
        await patched("new-pricing")
    with pytest.raises(NotInRunError):
        await deprecate_patch("new-pricing")


@pytest.mark.parametrize("bad", ["", "  ", "a#1"])
async def test_a_patch_id_must_be_a_plain_name(engine: Engine, bad: str) -> None:
    async def task_with_a_bad_patch(payload: Any) -> None:
        await patched(bad)

    async with worker_running(engine, task_with_a_bad_patch):
        run = await engine.trigger(TASK)
        await wait_for_status(engine, run.id, RunStatus.FAILED.value)
    error = (await engine.runs.retrieve(run.id)).error
    assert error is not None and ValidationError.__name__ in error.name
    assert "patch id" in error.message
