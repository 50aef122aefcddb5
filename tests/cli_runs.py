"""Runs for the CLI's output tests: one that fails in a helper, one that sleeps and waits on a
token, one that waits on a group with a deadline and then on a child run. ``drive`` runs a
worker in-process until the run got where a test wants it, then stops the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from engine import (
    Engine,
    Retry,
    Run,
    TaskDefinition,
    Worker,
    create_token,
    sleep,
    task,
    wait_for_token,
    wait_for_tokens,
)
from engine.models import TimelineEntry


def divide(n: int) -> float:
    return 1 / n


DIVIDE_LINE = divide.__code__.co_firstlineno + 1
"""The line that raises ZeroDivisionError."""


@task("cli-boom", retry=Retry(max_attempts=1))
async def boom(payload: Any) -> float:
    return divide(0)


@task("cli-napper")
async def napper(payload: Any) -> Any:
    await sleep(timedelta(milliseconds=200))
    return (await wait_for_token(await create_token(timeout="1h"))).output


@task("cli-child")
async def child(payload: Any) -> Any:
    return (await wait_for_token(await create_token(timeout="1h"))).output


@task("cli-parent")
async def parent(payload: Any) -> Any:
    lone = await create_token(timeout="1h")
    await wait_for_tokens([lone], mode="any", timeout=timedelta(milliseconds=100))
    return (await child.trigger_and_wait(None)).output


Until = Callable[[Run, list[TimelineEntry]], bool]


def failed(run: Run, timeline: list[TimelineEntry]) -> bool:
    return run.status == "FAILED"


def waiting_on_a_token(run: Run, timeline: list[TimelineEntry]) -> bool:
    """Parked on the token it made (not on its sleep or deadline, nor on its child)."""
    made = [e.token.id for e in timeline if e.kind == "create_token" and e.token is not None]
    return run.status == "WAITING" and bool(made) and run.waiting_on == made[-1:]


def waiting_on_a_child(run: Run, timeline: list[TimelineEntry]) -> bool:
    return run.status == "WAITING" and bool(run.children)


def drive(
    database: str,
    definition: TaskDefinition,
    until: Until,
    *,
    idempotency_key: str | None = None,
    tasks: list[TaskDefinition] | None = None,
) -> str:
    """Trigger ``definition`` with a worker running it (and ``tasks``) until ``until`` holds;
    returns the run's id."""

    async def go() -> str:
        async with Engine(database) as engine:
            served = {t.id: t for t in [definition, *(tasks or [])]}
            worker = Worker(engine, served, poll_seconds=0.05)
            running = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(worker.started.wait(), 10)
                run = await engine.trigger(definition.id, idempotency_key=idempotency_key)
                for _ in range(1000):
                    seen = await engine.runs.retrieve(run.id)
                    if until(seen, await engine.runs.timeline(run.id)):
                        return run.id
                    await asyncio.sleep(0.01)
                raise AssertionError(f"run {run.id} is {seen.status}, not where the test waits")
            finally:
                worker.stop(graceful=False)
                await asyncio.wait_for(running, 10)

    return asyncio.run(go())
