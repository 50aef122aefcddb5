"""Metrics: ``GET /metrics`` (Prometheus, ``WAITPOINT_METRICS=1``), ``engine.stats()`` and
``GET /api/v1/stats``, ``waitpoint stats``, on both backends.

The database's figures (runs, queues, tokens, approvals, workers) are read at each scrape;
the in-process ones (claims, attempts, waits, timers, rescues, transactions) are recorded
where they happen once an app with metrics on enabled them, and are compared here as deltas:
the figures of a process only ever grow.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from engine import (
    ConfigurationError,
    Engine,
    TaskDefinition,
    create_token,
    receive,
    receive_op,
    request_approval,
    sleep,
    wait_for_any,
    wait_for_token,
)
from engine import metrics as recording
from engine.api import create_app
from engine.cli import app as cli_app
from engine.cli_words import with_values
from engine.models import TaskInfo
from engine.storage import NewRun

from .api.conftest import BASE_URL, KEY, api_client, bearer, sign_jwt
from .conftest import StartWorker, wait_for_status
from .test_api_server import free_port
from .test_cli_environment import engine_command, environment
from .test_remote import dev_server

METRICS_TOKEN = "prometheus-scrapes-with-this-0123456789"
INTERRUPTIBLE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " from engine.cli import main; main()"
)
"""``waitpoint`` whose Ctrl-C works even where this test runs with SIGINT ignored (a
background job of a shell), which its children would inherit."""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def quick(payload: Any) -> Any:
    return payload


async def on_a_token(payload: Any) -> Any:
    token = await create_token(timeout="30m", tags=["metrics"])
    return (await wait_for_token(token)).output


async def asks(payload: Any) -> Any:
    decision = await request_approval("Ship it?", approvers=["ana@example.com"])
    return decision.approved


async def sleeps(payload: Any) -> None:
    await sleep("1s")


async def parent(payload: Any) -> Any:
    return (await QUICK.trigger_and_wait(payload)).output


async def receives(payload: Any) -> Any:
    return (await receive("go")).output


async def groups(payload: Any) -> Any:
    return (await wait_for_any([receive_op("stop")])).index


QUICK = TaskDefinition(id="m-quick", fn=quick)
WAITS = [
    TaskDefinition(id="m-sleep", fn=sleeps),
    TaskDefinition(id="m-parent", fn=parent),
    TaskDefinition(id="m-receive", fn=receives),
    TaskDefinition(id="m-group", fn=groups),
]
TOKEN = TaskDefinition(id="m-token", fn=on_a_token)
APPROVAL = TaskDefinition(id="m-approval", fn=asks)
IDLE = "m-idle"
"""A task no worker serves: its runs stay QUEUED."""


@pytest.fixture(autouse=True)
def metrics_off_afterwards() -> Iterator[None]:
    """An app with metrics on turns recording on for the whole process: off again after each
    test, so the rest of the suite runs the hot path as users without metrics do."""
    yield
    recording.disable()


def metrics_on(engine: Engine, **more: Any) -> Any:
    return engine.settings.model_copy(
        update={"metrics": True, "metrics_token": METRICS_TOKEN, **more}
    )


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process API with metrics on (and the metrics token set)."""
    async with api_client(engine, settings=metrics_on(engine)) as client:
        yield client


async def scrape(api: httpx.AsyncClient, credential: str = KEY) -> Samples:
    response = await api.get("/metrics", headers=bearer(credential))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


# -- the route --------------------------------------------------------------------------------


async def test_without_metrics_there_is_no_route(engine: Engine) -> None:
    async with api_client(engine) as plain:
        assert (await plain.get("/metrics", headers=bearer())).status_code == 404
        spec = (await plain.get("/openapi.json")).json()
        assert "/metrics" not in spec["paths"] and "/api/v1/stats" in spec["paths"]


async def test_metrics_take_the_secret_key_or_the_metrics_token(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    refused = [
        {},
        bearer("wrong"),
        bearer(METRICS_TOKEN + "x"),
        bearer(sign_jwt(["read:runs"])),  # a public access token opens nothing here
        {"Authorization": f"Basic {KEY}"},
    ]
    for headers in refused:
        response = await api.get("/metrics", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert "metrics token" in response.json()["error"]
    assert (await api.get("/metrics", headers=bearer(KEY))).status_code == 200
    assert (await api.get("/metrics", headers=bearer(METRICS_TOKEN))).status_code == 200
    spec = (await api.get("/openapi.json")).json()
    assert "/metrics" in spec["paths"]
    # the metrics token is no API key
    assert (await api.get("/api/v1/stats", headers=bearer(METRICS_TOKEN))).status_code == 401


async def test_without_a_metrics_token_only_the_key_scrapes(engine: Engine) -> None:
    settings = metrics_on(engine, metrics_token=None)
    async with api_client(engine, settings=settings) as client:
        assert (await client.get("/metrics", headers=bearer(METRICS_TOKEN))).status_code == 401
        assert (await client.get("/metrics", headers=bearer(""))).status_code == 401
        assert (await client.get("/metrics", headers=bearer(KEY))).status_code == 200


async def test_metrics_answer_no_other_origin(api: httpx.AsyncClient) -> None:
    headers = {**bearer(), "Origin": "https://elsewhere.example"}
    response = await api.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert not [k for k in response.headers if k.startswith("access-control-")]


def test_metrics_without_the_extra_refuse_to_start(
    engine_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import` raises ImportError
    unopened = Engine(engine_url)
    settings = unopened.settings.model_copy(update={"metrics": True})
    with pytest.raises(ConfigurationError, match=r"pip install 'waitpoint\[metrics\]'"):
        create_app(unopened, secret_key=KEY, settings=settings)
    create_app(unopened, secret_key=KEY)  # without metrics, nothing needs it


def test_serve_without_the_extra_says_so_in_one_line(
    engine_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setenv("WAITPOINT_METRICS", "1")
    monkeypatch.setenv("WAITPOINT_SECRET_KEY", KEY)
    result = CliRunner().invoke(
        cli_app, ["serve", "--port", str(free_port()), "--database", engine_url]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        "error: WAITPOINT_METRICS=1 needs the prometheus-client package:"
        " pip install 'waitpoint[metrics]'"
    ]


@pytest.fixture
def engine_url(sqlite_url: str) -> str:
    return sqlite_url


# -- the database's figures -------------------------------------------------------------------


async def _some_of_everything(engine: Engine, start_worker: StartWorker) -> dict[str, str]:
    """Two runs completed, one waiting on a token, one on an approval, three queued with no
    worker for them (and one delayed), and a token of nobody's expiring in two hours."""
    await engine.storage.register_tasks([TaskInfo(IDLE)])
    await start_worker([QUICK, TOKEN, APPROVAL])
    for n in range(2):
        await engine.wait_for_run((await engine.trigger(QUICK.id, n)).id, timeout=10)
    waiting = await engine.trigger(TOKEN.id)
    asking = await engine.trigger(APPROVAL.id)
    for run in (waiting, asking):
        await wait_for_status(engine, run.id, "WAITING", timeout=10)
    for n in range(3):
        await engine.trigger(IDLE, n)
    await engine.trigger(IDLE, "later", delay="1h")
    await engine.tokens.create(timeout="2h")
    return {"waiting": waiting.id, "asking": asking.id}


async def test_metrics_show_the_database_figures(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    await _some_of_everything(engine, start_worker)
    found = await scrape(api, METRICS_TOKEN)

    assert value(found, "waitpoint_runs", task=QUICK.id, status="COMPLETED") == 2
    assert value(found, "waitpoint_runs", task=TOKEN.id, status="WAITING") == 1
    assert value(found, "waitpoint_runs", task=APPROVAL.id, status="WAITING") == 1
    assert value(found, "waitpoint_runs", task=IDLE, status="QUEUED") == 3
    assert value(found, "waitpoint_runs", task=IDLE, status="DELAYED") == 1
    # every status of a task that has runs, zeros too
    assert ("waitpoint_runs", frozenset({("task", QUICK.id), ("status", "FAILED")})) in found
    queue = {"task": IDLE, "queue": IDLE}
    assert value(found, "waitpoint_queue_depth", **queue) == 3
    assert value(found, "waitpoint_queue_due", **queue) == 3
    assert 0 < value(found, "waitpoint_queue_oldest_age_seconds", **queue) < 60
    assert ("waitpoint_queue_depth", frozenset({("task", QUICK.id), ("queue", QUICK.id)})) not in (
        found
    )
    assert value(found, "waitpoint_tokens_waiting") == 2
    assert value(found, "waitpoint_tokens_expiring_soon") == 1  # 30 min, not 2 h
    assert value(found, "waitpoint_approvals_waiting") == 1
    assert value(found, "waitpoint_workers_live") == 1
    assert value(found, "waitpoint_sse_streams_open") == 0
    assert value(found, "waitpoint_sse_streams_max") == engine.settings.max_streams
    assert value(found, "waitpoint_stats_read_duration_seconds") > 0
    names = {name for name, _ in found}
    for histogram in (
        "waitpoint_claim_duration_seconds",
        "waitpoint_attempt_duration_seconds",
        "waitpoint_storage_transaction_duration_seconds",
    ):
        assert f"{histogram}_count" in names and f"{histogram}_bucket" in names, histogram
    assert "waitpoint_lease_rescues_total" in names


# -- in-process figures -----------------------------------------------------------------------


async def test_claims_attempts_waits_and_transactions_are_recorded(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    before = await scrape(api)
    runs = await _some_of_everything(engine, start_worker)
    [token] = (await engine.tokens.list(status="WAITING", tags=["metrics"])).data
    await asyncio.sleep(0.05)  # parked a moment: a wait that lasted
    await engine.tokens.complete(token.id, {"ok": True})
    await engine.wait_for_run(runs["waiting"], timeout=10)
    after = await scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("waitpoint_claim_duration_seconds_count") >= 4
    assert grew("waitpoint_claim_duration_seconds_sum") > 0
    completed = {"task": QUICK.id, "outcome": "completed"}
    assert grew("waitpoint_attempt_duration_seconds_count", **completed) == 2
    parked = {"task": TOKEN.id, "outcome": "released"}
    assert grew("waitpoint_attempt_duration_seconds_count", **parked) == 1
    resumed = {"task": TOKEN.id, "outcome": "completed"}
    assert grew("waitpoint_attempt_duration_seconds_count", **resumed) == 1
    assert grew("waitpoint_wait_duration_seconds_count", kind="token") == 1
    assert grew("waitpoint_wait_duration_seconds_sum", kind="token") >= 0.05
    backend = engine.storage.q.name  # type: ignore[attr-defined]
    claims = {"backend": backend, "operation": "claim_runs"}
    assert grew("waitpoint_storage_transaction_duration_seconds_count", **claims) >= 4
    trigger = {"backend": backend, "operation": "create_run"}
    assert grew("waitpoint_storage_transaction_duration_seconds_count", **trigger) >= 6
    if backend == "sqlite":
        assert grew("waitpoint_sqlite_group_commit_operations_count") > 0
    else:
        assert value(after, "waitpoint_sqlite_group_commit_operations_count") == value(
            before, "waitpoint_sqlite_group_commit_operations_count"
        )


async def test_every_kind_of_wait_is_timed(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    """Each way a parked run goes on past its wait records it (the SQL that returns when
    the run parked runs only with metrics on: every kind is run through it here)."""
    before = await scrape(api)
    await start_worker([QUICK, APPROVAL, *WAITS])
    runs = {d.id: (await engine.trigger(d.id, 1)).id for d in [APPROVAL, *WAITS]}
    for task_id in ("m-receive", "m-group", APPROVAL.id):
        await wait_for_status(engine, runs[task_id], "WAITING", timeout=10)
    await engine.runs.send(runs["m-receive"], "go", "now")
    await engine.runs.send(runs["m-group"], "stop", None)
    [approval] = await engine.approvals.list(run_id=runs[APPROVAL.id])
    await engine.approvals.vote(approval.id, "ana@example.com")
    for run_id in runs.values():
        await engine.wait_for_run(run_id, timeout=10)
    after = await scrape(api)
    waits = "waitpoint_wait_duration_seconds_count"
    for kind in ("sleep", "child_runs", "message", "group", "approval"):
        assert value(after, waits, kind=kind) - value(before, waits, kind=kind) == 1, kind
    slept = "waitpoint_wait_duration_seconds_sum"
    assert value(after, slept, kind="sleep") - value(before, slept, kind="sleep") >= 0.9
    late = "waitpoint_timer_lateness_seconds_count"
    deadline = {"timer": "waitpoint_deadline"}
    assert value(after, late, **deadline) - value(before, late, **deadline) >= 1


async def test_a_rescue_and_a_timer_are_recorded(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    before = await scrape(api)
    storage = engine.storage
    ghost = await storage.create_run(NewRun(task_id=QUICK.id, payload="ghost"))
    [claimed] = await storage.claim_runs("worker-that-died", 1, 1, [QUICK.id])
    assert claimed.id == ghost.id
    await asyncio.sleep(0.01)  # its 1 ms lease runs out
    await start_worker([QUICK])  # whose timer loop rescues the run, and claims it again
    await engine.wait_for_run(ghost.id, timeout=10)
    delayed = await engine.trigger(QUICK.id, "soon", delay="1s")
    await engine.wait_for_run(delayed.id, timeout=10)
    after = await scrape(api)
    rescues = "waitpoint_lease_rescues_total"
    assert value(after, rescues) - value(before, rescues) == 1
    late = "waitpoint_timer_lateness_seconds_count"
    assert value(after, late, timer="delayed_run") - value(before, late, timer="delayed_run") == 1


async def test_nothing_is_recorded_while_metrics_are_off(
    engine: Engine, start_worker: StartWorker
) -> None:
    recording.enable()
    recording.disable()
    figures = recording.figures()
    assert figures is not None

    def total() -> float:
        return sum(
            s.value for m in figures.collect() for s in m.samples if s.name.endswith("_count")
        )

    counted = total()
    await start_worker([QUICK])
    await engine.wait_for_run((await engine.trigger(QUICK.id, 1)).id, timeout=10)
    assert total() == counted


async def test_with_metrics_off_a_write_is_the_backends_coroutine_alone(engine: Engine) -> None:
    """The benchmark guard, structurally: with metrics off, ``_write`` hands back the
    backend's own transaction coroutine (no timing wrapper, no extra frame), and with them
    on, the timed one."""
    storage: Any = engine.storage

    def op(now: int) -> Any:
        yield from ()
        return now

    off = storage._write(op)
    assert off.cr_code.co_name == "_transact"
    assert await off > 0
    recording.enable()
    on = storage._write(op)
    assert on.cr_code.co_name == "_timed_write"
    assert await on > 0


# -- engine.stats() and GET /api/v1/stats ------------------------------------------------------


async def test_stats_locally_and_over_http_agree(
    engine: Engine, api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    await _some_of_everything(engine, start_worker)
    local = await engine.stats()
    assert local.live_workers == 1 and local.tokens_waiting == 2
    assert local.tokens_expiring_soon == 1 and local.approvals_waiting == 1
    assert {(r.task_id, r.status.value, r.count) for r in local.runs} >= {
        (QUICK.id, "COMPLETED", 2),
        (IDLE, "QUEUED", 3),
        (IDLE, "DELAYED", 1),
    }
    [queue] = [q for q in local.queues if q.task_id == IDLE]
    assert (queue.queue, queue.depth, queue.due) == (IDLE, 3, 3)

    assert (await api.get("/api/v1/stats")).status_code == 401
    scoped = await api.get("/api/v1/stats", headers=bearer(sign_jwt(["read:runs"])))
    assert scoped.status_code == 403
    body = (await api.get("/api/v1/stats", headers=bearer())).json()
    assert set(body) == {
        "at",
        "runs",
        "queues",
        "tokensWaiting",
        "tokensExpiringSoon",
        "approvalsWaiting",
        "liveWorkers",
    }

    async with Engine(BASE_URL, api_key=KEY) as remote:
        remote._connection.api._client = api  # type: ignore[attr-defined]
        api.headers.update(bearer())
        over_http = await remote.stats()
    assert over_http.runs == local.runs
    assert [(q.task_id, q.queue, q.depth, q.due) for q in over_http.queues] == [
        (q.task_id, q.queue, q.depth, q.due) for q in local.queues
    ]
    same = {"tokens_waiting", "tokens_expiring_soon", "approvals_waiting", "live_workers"}
    assert over_http.model_dump(include=same) == local.model_dump(include=same)
    assert over_http.at >= local.at


async def test_stats_of_an_empty_database(engine: Engine) -> None:
    empty = await engine.stats()
    assert empty.runs == [] and empty.queues == []
    assert (empty.tokens_waiting, empty.approvals_waiting, empty.live_workers) == (0, 0, 0)


# -- waitpoint stats --------------------------------------------------------------------------


async def test_waitpoint_stats_prints_json_and_a_table(
    engine: Engine, db_url: str, start_worker: StartWorker
) -> None:
    await _some_of_everything(engine, start_worker)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli_app, ["stats", *args, "--database", db_url])

    as_json = await asyncio.to_thread(invoke, "--json")
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert body["approvalsWaiting"] == 1 and body["liveWorkers"] == 1
    assert {"taskId": IDLE, "status": "QUEUED", "count": 3} in body["runs"]

    table = await asyncio.to_thread(invoke)
    assert table.exit_code == 0, table.output
    blocks = table.stdout.split("\n\n")
    assert blocks[0].splitlines()[0] == "figure\tvalue"
    assert "approvalsWaiting\t1" in blocks[0].splitlines()
    assert f"{QUICK.id}\tCOMPLETED\t2" in blocks[1].splitlines()
    [idle] = [line for line in blocks[2].splitlines() if line.startswith(f"{IDLE}\t")]
    assert idle.split("\t")[:4] == [IDLE, IDLE, "3", "3"]


def test_stats_watch_reads_again_until_ctrl_c(tmp_path: Path) -> None:
    """``--watch`` alone is every 2 s; with a value and --json, one object a line; Ctrl-C
    ends it with exit code 0 and nothing on stderr."""
    database = f"sqlite:///{tmp_path}/engine.db"
    command = [sys.executable, "-c", INTERRUPTIBLE]
    command += ["stats", "--watch", "0.2", "--json", "--database", database]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment(WAITPOINT_SECRET_KEY=KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    readings = [json.loads(line) for line in lines]
    assert [r["liveWorkers"] for r in readings] == [0, 0, 0]
    assert readings[0]["at"] < readings[2]["at"]
    assert process.returncode == 0, err
    assert err == ""
    assert all(json.loads(line) for line in out.splitlines())


def test_a_bare_watch_takes_its_default() -> None:
    values = {"--watch": "2"}
    assert with_values(["--watch"], values) == ["--watch", "2"]
    assert with_values(["--watch", "--json"], values) == ["--watch", "2", "--json"]
    assert with_values(["--json", "--watch"], values) == ["--json", "--watch", "2"]
    assert with_values(["--watch", "5"], values) == ["--watch", "5"]
    assert with_values(["--watch=5"], values) == ["--watch=5"]
    assert with_values(["--", "--watch"], values) == ["--", "--watch"]


# -- a real server ----------------------------------------------------------------------------

DEV_TASKS = """
from engine import task

@task("dev-metrics")
async def dev_metrics(payload):
    return payload
"""


def test_waitpoint_dev_shows_its_workers_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``waitpoint dev`` runs the worker in the API's process: its claims and attempts are
    on its ``/metrics``; ``engine.stats()`` and ``waitpoint stats`` read it over HTTP."""
    monkeypatch.setenv("WAITPOINT_METRICS", "1")
    monkeypatch.setenv("WAITPOINT_METRICS_TOKEN", METRICS_TOKEN)
    with dev_server(tmp_path, "dev_metrics_tasks", DEV_TASKS, KEY) as url:

        async def drive() -> Any:
            async with Engine(url, api_key=KEY) as remote:
                run = await remote.trigger("dev-metrics", {"n": 1})
                await remote.wait_for_run(run.id, timeout=20)
                return await remote.stats()

        figures = asyncio.run(drive())
        assert {(r.task_id, r.status.value, r.count) for r in figures.runs} == {
            ("dev-metrics", "COMPLETED", 1)
        }
        assert figures.live_workers == 1
        scraped = httpx.get(f"{url}/metrics", headers=bearer(METRICS_TOKEN), timeout=10)
        assert scraped.status_code == 200, scraped.text
        found = samples(scraped.text)
        assert value(found, "waitpoint_runs", task="dev-metrics", status="COMPLETED") == 1
        assert value(found, "waitpoint_workers_live") == 1
        assert value(found, "waitpoint_claim_duration_seconds_count") >= 1
        ended = {"task": "dev-metrics", "outcome": "completed"}
        assert value(found, "waitpoint_attempt_duration_seconds_count", **ended) == 1
        assert value(found, "waitpoint_sse_streams_open") == 0
        with (
            httpx.Client(base_url=url, headers=bearer(), timeout=10) as client,
            client.stream("GET", "/api/v1/runs/stream") as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: a line iterator collected closes the stream
            assert next(lines).startswith("retry:")  # open
            scraped = httpx.get(f"{url}/metrics", headers=bearer(), timeout=10)
            assert value(samples(scraped.text), "waitpoint_sse_streams_open") == 1
        shown = subprocess.run(
            engine_command("stats", "--json", "--api-url", url),
            cwd=tmp_path,
            env=environment(WAITPOINT_SECRET_KEY=KEY),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["liveWorkers"] == 1
