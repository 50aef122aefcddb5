"""Child runs: what ``Task.trigger``, ``trigger_and_wait`` and ``batch_trigger_and_wait`` do.

A child is made once per journal key (``trigger:<task>#n``, ``batch:<task>#n``): creating it,
the parent's RUN waitpoint on it and the parent's wait are one transaction, so a replay finds
the same child instead of starting a second one. The waitpoint closes with the child's result
when the child finishes, whichever way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from .client import current_engine
from .errors import Suspended
from .models import Run, RunResult, Token
from .registry import TaskDefinition
from .requests import run_request
from .runtime import RunContext, as_journaled

log = structlog.get_logger("engine.children")


async def trigger_child(definition: TaskDefinition, payload: Any, options: dict[str, Any]) -> Run:
    """``Task.trigger``: from a run, a journaled child; elsewhere, through the current Engine."""
    context = RunContext.find()
    if context is None:
        return await current_engine().trigger(definition.id, payload, **options)
    key, position = context.next_call("trigger", definition.id)
    entry = context.recorded(key, position)
    if entry is not None:
        await asyncio.sleep(0)
        return Run.model_validate(entry.value)
    new = run_request(
        definition.id,
        definition.validate_payload(payload),
        context.storage.now_ms(),
        queue=definition.queue_name,
        **options,
    )
    child = await context.storage.start_child(new, context.journal_write(key, position, None))
    context.journaled()
    log.info("run.child_triggered", child_run_id=child.id, child_task=definition.id)
    return as_journaled(child)  # what replays return: no is_cached to branch on differently


async def trigger_children_and_wait(
    definition: TaskDefinition, payloads: list[Any], options: dict[str, Any], *, batch: bool
) -> list[RunResult]:
    """Start the children and park until all finished: one transaction, once per key."""
    context = RunContext.current()
    key, position = context.next_call("batch" if batch else "trigger", definition.id)
    with context.waiting("batch_trigger_and_wait" if batch else "trigger_and_wait"):
        entry = context.recorded(key, position)
        if entry is not None:
            await asyncio.sleep(0)
            closed = [Token.model_validate(item) for item in entry.value]
        else:
            now = context.storage.now_ms()
            news = [
                run_request(
                    definition.id,
                    definition.validate_payload(p),
                    now,
                    queue=definition.queue_name,
                    **options,
                )
                for p in payloads
            ]
            journal = context.journal_write(key, position, None)
            found = await context.storage.wait_for_children(news, journal, context.elapsed_ms())
            if found is None:
                log.info("run.suspended", children=len(news), child_task=definition.id)
                raise Suspended()
            context.journaled()
            closed = found
    return [RunResult.from_waitpoint(waitpoint) for waitpoint in closed]
