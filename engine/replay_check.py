"""Check runs against new code before deploying it: does each run's journal replay?

    reports = await check_replay(engine, run_ids, tasks=load_tasks("tasks_v2"))
    for report in reports:
        print(report.run_id, report.verdict)

Each run's task function is called under a ``RunContext`` in checking mode: journaled calls
return their recorded outcomes as in a real replay, and the first call the journal does not
hold ends the check (``ReachedNewCode``: from there on the code runs for the first time). So
no step body runs and nothing is written: ``update_metadata`` and ``complete_token`` do not
write while checking. A run diverges when its replay meets a different call than the journal
recorded, returns before making every recorded call, or raises before it made them all (the
run would fail once resumed); the report says which and where in the code.
``waitpoint runs check`` is the command.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .context import RunContext
from .errors import NondeterminismError, NotFoundError, Suspended
from .journal import failure_site
from .models import ClaimedRun, Run
from .registry import TaskDefinition

if TYPE_CHECKING:
    from .client import Engine

CHECK_SECONDS = 30.0
"""A replay that takes longer (code between durable calls that blocks) is reported as such."""


@dataclass(frozen=True)
class ReplayReport:
    """How one run's journal replayed against the code checked."""

    run_id: str
    task_id: str
    ok: bool
    replayed: int
    """Journaled calls the code made again (the whole journal when ``ok``)."""
    problem: str | None = None
    """Why it is not ok: ``expected step:charge#0, code calls step:charge-v2#0``."""
    where: str | None = None
    """Where the code made the diverging call (``tasks/refund.py:42 in refund``)."""

    @property
    def verdict(self) -> str:
        if self.ok:
            return "ok"
        return f"{self.problem} at {self.where}" if self.where else str(self.problem)


async def check_replay(
    engine: Engine,
    run_ids: Iterable[str],
    *,
    tasks: Mapping[str, TaskDefinition] | Iterable[TaskDefinition],
) -> list[ReplayReport]:
    """Replay each run's journal against ``tasks`` (the new code), without side effects."""
    known = dict(tasks) if isinstance(tasks, Mapping) else {t.id: t for t in tasks}
    return [await _check(engine, await engine.runs.retrieve(run_id), known) for run_id in run_ids]


async def _check(engine: Engine, run: Run, tasks: Mapping[str, TaskDefinition]) -> ReplayReport:
    definition = tasks.get(run.task_identifier)
    if definition is None:
        raise NotFoundError(
            f"run {run.id} is of task {run.task_identifier!r}, which the code checked does not"
            f" define (it defines {', '.join(sorted(tasks)) or 'no task'})"
        )
    journal = await engine.storage.get_journal(run.id)
    claimed = ClaimedRun(
        id=run.id,
        task_id=run.task_identifier,
        payload=run.payload,
        attempt=max(run.attempt_count, 1),
        epoch=0,  # nothing is written
        metadata=dict(run.metadata or {}),
        journal=journal,
    )
    context = RunContext(engine.storage, engine.signer, claimed, checking=True)
    entered = context.enter()
    ended: BaseException | None = None
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await definition.fn(definition.parse_payload(claimed.payload))
    except TimeoutError:
        return ReplayReport(
            run.id,
            run.task_identifier,
            False,
            context.replayed,
            f"the replay took longer than {CHECK_SECONDS:.0f} s",
        )
    except (Exception, Suspended) as exc:
        ended = exc
    finally:
        await context.cancel_leftovers()
        RunContext.leave(entered)
    diverged = context.fatal if isinstance(context.fatal, NondeterminismError) else None
    pending = context.next_unreplayed()
    if diverged is None and isinstance(ended, Exception) and pending is not None:
        # the old code went on to make this call; the new code raises before it: the run
        # would fail once resumed on it
        return ReplayReport(
            run.id,
            run.task_identifier,
            False,
            context.replayed,
            f"the code raises {type(ended).__name__}: {ended} before it calls {pending}",
            failure_site("".join(traceback.format_exception(ended))),
        )
    if diverged is None and ended is None:  # returned: it must have made every recorded call
        try:
            context.check_finished_replay()
        except NondeterminismError as exc:
            diverged = exc
    if diverged is None:
        return ReplayReport(run.id, run.task_identifier, True, context.replayed)
    stack = "".join(traceback.format_exception(diverged))
    return ReplayReport(
        run.id,
        run.task_identifier,
        False,
        context.replayed,
        f"expected {diverged.expected}, code calls {diverged.actual}",
        failure_site(stack),
    )
