"""Debounced triggers and batch triggers (issue #17, items 6 and 7), on SQLite and PostgreSQL.

Debounce: triggers of a task with the same key collapse into one DELAYED run, pushed back by
each of them, that starts once they pause for the delay (Trigger.dev's ``debounce`` option:
``leading`` keeps the first trigger's data, ``trailing`` takes the last one's; ``max_delay``
bounds the pushing). The storage tests move a manual clock instead of sleeping; a worker
runs a debounced run once, and concurrent triggers (two engines, as two processes) make one
run, which only a lock of the key guarantees on PostgreSQL.

Batch: up to 1,000 runs in one call and one transaction (counted by the storage's commits,
and proven all-or-nothing by a process that dies just before its commit), from Python, the
REST API (``POST /api/v1/tasks/batch``) and the CLI (``waitpoint trigger --file``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel

from engine import (
    Debounce,
    Engine,
    RunFailedError,
    RunStatus,
    TaskNotFoundError,
    ValidationError,
    task,
)
from engine.cli import app
from engine.clock import from_ms
from engine.faults import CRASH_EXIT_CODE
from engine.models import TaskInfo
from engine.options import BatchItem
from engine.storage.sql import rows

from .api.conftest import AUTH, api_client
from .conftest import StartWorker
from .test_cli import assert_one_line_error, invoke, register, runner
from .test_remote import KEY, server  # noqa: F401 - the fixture
from .test_storage_contract import StepClock

RAN: list[Any] = []
"""The payloads ``db-count`` ran with, in order."""


@task("db-echo")
async def echo(payload: Any) -> Any:
    return payload


@task("db-other")
async def other(payload: Any) -> Any:
    return payload


@task("db-count")
async def counted(payload: Any) -> Any:
    RAN.append(payload)
    return payload


class Order(BaseModel):
    n: int


@task("db-typed")
async def typed(payload: Order) -> int:
    return payload.n


@task("db-parent")
async def parent(payload: Any) -> Any:
    child = await echo.trigger(payload, debounce=Debounce("child", "5s"))
    return child.id


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
async def timed(db_url: str, clock: StepClock) -> AsyncIterator[Engine]:
    """An engine whose clock moves only when the test moves it."""
    async with Engine(db_url, clock=clock) as opened:
        yield opened


def at(ms: int) -> Any:
    return from_ms(ms)


async def column(engine: Engine, run_id: str, name: str) -> Any:
    """A column of the run's row, read as the engine stores it."""
    found = await engine.storage._read(  # type: ignore[attr-defined]
        rows(f"SELECT {name} FROM runs WHERE id = :id", id=run_id)
    )
    return found[0][name]


# -- debounce -------------------------------------------------------------------------------


async def test_fifty_trailing_triggers_collapse_into_one_run_with_the_last_data(
    timed: Engine, clock: StepClock
) -> None:
    debounce = Debounce("user-42", "5s", mode="trailing")
    first = await timed.trigger("db-echo", 0, debounce=debounce, tags=["t0"])
    assert first.status is RunStatus.DELAYED and not first.is_cached
    assert first.delayed_until == at(clock.now_ms() + 5_000)
    runs = [first]
    for i in range(1, 50):
        clock.advance(1_000)  # each trigger comes within the delay of the one before
        runs.append(
            await timed.trigger(
                "db-echo", i, debounce=debounce, tags=[f"t{i}"], metadata={"i": i}, max_attempts=3
            )
        )
    assert {r.id for r in runs} == {first.id}
    assert [r.is_cached for r in runs] == [False] + [True] * 49
    run = await timed.runs.retrieve(first.id)
    assert run.status is RunStatus.DELAYED
    assert (run.payload, run.tags, run.metadata) == (49, ["t49"], {"i": 49})
    assert await column(timed, run.id, "max_attempts") == 3
    assert run.delayed_until == at(clock.now_ms() + 5_000)  # the last trigger's delay
    assert await timed.runs.ids(task="db-echo") == [first.id]

    clock.advance(4_999)
    assert await timed.storage.fire_due_timers(100) == 0
    clock.advance(1)
    assert await timed.storage.fire_due_timers(100) == 1
    assert (await timed.runs.retrieve(run.id)).status is RunStatus.QUEUED
    after = await timed.trigger("db-echo", 50, debounce=debounce)  # the window is over
    assert after.id != run.id and not after.is_cached and after.status is RunStatus.DELAYED
    assert (await timed.runs.retrieve(run.id)).payload == 49


async def test_leading_triggers_keep_the_first_data_and_push_the_start(
    timed: Engine, clock: StepClock
) -> None:
    debounce = Debounce("user-42", timedelta(seconds=5))  # leading: Trigger.dev's default
    runs = []
    for i in range(50):
        runs.append(await timed.trigger("db-echo", i, debounce=debounce, tags=[f"t{i}"]))
        clock.advance(2_000)
    assert {r.id for r in runs} == {runs[0].id}
    run = await timed.runs.retrieve(runs[0].id)
    assert (run.payload, run.tags) == (0, ["t0"])
    assert run.delayed_until == at(clock.now_ms() - 2_000 + 5_000)
    assert runs[-1].payload == 0 and runs[-1].is_cached


async def test_debounce_keys_are_per_task_and_key(timed: Engine, clock: StepClock) -> None:
    made = {
        (task_id, key): await timed.trigger(task_id, key, debounce=Debounce(key, "5s"))
        for task_id in ("db-echo", "db-other")
        for key in ("a", "b")
    }
    assert len({run.id for run in made.values()}) == 4
    clock.advance(1_000)
    for (task_id, key), run in made.items():
        again = await timed.trigger(task_id, "again", debounce=Debounce(key, "5s"))
        assert again.id == run.id and again.is_cached
    plain = await timed.trigger("db-echo", "plain")  # a trigger without a key joins nothing
    assert plain.id not in {run.id for run in made.values()}


async def test_max_delay_bounds_the_pushing_then_a_new_run_takes_the_triggers(
    timed: Engine, clock: StepClock
) -> None:
    debounce = Debounce("k", "5s", mode="trailing", max_delay="12s")
    start = clock.now_ms()
    first = await timed.trigger("db-echo", 0, debounce=debounce)
    clock.advance(4_000)
    assert (await timed.trigger("db-echo", 4, debounce=debounce)).id == first.id
    clock.advance(4_000)  # 8 s + 5 s would start it 13 s after its first trigger: past 12 s
    second = await timed.trigger("db-echo", 8, debounce=debounce)
    assert second.id != first.id and not second.is_cached
    kept = await timed.runs.retrieve(first.id)
    assert (kept.payload, kept.delayed_until) == (4, at(start + 9_000))  # due as it was
    clock.advance(500)
    assert (await timed.trigger("db-echo", 8.5, debounce=debounce)).id == second.id
    assert (await timed.runs.retrieve(first.id)).payload == 4  # closed to joins
    assert (await timed.runs.retrieve(second.id)).payload == 8.5


async def test_an_idempotency_key_is_looked_up_before_the_debounce_key(
    timed: Engine, clock: StepClock
) -> None:
    debounce = Debounce("k", "5s", mode="trailing")
    first = await timed.trigger("db-echo", 1, debounce=debounce, idempotency_key="once")
    due = first.delayed_until
    clock.advance(1_000)
    repeat = await timed.trigger("db-echo", 2, debounce=debounce, idempotency_key="once")
    assert repeat.id == first.id and repeat.is_cached
    assert (repeat.payload, repeat.delayed_until) == (1, due)  # a repeat is no new trigger
    joined = await timed.trigger("db-echo", 3, debounce=debounce, idempotency_key="other")
    assert joined.id == first.id and joined.payload == 3
    assert joined.delayed_until == at(clock.now_ms() + 5_000)
    assert joined.idempotency_key == "once"  # the joining trigger's key is not recorded


async def test_a_time_to_live_moves_with_the_pushed_start(timed: Engine, clock: StepClock) -> None:
    debounce = Debounce("k", "5s")
    run = await timed.trigger("db-echo", 1, debounce=debounce, ttl="1h")
    clock.advance(3_000)
    await timed.trigger("db-echo", 2, debounce=debounce, ttl="1h")
    assert await column(timed, run.id, "available_at") == clock.now_ms() + 5_000
    assert await column(timed, run.id, "expires_at") == clock.now_ms() + 5_000 + 3_600_000


async def test_bad_debounces_are_refused_and_make_nothing(engine: Engine) -> None:
    with pytest.raises(ValidationError, match="non-empty"):
        Debounce("", "5s")
    with pytest.raises(ValidationError, match="513 characters long; at most 512"):
        Debounce("k" * 513, "5s")
    with pytest.raises(ValidationError, match="between 1s and 30d"):
        Debounce("k", timedelta(milliseconds=500))
    with pytest.raises(ValidationError, match="between 1s and 30d"):
        Debounce("k", "31d")
    with pytest.raises(ValidationError, match="debounce delay: invalid duration 'soon'"):
        Debounce("k", "soon")
    with pytest.raises(ValidationError, match=r"max_delay \(10s\) must be longer than its delay"):
        Debounce("k", "10s", max_delay="10s")
    with pytest.raises(ValidationError, match="'leading' or 'trailing'"):
        Debounce("k", "5s", mode=cast(Any, "sideways"))
    with pytest.raises(ValidationError, match="debounce and delay do not combine"):
        await engine.trigger("db-echo", 1, debounce=Debounce("k", "5s"), delay="1m")
    with pytest.raises(ValidationError, match="must be a Debounce"):
        await engine.trigger("db-echo", 1, debounce=cast(Any, {"key": "k", "delay": "5s"}))
    assert await engine.runs.ids(task="db-echo") == []


async def test_concurrent_triggers_of_one_key_make_one_run(db_url: str) -> None:
    """Two engines (as two processes), 50 triggers at once: without the key's lock, two
    PostgreSQL transactions could both find no run and both make one."""
    async with Engine(db_url) as one, Engine(db_url) as two:
        debounce = Debounce("burst", "1h", mode="trailing")
        runs = await asyncio.gather(
            *((one if i % 2 else two).trigger("db-echo", i, debounce=debounce) for i in range(50))
        )
        assert len({run.id for run in runs}) == 1
        assert sum(not run.is_cached for run in runs) == 1
        assert await one.runs.ids(task="db-echo") == [runs[0].id]


@pytest.mark.parametrize(("mode", "expected"), [("trailing", 49), ("leading", 0)])
async def test_a_worker_runs_a_debounced_run_once(
    engine: Engine, start_worker: StartWorker, mode: str, expected: int
) -> None:
    RAN.clear()
    await start_worker([counted])
    debounce = Debounce("once", "1s", mode=cast(Any, mode))
    runs = [await engine.trigger("db-count", i, debounce=debounce) for i in range(50)]
    assert len({run.id for run in runs}) == 1
    done = await engine.wait_for_run(runs[0].id, timeout=30)
    assert done.output == expected
    assert RAN == [expected]
    assert await engine.runs.ids(task="db-count") == [done.id]


async def test_a_child_run_cannot_be_debounced(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker([parent, echo])
    run = await engine.trigger("db-parent", 1)
    with pytest.raises(RunFailedError):
        await engine.wait_for_run(run.id, timeout=30)
    failed = await engine.runs.retrieve(run.id)
    assert failed.error is not None
    assert "debounce is for triggers from outside a run" in failed.error.message
    assert await engine.runs.ids(task="db-echo") == []


# -- batch trigger ---------------------------------------------------------------------------


async def test_a_batch_of_1000_is_one_transaction_with_the_runs_in_order(engine: Engine) -> None:
    storage = cast(Any, engine.storage)
    commits = storage.commits
    runs = await engine.batch_trigger("db-echo", [{"payload": {"i": i}} for i in range(1000)])
    assert storage.commits - commits == 1
    assert [run.payload for run in runs] == [{"i": i} for i in range(1000)]
    ids = [run.id for run in runs]
    assert ids == sorted(set(ids))  # new, distinct, and numbered in the order of the items
    assert all(run.status is RunStatus.QUEUED and not run.is_cached for run in runs)
    assert sorted(await engine.runs.ids(task="db-echo")) == ids
    assert [e.kind for e in await engine.runs.timeline(ids[-1])] == ["created"]
    assert await engine.batch_trigger("db-echo", []) == []
    assert storage.commits - commits == 1


async def test_a_batch_is_all_or_nothing_when_its_process_dies_before_the_commit(
    db_url: str, tmp_path: Path
) -> None:
    """The CLI makes 1,000 runs in a process that exits at once (as kill -9 would) just
    before the transaction commits: not one of them exists; without the crash, all do."""
    async with Engine(db_url) as engine:
        await engine.storage.register_tasks([TaskInfo("db-crash", None)])
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"payload": i}) + "\n" for i in range(1000)))
    cli = [str(Path(sys.executable).parent / "waitpoint"), "trigger", "db-crash"]
    command = [*cli, "--file", str(items), "--database", db_url]
    env = {k: v for k, v in os.environ.items() if k != "WAITPOINT_CRASH_AT"}
    crashed = await asyncio.to_thread(
        subprocess.run,
        command,
        env={**env, "WAITPOINT_CRASH_AT": "commit.before"},
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    async with Engine(db_url) as engine:
        assert await engine.runs.ids(task="db-crash") == []
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    async with Engine(db_url) as engine:
        assert sorted(await engine.runs.ids(task="db-crash")) == printed


async def test_a_bad_item_refuses_the_whole_batch_naming_its_index(engine: Engine) -> None:
    typed_items: list[BatchItem] = [{"payload": {"n": i}} for i in range(999)]
    with pytest.raises(ValidationError, match="item 999: invalid payload for task 'db-typed'"):
        await engine.batch_trigger("db-typed", [*typed_items, {"payload": {"n": "many"}}])
    refusals: list[tuple[list[Any], str]] = [
        (
            [{"payload": 1}] * 5 + [{"payload": 1, "options": {"tagz": ["x"]}}],
            "item 5: unknown option 'tagz'",
        ),
        ([{"payload": 1}, {"payload": 1}, {"paylod": 1}], "item 2: unknown key 'paylod'"),
        ([1, 2], "item 0: an item is"),
        ([{"options": {"tags": [f"t{i}" for i in range(11)]}}], "item 0: too many tags"),
        (
            [{}, {"options": {"debounce": Debounce("k", "5s"), "delay": "1m"}}],
            "item 1: debounce and delay",
        ),
        ([{"payload": 1}] * 1001, "too many items: 1001 given, at most 1000"),
        ([{"payload": float("nan")}], "item 0: the payload is not JSON-serialisable"),
    ]
    for items, message in refusals:
        with pytest.raises(ValidationError, match=message):
            await engine.batch_trigger("db-echo", items)
    with pytest.raises(TaskNotFoundError, match="no-such-task"):
        await engine.batch_trigger("db-echo", [{"payload": 1}, {"task": "no-such-task"}])
    with pytest.raises(ValidationError, match="item 0: which task"):
        await engine.batch_trigger(None, [{"payload": 1}])
    assert await engine.runs.ids(task=["db-echo", "db-typed"]) == []


async def test_batch_items_find_runs_by_idempotency_and_debounce_keys(engine: Engine) -> None:
    before = await engine.trigger("db-echo", 0, idempotency_key="k0")
    trailing = Debounce("d", "1h", mode="trailing")
    runs = await engine.batch_trigger(
        "db-echo",
        [
            {"payload": 1, "options": {"idempotency_key": "k0"}},
            {"payload": 2},
            {"payload": 3, "options": {"idempotency_key": "k1"}},
            {"payload": 4, "options": {"idempotency_key": "k1"}},
            {"payload": 5, "options": {"debounce": trailing}},
            {"payload": 6, "options": {"debounce": trailing, "tags": ["last"]}},
            {"payload": 7, "task": "db-other", "options": {"tags": ["other"]}},
        ],
    )
    ids = [run.id for run in runs]
    assert ids[0] == before.id and ids[3] == ids[2] and ids[5] == ids[4]
    made = [ids[1], ids[2], ids[4], ids[6]]
    assert made == sorted(set(made)) and before.id < made[0]  # numbered in item order
    assert [run.is_cached for run in runs] == [True, False, False, True, False, True, False]
    assert [run.payload for run in runs] == [0, 2, 3, 3, 6, 6, 7]  # as they are at the end
    assert runs[4].tags == ["last"] and runs[4].status is RunStatus.DELAYED
    assert (runs[6].task_identifier, runs[6].tags) == ("db-other", ["other"])
    assert len(await engine.runs.ids(task=["db-echo", "db-other"])) == 5


async def test_debounce_and_batches_work_through_pgbouncer(pgbouncer_url: str) -> None:
    """In transaction mode (no prepared statement or session kept): the key's lock is the
    transaction's, and a batch's INSERT runs once per item in one transaction."""
    async with Engine(pgbouncer_url) as one, Engine(pgbouncer_url) as two:
        debounce = Debounce("pooled", "1h", mode="trailing")
        runs = await asyncio.gather(
            *((one if i % 2 else two).trigger("db-echo", i, debounce=debounce) for i in range(20))
        )
        assert len({run.id for run in runs}) == 1
        made = await one.batch_trigger("db-echo", [{"payload": i} for i in range(300)])
        assert [run.payload for run in made] == list(range(300))
        assert len(await two.runs.ids(task="db-echo")) == 301


# -- REST ------------------------------------------------------------------------------------


async def test_rest_triggers_accept_trigger_dev_s_debounce(engine: Engine) -> None:
    async with api_client(engine) as api:

        async def trigger(payload: Any, **options: Any) -> Any:
            body = {"payload": payload, "options": options}
            return await api.post("/api/v1/tasks/db-echo/trigger", json=body, headers=AUTH)

        leading = [await trigger(i, debounce={"key": "k", "delay": "1h"}) for i in (1, 2)]
        assert [r.status_code for r in leading] == [200, 200]
        assert [r.json()["isCached"] for r in leading] == [False, True]
        assert leading[0].json()["id"] == leading[1].json()["id"]
        assert (await engine.runs.retrieve(leading[0].json()["id"])).payload == 1
        trailing = {"key": "t", "delay": "1h", "mode": "trailing", "maxDelay": "2h"}
        last = [(await trigger(i, debounce=trailing)).json()["id"] for i in (1, 2)]
        assert last[0] == last[1] and (await engine.runs.retrieve(last[0])).payload == 2

        refusals = [
            ({"debounce": {"key": "", "delay": "5s"}}, "debounce.key"),
            ({"debounce": {"key": "k", "delay": "0s"}}, "debounce delay"),
            ({"debounce": {"key": "k", "delay": "5s", "mode": "sideways"}}, "debounce.mode"),
            ({"debounce": {"key": "k", "delay": "5s", "maxDelay": "5s"}}, "longer than its delay"),
            ({"debounce": {"key": "k", "delay": "5s"}, "delay": "1m"}, "do not combine"),
            ({"debounce": {"delay": "5s"}}, "debounce.key"),
        ]
        for options, message in refusals:
            response = await trigger(9, **options)
            assert response.status_code == 422, response.text
            assert message in response.json()["error"]
        assert len(await engine.runs.ids(task="db-echo")) == 2


async def test_rest_batch_makes_the_runs_in_one_call(engine: Engine) -> None:
    async with api_client(engine) as api:
        items = [
            {"task": "db-echo", "payload": {"i": 0}},
            {"task": "db-other", "payload": "x", "options": {"tags": ["b"], "delay": "1h"}},
            {
                "task": "db-echo",
                "payload": '{"i": 2}',
                "options": {"payloadType": "application/json", "idempotencyKey": "k"},
            },
            {"task": "db-echo", "payload": 3, "options": {"idempotencyKey": "k"}},
        ]
        headers = {**AUTH, "x-trigger-request-idempotency-key": "batch-1"}
        response = await api.post("/api/v1/tasks/batch", json={"items": items}, headers=headers)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["id"].startswith("batch_") and reply["isCached"] is False
        runs = reply["runs"]
        assert [r["taskIdentifier"] for r in runs] == ["db-echo", "db-other", "db-echo", "db-echo"]
        assert [r["isCached"] for r in runs] == [False, False, False, True]
        assert runs[2]["id"] == runs[3]["id"] and runs[2]["idempotencyKey"] == "k"
        assert "idempotencyKey" not in runs[0]  # absent, never null, for the SDK
        assert [r["payload"] for r in runs] == [{"i": 0}, "x", {"i": 2}, {"i": 2}]
        stored = await engine.runs.retrieve(runs[1]["id"])
        assert (stored.status, stored.tags) == (RunStatus.DELAYED, ["b"])
        again = await api.post("/api/v1/tasks/batch", json={"items": items}, headers=headers)
        assert again.json() == reply  # a retried request gets the same answer, nothing more
        assert len(await engine.runs.ids(task=["db-echo", "db-other"])) == 3

        refusals: list[tuple[list[Any], int, str]] = [
            ([{"task": "db-echo"}] * 1001, 422, "at most 1000"),
            (
                [{"task": "db-echo"}, {"task": "db-echo", "options": {"tags": ["a"] * 11}}],
                422,
                "item 1: too many tags",
            ),
            (
                [{"task": "db-echo"}, {"task": "db-typed", "payload": {"n": "x"}}],
                422,
                "item 1: invalid payload",
            ),
            (
                [
                    {
                        "task": "db-echo",
                        "payload": "{",
                        "options": {"payloadType": "application/json"},
                    }
                ],
                422,
                "item 0: payload: not valid JSON",
            ),
            (
                [{"task": "db-echo", "options": {"queue": {"name": "q"}}}],
                422,
                "item 0: options not supported yet: queue",
            ),
            ([{"task": "db-echo"}, {"task": "nope"}], 404, "Task not found"),
            ([{"payload": 1}], 422, "items.0.task"),
        ]
        for bad, status, message in refusals:
            response = await api.post("/api/v1/tasks/batch", json={"items": bad}, headers=AUTH)
            assert response.status_code == status, response.text
            assert message in response.json()["error"], response.text
        assert len(await engine.runs.ids(task=["db-echo", "db-other", "db-typed"])) == 3


# -- CLI -------------------------------------------------------------------------------------


def test_cli_triggers_a_file_of_runs_and_debounces(db_url: str, tmp_path: Path) -> None:
    register(db_url, "db-file")
    path = tmp_path / "items.jsonl"
    lines = [
        {"payload": {"n": 1}},
        {"payload": {"n": 2}, "options": {"tags": ["own"], "idempotencyKey": "k"}},
        {"payload": {"n": 3}, "options": {"debounce": {"key": "d", "delay": "1h"}}},
    ]
    path.write_text(
        "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2])
    )
    result = invoke(db_url, "trigger", "db-file", "--file", str(path), "--tag", "shared")
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 3 and ids == sorted(ids)

    async def look() -> list[Any]:
        async with Engine(db_url) as engine:
            return [await engine.runs.retrieve(run_id) for run_id in ids]

    runs = asyncio.run(look())
    assert [r.payload for r in runs] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [r.tags for r in runs] == [["shared"], ["own"], ["shared"]]  # a line's own win
    assert runs[2].status is RunStatus.DELAYED

    again = runner.invoke(
        app,
        ["trigger", "db-file", "--file", "-", "--json", "--database", db_url],
        input=json.dumps(lines[1]) + "\n" + json.dumps(lines[2]) + "\n",
    )
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)["data"]
    assert [(r["id"], r["isCached"]) for r in data] == [(ids[1], True), (ids[2], True)]

    debounced = [
        invoke(
            db_url,
            "trigger",
            "db-file",
            "--payload",
            str(n),
            "--debounce",
            "user-1",
            "--debounce-delay",
            "1h",
            "--debounce-mode",
            "trailing",
            "--json",
        )
        for n in (1, 2)
    ]
    first, second = (json.loads(r.stdout) for r in debounced)
    assert first["id"] == second["id"] and second["payload"] == 2


@pytest.mark.parametrize(
    ("content", "args", "fragments"),
    [
        (
            '{"payload": 1}\n{"payload": 2, "options": {"tagz": ["x"]}}\n',
            (),
            ("line 2", "unknown option 'tagz'"),
        ),
        ('{"payload": 1}\n\n{"order": 1}\n', (), ("line 3", "unknown key 'order'")),
        ("[1, 2]\n", (), ("line 1", '"payload"')),
        ("{nope\n", (), ("line 1", "not valid JSON")),
        (
            '{"payload": 1}\n' + json.dumps({"options": {"tags": list("abcdefghijk")}}),
            (),
            ("line 2", "too many tags"),
        ),
        ('{"options": {"delay": 5}}\n', (), ("line 1", "options.delay")),
        ("\n\n", (), ("holds no runs",)),
        ('{"payload": 1}\n', ("--payload", "1"), ("--payload applies to one run",)),
        ('{"payload": 1}\n', ("--wait",), ("--wait applies to one run",)),
        ('{"payload": 1}\n', ("--debounce-delay", "5s"), ("--debounce-delay applies",)),
    ],
)
def test_cli_refuses_a_bad_file_naming_the_line_and_makes_nothing(
    sqlite_url: str, tmp_path: Path, content: str, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    register(sqlite_url, "db-file")
    path = tmp_path / "items.jsonl"
    path.write_text(content)
    result = invoke(sqlite_url, "trigger", "db-file", "--file", str(path), *args)
    assert_one_line_error(result, *fragments)

    async def count() -> int:
        async with Engine(sqlite_url) as engine:
            return len(await engine.runs.ids(task="db-file"))

    assert asyncio.run(count()) == 0


def test_cli_debounce_options_go_together(sqlite_url: str) -> None:
    register(sqlite_url, "db-file")
    lone = invoke(sqlite_url, "trigger", "db-file", "--debounce-delay", "5s")
    assert_one_line_error(lone, "--debounce-delay needs --debounce KEY")
    keyless = invoke(sqlite_url, "trigger", "db-file", "--debounce", "k")
    assert_one_line_error(keyless, "--debounce needs --debounce-delay")
    mode = invoke(
        sqlite_url,
        "trigger",
        "db-file",
        "--debounce",
        "k",
        "--debounce-delay",
        "5s",
        "--debounce-mode",
        "middle",
    )
    assert_one_line_error(mode, "--debounce-mode must be leading or trailing")


# -- over HTTP -------------------------------------------------------------------------------


async def test_the_remote_engine_debounces_and_batches_through_the_api(server: str) -> None:  # noqa: F811
    async with Engine(server, api_key=KEY) as engine:
        debounce = Debounce("remote", "1h", mode="trailing", max_delay="2h")
        first = await engine.trigger("remote-flow", {"n": 1}, debounce=debounce)
        second = await engine.trigger("remote-flow", {"n": 2}, debounce=debounce)
        assert second.id == first.id and second.is_cached and not first.is_cached
        assert second.payload == {"n": 2} and second.status is RunStatus.DELAYED
        runs = await engine.batch_trigger(
            "remote-flow",
            [
                {"payload": {"n": 3}, "options": {"delay": "1h", "idempotency_key": "r"}},
                {"payload": {"n": 4}, "options": {"delay": "1h", "idempotency_key": "r"}},
                {"payload": {"n": 5}, "options": {"debounce": debounce}},
            ],
        )
        assert [run.payload for run in runs] == [{"n": 3}, {"n": 3}, {"n": 5}]
        assert [run.is_cached for run in runs] == [False, True, True]
        assert runs[0].id == runs[1].id and runs[2].id == first.id
        with pytest.raises(ValidationError, match="item 1: too many tags"):
            await engine.batch_trigger(
                "remote-flow",
                [{"payload": {}}, {"options": {"tags": [f"t{i}" for i in range(11)]}}],
            )
