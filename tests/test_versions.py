"""Task versions (issue 16, item 2): a run records the version of its first claim, a worker
claims only runs of the versions it serves (or of none), ``runs migrate`` moves a run to
another version on purpose, and ``patched()`` keeps a migrated run on its old branch.

Workers run in-process on real databases (both backends); the claim's rules are also checked
on the storage directly, where nothing races.
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
    RunNotFoundError,
    RunStateError,
    RunStatus,
    Settings,
    TaskDefinition,
    ValidationError,
    Worker,
    create_token,
    patched,
    step,
    task,
    wait_for_token,
)
from engine.models import TaskInfo
from engine.storage import NewWorker

from .api.conftest import AUTH, api_client
from .conftest import wait_for_status
from .test_cli import assert_one_line_error, invoke, ok_json, register
from .test_postgres_backend import until_following
from .test_remote import KEY, server  # noqa: F401 - the fixture

TASK = "versioned-pricing"
LEASE_MS = 60_000
ran: Counter[str] = Counter()


def _price(name: str, value: int) -> Callable[[], Awaitable[int]]:
    async def body() -> int:
        ran[name] += 1
        return value

    return body


async def v1(payload: Any) -> dict[str, Any]:
    """The code of version v1: the old price, then a wait for approval."""
    price = await step("price", _price("price", 10))
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


async def v2(payload: Any) -> dict[str, Any]:
    """Version v2: new runs take the new price; a run that priced on v1 keeps its price."""
    if await patched("new-pricing"):
        price = await step("price-v2", _price("price-v2", 20))
    else:
        price = await step("price", _price("price", 10))
    approval = await wait_for_token(await create_token(timeout="1h", tags=[payload]))
    return {"price": price, "approved": approval.output}


async def quick(payload: Any) -> str:
    return "done"


@asynccontextmanager
async def worker_running(
    engine: Engine,
    fn: Callable[[Any], Awaitable[Any]],
    version: str | None,
    *,
    poll_seconds: float = 0.05,
) -> AsyncIterator[Worker]:
    """A worker of ``version`` running ``fn`` as the task, stopped on exit."""
    definition = TaskDefinition(id=TASK, fn=fn)
    worker = Worker(engine, {TASK: definition}, poll_seconds=poll_seconds, version=version)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 5)
    try:
        yield worker
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


async def queued(engine: Engine, task_id: str = TASK) -> str:
    """A QUEUED run of ``task_id`` that recorded no version (no worker serves the task)."""
    if task_id not in {info.id for info in await engine.storage.list_tasks(fresh=True)}:
        await engine.storage.register_tasks([TaskInfo(task_id)])
    return (await engine.trigger(task_id, None)).id


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    ran.clear()


async def test_a_run_started_on_v1_resumes_on_v2_once_migrated_and_keeps_its_old_branch(
    engine: Engine,
) -> None:
    async with worker_running(engine, v1, "v1"):
        old = await parked(engine, "old")
    assert (await engine.runs.retrieve(old)).version == "v1"
    async with worker_running(engine, v2, "v2"):
        await approve(engine, "old")  # QUEUED again, of v1: not for this worker
        new = await parked(engine, "new")  # claimed by a claim that saw the old run due
        await approve(engine, "new")
        done_new = await engine.wait_for_run(new, timeout=20)
        waiting = await engine.runs.retrieve(old)
        assert waiting.status is RunStatus.QUEUED
        unserved = await engine.workers.unserved(waiting)
        assert unserved is not None
        assert unserved.startswith("waiting for a worker of version v1")
        assert f"task {TASK!r} serve v2" in unserved
        migrated = await engine.runs.migrate(old, to="v2")
        assert migrated.version == "v2"
        done_old = await engine.wait_for_run(old, timeout=20)
    assert done_old.output == {"price": 10, "approved": True}  # the old branch
    assert done_new.output == {"price": 20, "approved": True}  # the new one
    assert done_new.version == "v2"
    assert ran == {"price": 1, "price-v2": 1}  # no journaled step ran again
    timeline = await engine.runs.timeline(old)
    [moved] = [entry for entry in timeline if entry.kind == "migrated"]
    assert moved.detail == {"from": "v1", "to": "v2"}
    assert not any((entry.key or "").startswith("patch:") for entry in timeline)


async def test_a_claim_takes_runs_of_its_version_or_of_none_and_records_its_own(
    engine: Engine,
) -> None:
    storage = engine.storage
    run_id = await queued(engine, "plain")

    async def claim(versions: dict[str, str] | None) -> list[str]:
        claimed = await storage.claim_runs("w", 10, LEASE_MS, ["plain"], versions)
        for run in claimed:
            await storage.release_run(run.id, run.epoch)
        return [run.id for run in claimed]

    assert await claim(None) == [run_id]  # unversioned: takes it, records nothing
    assert (await engine.runs.retrieve(run_id)).version is None
    assert await claim({"plain": "v1"}) == [run_id]  # the first versioned claim records v1
    assert (await engine.runs.retrieve(run_id)).version == "v1"
    assert await storage.has_due_runs(["plain"], {"plain": "v2"}) is False
    assert await claim({"plain": "v2"}) == []
    assert await storage.has_due_runs(["plain"]) is False
    assert await claim(None) == []  # an unversioned worker takes only runs of none
    assert await storage.has_due_runs(["plain"], {"plain": "v1"}) is True
    assert await claim({"plain": "v1"}) == [run_id]
    assert (await engine.runs.retrieve(run_id)).version == "v1"


@pytest.mark.parametrize("limit", [None, 5], ids=["unlimited", "limited"])
async def test_a_worker_whose_tasks_have_different_versions_claims_each_at_its_own(
    engine: Engine, limit: int | None
) -> None:
    """Both claims: in one statement, and counting a concurrency limit first (PostgreSQL;
    SQLite always counts)."""
    storage = engine.storage
    tasks = ["mixed-a", "mixed-b", "mixed-c"]
    await storage.register_tasks([TaskInfo(t, None, "mixed", limit) for t in tasks])
    a, b, c = [await queued(engine, task_id) for task_id in tasks]

    async def claim(versions: dict[str, str]) -> set[str]:
        claimed = await storage.claim_runs("w", 10, LEASE_MS, tasks, versions)
        for run in claimed:
            await storage.release_run(run.id, run.epoch)
        return {run.id for run in claimed}

    mine = {"mixed-a": "v1", "mixed-b": "v2"}  # mixed-c: no version
    assert await claim(mine) == {a, b, c}
    recorded = {i: (await engine.runs.retrieve(i)).version for i in (a, b, c)}
    assert recorded == {a: "v1", b: "v2", c: None}
    await storage.migrate_run(a, "v2")
    await storage.migrate_run(b, "v1")
    assert await claim(mine) == {c}
    assert await claim({"mixed-a": "v2", "mixed-b": "v1"}) == {a, b, c}


async def test_a_versioned_task_wins_over_the_worker_version_and_the_workers_say_so(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = TaskDefinition(id="pinned", fn=quick, version="2024-06-01")
    loose = TaskDefinition(id="loose", fn=quick)
    assert Worker(engine, {"loose": loose}).versions == {}
    monkeypatch.setenv("WAITPOINT_VERSION", "v42")
    monkeypatch.setattr(engine, "settings", Settings())
    assert Worker(engine, {"loose": loose}).versions == {"loose": "v42"}
    worker = Worker(engine, {"pinned": pinned, "loose": loose}, version="v43")
    assert worker.versions == {"pinned": "2024-06-01", "loose": "v43"}
    me = NewWorker("w-versioned", ["loose", "pinned"], 1, LEASE_MS, worker.versions)
    await engine.storage.register_tasks([pinned.info, loose.info], me)
    [listed] = await engine.workers.list()
    assert listed.versions == {"loose": "v43", "pinned": "2024-06-01"}
    served = await engine.workers.for_task("pinned")
    assert served.live_versions == {"w-versioned": "2024-06-01"}
    assert served.unserved_at("2024-06-01") is None
    assert served.unserved_at(None) is None  # a run of none: any worker takes it
    assert served.unserved_at("2024-05-01") == (
        "waiting for a worker of version 2024-05-01"
        " (the live workers of task 'pinned' serve 2024-06-01)"
    )


@pytest.mark.parametrize("bad", ["", "a b", "v\n1", "x" * 65, 42])
def test_a_version_is_a_short_printable_word(bad: Any) -> None:
    with pytest.raises(ValidationError, match="version must be a version"):
        TaskDefinition(id="bad", fn=quick, version=bad)
    with pytest.raises(ValidationError, match="version must be a version"):

        @task("bad-version", version=bad)
        async def bad_version(payload: Any) -> None: ...

    with pytest.raises(ValueError, match="version"):  # pydantic's: WAITPOINT_VERSION
        Settings(version=bad)


async def test_runs_are_listed_by_version(engine: Engine) -> None:
    first, second, other = [await queued(engine) for _ in range(3)]
    await engine.runs.migrate(first, to="v7")
    await engine.runs.migrate(second, to="v7")
    await engine.runs.migrate(other, to="v8")
    assert [run.id for run in (await engine.runs.list(version="v7")).data] == [second, first]
    assert [run.id for run in (await engine.runs.list(version="v8")).data] == [other]
    assert (await engine.runs.list(version="v9")).data == []
    with pytest.raises(ValidationError, match="version must be a version"):
        await engine.runs.list(version="v 7")


async def test_migrating_refuses_what_it_cannot_do_and_changes_nothing(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError):
        await engine.runs.migrate("run_nope", to="v2")
    run_id = await queued(engine)
    for bad in ("", "v 2", "v" * 65):
        with pytest.raises(ValidationError, match=r"^to must be a version"):
            await engine.runs.migrate(run_id, to=bad)
    await engine.runs.migrate(run_id, to="v2")
    await engine.runs.migrate(run_id, to="v2")  # already there: nothing to record
    await engine.runs.cancel(run_id)
    with pytest.raises(RunStateError, match=r"already finished \(CANCELED\)"):
        await engine.runs.migrate(run_id, to="v3")
    assert (await engine.runs.retrieve(run_id)).version == "v2"
    events = [entry.kind for entry in await engine.runs.timeline(run_id)]
    assert events.count("migrated") == 1


async def test_a_migrated_queued_run_wakes_the_worker_of_its_new_version(
    engine: Engine, db_url: str
) -> None:
    """The migration tells the workers (PostgreSQL: the queued run's notification, which no
    status change sent): a worker that would otherwise poll only once a minute claims it."""
    run_id = await queued(engine)
    await engine.runs.migrate(run_id, to="v41")
    async with worker_running(engine, quick, "v42", poll_seconds=60):
        if db_url.startswith("postgres"):
            await until_following(engine.storage)
        # claimed after the worker's first claim, which passed the v41 run over: from now
        # on the worker sleeps until it is told of work
        helper = await engine.trigger(TASK, None)
        await engine.wait_for_run(helper.id, timeout=20)
        assert (await engine.runs.retrieve(run_id)).status is RunStatus.QUEUED
        await engine.runs.migrate(run_id, to="v42")
        done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output == "done" and done.version == "v42"


async def test_a_migration_is_told_like_a_run_queued(postgres_url: str) -> None:
    """PostgreSQL: the notification of a migrated QUEUED run is the one its trigger sent
    (``q<number>:<task>``, the number a hash of its id), so the same worker's turn."""
    async with Engine(postgres_url) as engine, Engine(postgres_url) as other:
        heard: list[tuple[str | None, int | None]] = []
        other.storage.follow_work([TASK], lambda task_id, n: heard.append((task_id, n)))
        await until_following(other.storage)
        heard.clear()  # the listener's start tells everything, unnumbered
        run_id = await queued(engine)
        await _heard(heard, 1)
        await engine.runs.migrate(run_id, to="v2")
        await _heard(heard, 2)
        assert heard[1] == heard[0] and heard[0][0] == TASK


async def _heard(heard: list[Any], count: int) -> None:
    for _ in range(500):
        if len(heard) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"heard {heard}, expected {count} notifications")


async def test_the_api_migrates_a_run_and_lists_runs_by_version(engine: Engine) -> None:
    run_id = await queued(engine)
    migrate = f"/api/v1/runs/{run_id}/migrate"
    async with api_client(engine) as api:
        answer = await api.post(migrate, json={"version": "v5"}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == "v5" and answer.json()["isQueued"] is True
        listed = await api.get("/api/v1/runs", params={"filter[version]": "v5"}, headers=AUTH)
        assert [run["id"] for run in listed.json()["data"]] == [run_id]
        bad = await api.get("/api/v1/runs", params={"filter[version]": " "}, headers=AUTH)
        assert bad.status_code == 400 and "filter[version]" in bad.text
        for body in ({}, {"version": "a b"}, {"version": "v6", "extra": 1}):
            refused = await api.post(migrate, json=body, headers=AUTH)
            assert refused.status_code == 422, (body, refused.text)
        unknown = await api.post(
            "/api/v1/runs/run_nope/migrate", json={"version": "v6"}, headers=AUTH
        )
        assert unknown.status_code == 404
        await engine.runs.cancel(run_id)
        finished = await api.post(migrate, json={"version": "v6"}, headers=AUTH)
        assert finished.status_code == 409 and "already finished" in finished.json()["error"]
    assert (await engine.runs.retrieve(run_id)).version == "v5"


async def test_the_http_client_migrates_and_lists_by_version(server: str) -> None:  # noqa: F811
    """Over the REST API: the run waits on its token, is migrated to a version no live worker
    serves, and once its token completes it stays QUEUED, saying which version it waits for."""
    async with Engine(server, api_key=KEY) as engine:
        run = await engine.trigger("remote-flow", {"n": 1})
        await wait_for_status(engine, run.id, "WAITING")
        moved = await engine.runs.migrate(run.id, to="v2")
        assert moved.version == "v2" and moved.status is RunStatus.WAITING
        assert [r.id for r in (await engine.runs.list(version="v2")).data] == [run.id]
        with pytest.raises(RunNotFoundError):
            await engine.runs.migrate("run_nope", to="v2")
        [token] = (await engine.tokens.list(tags="remote", status="WAITING")).data
        await engine.tokens.complete(token.id, {"ok": True})
        await wait_for_status(engine, run.id, "QUEUED")
        unserved = await engine.workers.unserved(await engine.runs.retrieve(run.id))
        assert unserved == (
            "waiting for a worker of version v2"
            " (the live workers of task 'remote-flow' serve no version)"
        )


def test_the_commands_migrate_a_run_and_list_runs_by_version(db_url: str) -> None:
    register(db_url, "cli-versioned")
    first = ok_json(db_url, "trigger", "cli-versioned")["id"]
    second = ok_json(db_url, "trigger", "cli-versioned")["id"]
    migrated = invoke(db_url, "runs", "migrate", first, "--to", "v9", "--json")
    assert migrated.exit_code == 0, migrated.output
    assert '"version":"v9"' in migrated.stdout
    assert "note: no live worker serves task 'cli-versioned'" in migrated.stderr
    listed = ok_json(db_url, "runs", "list", "--version", "v9")
    assert [run["id"] for run in listed["data"]] == [first]
    everything = ok_json(db_url, "runs", "list")
    assert {run["id"] for run in everything["data"]} == {first, second}
    timeline = invoke(db_url, "runs", "timeline", first)
    assert "version (none) -> v9" in timeline.stdout
    assert_one_line_error(invoke(db_url, "runs", "migrate", first, "--to", "v 9"), "--to must be")
    assert_one_line_error(invoke(db_url, "runs", "migrate", "run_nope", "--to", "v9"), "run_nope")
    assert_one_line_error(
        invoke(db_url, "runs", "list", "--version", ""), "--version must be a version"
    )
