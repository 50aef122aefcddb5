"""Child runs: what ``Task.trigger``, ``trigger_and_wait`` and ``batch_trigger_and_wait`` do.

A child is made once per journal key (``trigger:<task>#n``, ``batch:<task>#n``): creating it,
the parent's RUN waitpoint on it and the parent's wait are one transaction, so a replay finds
the same child instead of starting a second one. A replay follows the parent's edge to the
child it waited on, even one it found through another run's idempotency key after that key
expired. The waitpoint closes with the child's result when the child finishes, whichever way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import Recorded, RunContext
from .current import current_engine
from .errors import ValidationError
from .logs import get_logger
from .models import Run, RunResult, Token
from .options import TriggerOptions
from .requests import run_request
from .storage import JournalWrite

if TYPE_CHECKING:
    from .registry import TaskDefinition

log = get_logger("engine.children")


async def trigger_child(definition: TaskDefinition, payload: Any, options: TriggerOptions) -> Run:
    """``Task.trigger``: from a run, a journaled child; elsewhere, through the current Engine."""
    context = RunContext.find()
    if context is None:
        return await current_engine().trigger(definition.id, payload, **options)
    _no_debounce(options)
    storage = context.storage

    async def execute(write: JournalWrite) -> Recorded:
        payload_json = definition.validate_payload(payload)
        new = run_request(
            definition.id, payload_json, storage.now_ms(), queue=definition.queue_name, **options
        )
        child = await storage.start_child(new, write)
        log.info("run.child_triggered", child_run_id=child.id, child_task=definition.id)
        return Recorded(child.model_dump(mode="json", by_alias=True))

    # what replays return, on the first execution too: no is_cached to branch on differently
    return await context.durable_call(
        "trigger", definition.id, execute=execute, decode=Run.model_validate
    )


async def trigger_children_and_wait(
    definition: TaskDefinition, payloads: list[Any], options: TriggerOptions, *, batch: bool
) -> list[RunResult]:
    """Start the children and park until all finished: one transaction, once per key."""
    _no_debounce(options)
    context = RunContext.current()
    storage = context.storage

    async def execute(write: JournalWrite) -> Recorded | None:
        now = storage.now_ms()
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
        found = await storage.wait_for_children(news, write, context.elapsed_ms())
        if found is None:
            log.info("run.suspended", children=len(news), child_task=definition.id)
            return None
        return Recorded([t.model_dump(mode="json", by_alias=True) for t in found])

    closed = await context.durable_call(
        "batch" if batch else "trigger",
        definition.id,
        execute=execute,
        decode=_waitpoints,
        waits="batch_trigger_and_wait" if batch else "trigger_and_wait",
    )
    return [RunResult.from_waitpoint(waitpoint) for waitpoint in closed]


def _no_debounce(options: TriggerOptions) -> None:
    """A child is made once per journal key, with an edge to its parent: it joins no other
    trigger's run, so a debounce would not do what it says."""
    if options.get("debounce") is not None:
        raise ValidationError(
            "debounce is for triggers from outside a run: a child run is made once per call"
        )


def _waitpoints(value: Any) -> list[Token]:
    return [Token.model_validate(item) for item in value]
