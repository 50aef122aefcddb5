"""Checking waiting runs against new code before deploying it (``check_replay``,
``waitpoint runs check``): ok for compatible code, the exact divergence otherwise, and no step
body run and nothing written either way (step bodies count their executions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Engine,
    TaskDefinition,
    check_replay,
    create_token,
    patched,
    step,
    update_metadata,
    wait_for_token,
)

from .test_patches import TASK, parked, worker_running

ran: Counter[str] = Counter()


async def price(name: str) -> int:
    ran[name] += 1
    return 10


async def v1(payload: Any) -> Any:
    total = await step("price", price, "price")
    await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return total


async def v1_with_logging(payload: Any) -> Any:
    """Compatible: code between durable calls changed, the calls did not."""
    total = await step("price", price, "price")
    await update_metadata({"priced": total})
    await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return total


async def v2_patched(payload: Any) -> Any:
    if await patched("new-pricing"):
        total = await step("price-v2", price, "price-v2")
    else:
        total = await step("price", price, "price")
    await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return total


async def v2_renamed(payload: Any) -> Any:
    total = await step("price-v2", price, "price-v2")  # the diverging call
    await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return total


async def v2_returns_early(payload: Any) -> Any:
    return None


async def v2_raises(payload: Any) -> Any:
    total = await step("price", price, "price")
    raise KeyError(f"no discount for {total}")


def tasks(fn: Any) -> list[TaskDefinition]:
    return [TaskDefinition(id=TASK, fn=fn)]


@pytest.fixture
async def waiting_run(engine: Engine) -> str:
    async with worker_running(engine, v1):
        run_id = await parked(engine, "checked")
    ran.clear()  # what v1 ran; the checks below must run nothing
    return run_id


async def test_compatible_code_replays_the_whole_journal(engine: Engine, waiting_run: str) -> None:
    before = await engine.runs.retrieve(waiting_run)
    for fn in (v1, v1_with_logging, v2_patched):
        [report] = await check_replay(engine, [waiting_run], tasks=tasks(fn))
        assert (report.ok, report.verdict, report.replayed) == (True, "ok", 2), fn.__name__
    assert ran == Counter()  # no step body ran
    after = await engine.runs.retrieve(waiting_run)
    assert after.metadata == before.metadata  # update_metadata wrote nothing
    assert after.status == before.status and after.updated_at == before.updated_at
    keys = [e.key for e in await engine.runs.timeline(waiting_run) if e.key]
    assert keys == ["step:price#0", "create_token#0"]  # no patch marker recorded


async def test_a_renamed_step_is_reported_with_both_calls_and_where_the_code_makes_it(
    engine: Engine, waiting_run: str
) -> None:
    [report] = await check_replay(engine, [waiting_run], tasks=tasks(v2_renamed))
    assert not report.ok
    assert report.problem == "expected step:price#0, code calls step:price-v2#0"
    line = _line_of("the diverging call")
    assert report.where == f"tests/test_replay_check.py:{line} in v2_renamed"
    assert report.verdict == f"{report.problem} at {report.where}"
    assert ran == Counter()


async def test_code_that_stops_short_of_the_journal_is_reported(
    engine: Engine, waiting_run: str
) -> None:
    [early] = await check_replay(engine, [waiting_run], tasks=tasks(v2_returns_early))
    assert early.problem == "expected step:price#0, code calls the task returning"
    [raising] = await check_replay(engine, [waiting_run], tasks=tasks(v2_raises))
    assert raising.problem == (
        "the code raises KeyError: 'no discount for 10' before it calls create_token#0"
    )
    assert raising.where is not None and raising.where.endswith("in v2_raises")
    assert ran == Counter()


async def test_a_run_of_a_task_the_code_lacks_is_an_error_naming_it(
    engine: Engine, waiting_run: str
) -> None:
    other = [TaskDefinition(id="another-task", fn=v1)]
    with pytest.raises(Exception, match=f"task {TASK!r}, which the code checked does not define"):
        await check_replay(engine, [waiting_run], tasks=other)


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if marker in text and "step(" in text)


CLI_TASKS = """
from engine import create_token, step, task, wait_for_token

@task("{task}")
async def priced(payload):
    total = await step("{step}", price)
    await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return total

async def price():
    return 10
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_command_prints_each_run_and_exits_1_on_a_divergence(
    engine: Engine, waiting_run: str, tmp_path: Path
) -> None:
    def check(step_name: str) -> subprocess.CompletedProcess[str]:
        module = f"check_{step_name.replace('-', '_')}"
        (tmp_path / f"{module}.py").write_text(CLI_TASKS.format(task=TASK, step=step_name))
        env = {**os.environ, "WAITPOINT_DATABASE_URL": engine.settings.database_url}
        return subprocess.run(
            [sys.executable, "-m", "engine", "runs", "check", "--tasks", module, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    same = check("price")
    assert same.returncode == 0, same.stderr
    [ok] = json.loads(same.stdout)
    assert (ok["run_id"], ok["ok"], ok["verdict"]) == (waiting_run, True, "ok")
    renamed = check("price-v2")
    assert renamed.returncode == 1, renamed.stderr
    [report] = json.loads(renamed.stdout)
    assert report["problem"] == "expected step:price#0, code calls step:price-v2#0"
    assert report["where"].endswith("check_price_v2.py:6 in priced")
