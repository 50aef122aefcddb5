"""Several worker processes on one PostgreSQL database, as on several machines (and on one
SQLite file, as on one host).

Each attempt of a run writes its start and end (with the lease epoch and the worker's pid) to
an oracle file outside the database, so the tests can check what the database cannot vouch
for itself: that no run was ever executed by two workers at the same time, and that a step
already journaled was not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from engine import Engine, RunStatus
from engine.models import Run, TaskInfo

from .pgbouncer import pooled_schema_url
from .postgres import fresh_schema_url

pytestmark = pytest.mark.timeout(300)

TASKS = textwrap.dedent(
    """
    import asyncio, os, time, uuid

    from engine import create_token, step, task, wait_for_token
    from engine.context import RunContext

    ORACLE = os.environ["CLUSTER_ORACLE"]
    STEP_SECONDS = float(os.environ.get("CLUSTER_STEP_SECONDS", "0"))

    def record(*fields: object) -> None:
        line = " ".join(str(f) for f in fields) + "\\n"
        fd = os.open(ORACLE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())  # one write: lines of several processes never mix
        finally:
            os.close(fd)

    async def side_effect(run_id: str, name: str) -> str:
        execution = uuid.uuid4().hex  # journaled as the step's result: names this execution
        record("step", run_id, os.getpid(), name, execution, time.time())
        await asyncio.sleep(STEP_SECONDS)  # a kill in here leaves the step unjournaled
        return execution

    @task("cluster-flow")
    async def cluster_flow(payload: dict) -> dict:
        run = RunContext.current().run
        record("start", run.id, run.epoch, os.getpid(), time.time())
        try:
            before = await step("before", side_effect, run.id, "before")
            token = await create_token(timeout="10m", tags=["cluster"])
            result = await wait_for_token(token)
            after = await step("after", side_effect, run.id, "after")
            steps = {"before": before, "after": after}
            return {"n": payload["n"], "data": result.unwrap(), "steps": steps}
        finally:
            record("end", run.id, run.epoch, os.getpid(), time.time())
    """
)

# the fifth process: completes every token the runs create, in the order it finds them
COMPLETER = textwrap.dedent(
    """
    import asyncio, random, sys
    from engine import Engine

    async def main(url: str, expected: int) -> None:
        done: set[str] = set()
        async with Engine(url) as engine:
            while len(done) < expected:
                page = await engine.tokens.list(status="WAITING", tags="cluster", limit=100)
                tokens = [t for t in page.data if t.id not in done]
                random.shuffle(tokens)
                for token in tokens:
                    result = await engine.tokens.complete(token.id, {"approved": True})
                    if result.applied:
                        done.add(token.id)
                if not tokens:
                    await asyncio.sleep(0.05)
        print("completed", len(done), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


WORKER_COMMAND = [sys.executable, "-c", "from engine.cli import main; main()", "worker"]


class Cluster:
    """Worker processes (and a completer) started from a folder holding the tasks module."""

    def __init__(self, root: Path, url: str, step_seconds: float = 0) -> None:
        self.root = root
        self.url = url
        self.oracle = root / "oracle.log"
        (root / "cluster_tasks.py").write_text(TASKS)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
        self.env.update(
            CLUSTER_ORACLE=str(self.oracle),
            CLUSTER_STEP_SECONDS=str(step_seconds),
            WAITPOINT_LOG_FORMAT="json",
            WAITPOINT_LEASE_SECONDS="2",
            WAITPOINT_POSTGRES_POOL_SIZE="4",  # six processes share the server's connections
            PYTHONUNBUFFERED="1",
        )
        if "WAITPOINT_LISTEN_URL" in os.environ:  # through PgBouncer: LISTEN past it
            self.env["WAITPOINT_LISTEN_URL"] = os.environ["WAITPOINT_LISTEN_URL"]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.killed: dict[int, float] = {}  # pid -> when it was killed

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """Start a worker; ``env`` overrides this cluster's environment for it alone."""
        log = (self.root / f"worker-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [*WORKER_COMMAND, "--tasks", "cluster_tasks", "--database", self.url],
            cwd=self.root,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def start_completer(self, expected: int) -> subprocess.Popen[bytes]:
        with (self.root / "completer.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", COMPLETER, self.url, str(expected)],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        self.killed[process.pid] = time.time()
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def log_lines_about(self, run_id: str) -> list[str]:
        """The workers' log lines that name ``run_id`` (for failure messages)."""
        return [
            line
            for log in sorted(self.root.glob("worker-*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if run_id in line
        ]

    def oracle_lines(self) -> list[list[str]]:
        return [line.split() for line in self.oracle.read_text().splitlines()]


@pytest.fixture(params=["postgres", "pgbouncer", "sqlite"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Workers sharing a PostgreSQL schema (directly or through PgBouncer in transaction
    mode) or, as on one host, a SQLite file."""
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            url = stack.enter_context(fresh_schema_url())
        elif request.param == "pgbouncer":
            url = stack.enter_context(pooled_schema_url())
        else:
            url = f"sqlite:///{tmp_path}/engine.db"
        started = Cluster(tmp_path, url)
        stack.callback(started.stop_all)
        yield started


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not true after {timeout} s"
        await asyncio.sleep(0.1)


async def count_at_least(engine: Engine, status: str, wanted: int) -> bool:
    return await count_runs(engine, status) >= wanted


async def in_a_step(cluster: Cluster, pid: int) -> bool:
    """Whether the worker ``pid`` has begun a step."""
    if not cluster.oracle.exists():
        return False
    return any(f[0] == "step" and f[2] == str(pid) for f in cluster.oracle_lines())


async def trigger_all(engine: Engine, count: int) -> list[str]:
    """Trigger ``count`` runs (registering the task first, as a worker would)."""
    await engine.storage.register_tasks([TaskInfo("cluster-flow")])
    ids: list[str] = []
    for first in range(0, count, 50):
        batch = range(first, min(first + 50, count))
        runs = await asyncio.gather(*(engine.trigger("cluster-flow", {"n": n}) for n in batch))
        ids += [run.id for run in runs]
    return ids


async def wait_all_finished(engine: Engine, count: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        finished = await count_runs(engine, "COMPLETED")
        if finished == count:
            return
        failed = await engine.runs.list(status=["FAILED", "CRASHED"], limit=1)
        assert not failed.data, f"a run failed: {failed.data[0].error}"
        if loop.time() > deadline:
            statuses = {s: await count_runs(engine, s) for s in RunStatus}
            tokens = await engine.tokens.list(status="WAITING", limit=5)
            raise AssertionError(
                f"{finished} of {count} runs COMPLETED after {timeout} s; others: {statuses};"
                f" waiting tokens: {[t.id for t in tokens.data]}"
            )
        await asyncio.sleep(0.5)


async def count_runs(engine: Engine, status: str) -> int:
    total, after = 0, None
    while True:
        page = await engine.runs.list(status=status, limit=100, after=after)
        total += len(page.data)
        if page.next_cursor is None:
            return total
        after = page.next_cursor


async def listener_backends(engine: Engine) -> list[int]:
    """The PIDs of the server backends LISTENing for this test's schema."""
    storage = engine.storage
    pool = storage._pool  # type: ignore[attr-defined]
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        f"waitpoint-listen:{storage.schema}",  # type: ignore[attr-defined]
    )
    return [row["pid"] for row in rows]


async def retrieve_all(engine: Engine, run_ids: list[str]) -> list[Run]:
    runs: list[Run] = []
    for first in range(0, len(run_ids), 50):
        batch = run_ids[first : first + 50]
        runs += await asyncio.gather(*(engine.runs.retrieve(run_id) for run_id in batch))
    return runs


def check_no_journaled_step_redone(
    cluster: Cluster, runs: list[Run], attempts: dict[str, list[tuple[float, float, int]]]
) -> set[str]:
    """Fail if a step ran again after an execution of it was journaled; return the runs that
    ran a step more than once.

    Each execution of a step returns a fresh id, so the id in the run's output names the one
    execution that was journaled. A step may run again only while none of its executions is
    journaled (an attempt cut short by the kill, by a lost lease or by a failed write, between
    running it and journaling it): the journaled execution must be the last one.
    """
    executions: dict[tuple[str, str], list[str]] = defaultdict(list)
    for fields in cluster.oracle_lines():
        if fields[0] == "step":
            executions[(fields[1], fields[3])].append(fields[4])
    redone: set[str] = set()
    for run in runs:
        for name, journaled in run.output["steps"].items():
            ran = executions[(run.id, name)]
            assert ran and ran[-1] == journaled, (
                f"run {run.id}: step {name!r} ran {len(ran)} times, the journaled execution"
                f" {journaled} is not the last of {ran}; attempts {attempts[run.id]};"
                f" its workers said: {cluster.log_lines_about(run.id)}"
            )
            if len(ran) > 1:
                redone.add(run.id)
    return redone


def check_attempts(cluster: Cluster) -> dict[str, list[tuple[float, float, int]]]:
    """Attempts per run as (start, end, epoch); fails if two of one run ever overlapped.

    An attempt with no end was cut short by ``kill -9``: it ended when its worker was killed.
    """
    starts: dict[tuple[str, str], tuple[float, int]] = {}
    ends: dict[tuple[str, str], float] = {}
    for fields in cluster.oracle_lines():
        if fields[0] == "start":
            starts[(fields[1], fields[2])] = (float(fields[4]), int(fields[3]))
        elif fields[0] == "end":
            ends[(fields[1], fields[2])] = float(fields[4])
    attempts: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for (run_id, epoch), (start, pid) in starts.items():
        end = ends.get((run_id, epoch))
        if end is None:
            assert pid in cluster.killed, f"run {run_id} epoch {epoch}: no end, worker not killed"
            end = cluster.killed[pid]
        attempts[run_id].append((start, end, int(epoch)))
    for run_id, spans in attempts.items():
        spans.sort()
        for (_, end, epoch), (start, _, next_epoch) in itertools.pairwise(spans):
            assert next_epoch > epoch, f"run {run_id}: epochs out of order {spans}"
            assert start >= end, f"run {run_id}: epoch {next_epoch} began while {epoch} ran"
    return attempts


async def test_four_workers_drain_token_waits_with_no_overlap_and_a_lost_listener(
    cluster: Cluster,
) -> None:
    postgres = cluster.url.startswith("postgresql")
    count = 2000 if postgres else 500  # four SQLite writers take turns: fewer runs, same checks
    cluster.env["WAITPOINT_LEASE_SECONDS"] = "10"  # no take-overs expected: a loaded machine

    async with Engine(cluster.url) as engine:
        workers = [cluster.start_worker() for _ in range(4)]
        run_ids = await trigger_all(engine, count)
        completer = cluster.start_completer(count)

        # a third of the way in, every LISTEN connection of the workers is terminated
        await eventually(lambda: count_at_least(engine, "COMPLETED", count // 3), 120)
        if postgres:
            pool = engine.storage._pool  # type: ignore[attr-defined]
            backends = await listener_backends(engine)
            assert len(backends) >= 4  # one per worker
            for pid in backends:
                await pool.execute("SELECT pg_terminate_backend($1)", pid)

        await wait_all_finished(engine, count, timeout=240)
        assert completer.wait(30) == 0
        assert all(worker.poll() is None for worker in workers)  # none died on the way

        runs = await retrieve_all(engine, run_ids)
        assert all(run.status is RunStatus.COMPLETED for run in runs)
        assert {run.output["data"]["approved"] for run in runs} == {True}
        assert await count_runs(engine, "COMPLETED") == count

        if postgres:  # the listeners came back
            assert len(await listener_backends(engine)) >= 4

    attempts = check_attempts(cluster)
    assert len(attempts) == count
    check_no_journaled_step_redone(cluster, runs, attempts)
    workers_used = {fields[3] for fields in cluster.oracle_lines() if fields[0] == "start"}
    assert len(workers_used) == 4  # the work was shared


async def test_a_worker_killed_mid_run_is_taken_over_without_redoing_journaled_steps(
    cluster: Cluster,
) -> None:
    cluster.env["CLUSTER_STEP_SECONDS"] = "0.3"  # every attempt is in a step for a while
    count = 300
    async with Engine(cluster.url) as engine:
        # the victim's steps outlast the test's wait for them: once it has begun one, the
        # kill is certain to find that attempt in flight, however loaded the machine
        victim = cluster.start_worker(CLUSTER_STEP_SECONDS="600")
        run_ids = await trigger_all(engine, count)
        await eventually(lambda: in_a_step(cluster, victim.pid), 60)
        survivors = [cluster.start_worker() for _ in range(2)]
        completer = cluster.start_completer(count)
        await asyncio.sleep(0.5)
        cluster.kill(victim)

        await wait_all_finished(engine, count, timeout=120)
        assert completer.wait(30) == 0
        assert all(worker.poll() is None for worker in survivors)

        taken_over = 0
        for run_id in run_ids:
            events = await engine.storage.get_events(run_id)
            taken_over += any(event.kind == "worker_lost" for event in events)
        runs = await retrieve_all(engine, run_ids)

    attempts = check_attempts(cluster)
    assert len(attempts) == count
    lines = cluster.oracle_lines()
    ended = {(f[1], f[2]) for f in lines if f[0] == "end"}
    cut_short = {f[1] for f in lines if f[0] == "start" and (f[1], f[2]) not in ended}
    assert cut_short, "the kill found no attempt in flight: the test proved nothing"
    assert taken_over > 0, "the kill found no run in flight: the test proved nothing"
    redone = check_no_journaled_step_redone(cluster, runs, attempts)
    assert redone & cut_short, "no step cut short by the kill was run again: it proved nothing"
