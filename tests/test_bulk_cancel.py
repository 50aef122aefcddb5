"""Cancelling runs by filter (``engine.runs.cancel_matching``, ``waitpoint runs cancel
--task T``): every unfinished run matched is canceled, nothing else is touched, a dry run
changes nothing, and running it again cancels nothing more."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine import Engine, RunStatus, ValidationError
from engine.models import TaskInfo

from .test_cli import assert_one_line_error, invoke, ok_json, register
from .test_remote import KEY, server  # noqa: F401 - the fixture

MANY = 1_000


@pytest.fixture
def database(db_url: str) -> str:
    return db_url


async def queued(engine: Engine, task_id: str, count: int) -> list[str]:
    """``count`` QUEUED runs of ``task_id`` (no worker serves it)."""
    await engine.storage.register_tasks([TaskInfo(task_id, None)])
    ids: list[str] = []
    for start in range(0, count, 100):
        made = await asyncio.gather(
            *(engine.trigger(task_id, i) for i in range(start, min(count, start + 100)))
        )
        ids += [run.id for run in made]
    return ids


async def statuses(engine: Engine, task_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    after = None
    while True:
        page = await engine.runs.list(task=task_id, limit=100, after=after)
        for run in page.data:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        if page.next_cursor is None:
            return counts
        after = page.next_cursor


async def test_a_thousand_runs_are_canceled_by_filter_and_nothing_else(engine: Engine) -> None:
    await queued(engine, "bulk-target", MANY)
    kept = await queued(engine, "bulk-bystander", 5)
    dry = await engine.runs.cancel_matching(task="bulk-target", dry_run=True)
    assert (dry.matched, dry.changed, dry.dry_run) == (MANY, 0, True)
    assert await statuses(engine, "bulk-target") == {"QUEUED": MANY}
    seen: list[tuple[int, int]] = []
    done = await engine.runs.cancel_matching(
        task="bulk-target", progress=lambda n, of: seen.append((n, of))
    )
    assert (done.matched, done.changed) == (MANY, MANY)
    assert seen[-1] == (MANY, MANY) and len(seen) == MANY // 50
    assert await statuses(engine, "bulk-target") == {"CANCELED": MANY}
    assert {(await engine.runs.retrieve(i)).status for i in kept} == {RunStatus.QUEUED}
    again = await engine.runs.cancel_matching(task="bulk-target")
    assert (again.matched, again.changed) == (0, 0)


async def test_finished_statuses_are_refused_with_the_ones_that_can_be_canceled(
    engine: Engine,
) -> None:
    with pytest.raises(ValidationError, match=r"only runs that are QUEUED, .* can be canceled"):
        await engine.runs.cancel_matching(status="FAILED")


def test_the_command_cancels_by_filter_and_refuses_ambiguous_calls(database: str) -> None:
    register(database, "cli-bulk", "cli-other")
    for task_id in ("cli-bulk", "cli-bulk", "cli-bulk", "cli-other"):
        ok_json(database, "trigger", task_id)
    dry: Any = ok_json(database, "runs", "cancel", "--task", "cli-bulk", "--dry-run")
    assert dry == {"matched": 3, "canceled": 0, "dryRun": True}
    assert ok_json(database, "runs", "cancel", "--task", "cli-bulk") == {
        "matched": 3,
        "canceled": 3,
        "dryRun": False,
    }
    people = invoke(database, "runs", "cancel", "--task", "cli-bulk")
    assert people.exit_code == 0 and "canceled 0 of the 0 unfinished runs" in people.stdout
    other = ok_json(database, "runs", "list", "--task", "cli-other")
    assert [run["status"] for run in other["data"]] == ["QUEUED"]
    assert_one_line_error(invoke(database, "runs", "cancel"), "pass RUN_ID, or filters")
    assert_one_line_error(
        invoke(database, "runs", "cancel", "run_x", "--task", "cli-bulk"), "either RUN_ID"
    )


async def test_cancel_by_filter_works_the_same_over_http(server: str) -> None:  # noqa: F811
    """``cancel_matching`` is written once, above the transports: over the REST API it lists
    and cancels through the routes."""
    async with Engine(server, api_key=KEY) as engine:
        made = [await engine.trigger("remote-flow", {"n": n}, tags=["bulk"]) for n in range(3)]
        await engine.trigger("remote-flow", {"n": 9}, tags=["spared"])
        done = await engine.runs.cancel_matching(tags="bulk")
        assert (done.matched, done.changed) == (3, 3)
        assert {(await engine.runs.retrieve(r.id)).status for r in made} == {RunStatus.CANCELED}
        spared = await engine.runs.list(tags="spared")
        assert [run.status.is_terminal for run in spared.data] == [False]
