#!/usr/bin/env python3
"""Partition harness: worker processes on network hosts of their own, cut off from PostgreSQL
and healed, then every run checked against what the contract promises.

    sudo .venv/bin/python scripts/partitions.py --minutes 30 [--seed S] [--runs N] [--keep]

Each worker runs inside a Linux network namespace made here (``ip netns add``), joined to the
host by a veth pair whose two ends have addresses in 10.213.<i>.0/24 (or in the next
10.x.0.0/16 that is free), used only by these namespaces. PostgreSQL listens on loopback
only, so a small TCP relay (this script's ``relay`` command, a process of its own) listens on
the host end of each veth and forwards to the server: everything a worker says to the
database crosses its veth, where the nemeses act.

While 3 workers drain runs that step, wait for a token completed from the host, sleep, trigger
a child and wait for it, a seeded nemesis acts every few seconds, on one worker at a time:

- ``cut`` / ``drop``: the link goes down, or every packet the worker sends is dropped
  (iptables in its namespace), for about half, about one, or about two and a half leases;
- ``slow``: 200-2,000 ms of added latency (held by the relay: this kernel has no
  ``sch_netem``, so ``tc netem`` cannot add it on the veth) and up to 10% of the worker's
  packets dropped at random (iptables ``statistic``), for two to three leases;
- ``pause``: SIGSTOP past the lease, then SIGCONT;
- ``listen``: the worker's LISTEN connection is terminated by the server (the relay tells which
  server backend serves which worker);

then everything heals and the system settles. Checked afterwards (one line each, like the
chaos harness): every run reached exactly one terminal state with the right output; no two
attempts of one run overlapped in time, except that a paused worker's attempt may run on
until it notices, just after it wakes, that its lease is gone (its writes are fenced); a
step's body ran again only in attempts cut off before journaling it; every acknowledged
completion reached its run; no durable sleep ended early; every attempt in flight when its
worker was cut off for longer than the lease stopped itself (logged ``run.lease_expiring``)
before another worker took the run. The exit status is 1 if any check fails.

Needs root (namespaces), ``iproute2``, ``iptables`` (its legacy ``ip_tables`` backend) and a
PostgreSQL server (``WAITPOINT_TEST_POSTGRES_URL``, default
postgresql://postgres@127.0.0.1:5432/test).
``tests/partitions/test_partitions.py`` runs a short seeded slice of it in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SERVER_URL = os.environ.get(
    "WAITPOINT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SUBNETS = [f"10.{octet}" for octet in range(213, 233)]
"""Where the veth addresses come from: the first of these /16s no address of the host is in
(so that harnesses running at once do not meet); 10.x.<i>.1 is the host's end of worker i's
veth, 10.x.<i>.2 the worker's."""
FLOW = "partition-flow"
GOING = ["QUEUED", "EXECUTING", "WAITING", "DELAYED"]
ENDED = ["COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT", "EXPIRED"]
IPTABLES = "iptables-legacy"  # the kernel's ip_tables: nf_tables may be missing where it is

TASKS = textwrap.dedent(
    """
    import asyncio, os, time, uuid
    from datetime import timedelta

    from engine import create_token, sleep, step, task, wait_for_token
    from engine.context import RunContext

    ORACLE = os.environ["PARTITION_ORACLE"]
    STEP_SECONDS = float(os.environ["PARTITION_STEP_SECONDS"])

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
        await asyncio.sleep(STEP_SECONDS)  # a cut in here leaves the step unjournaled
        return execution

    def attempt(run) -> object:
        class Attempt:
            def __enter__(self) -> None:
                record("start", run.id, run.epoch, os.getpid(), time.time())

            def __exit__(self, *exc: object) -> None:
                record("end", run.id, run.epoch, os.getpid(), time.time())

        return Attempt()

    @task("partition-child")
    async def partition_child(payload: dict) -> dict:
        run = RunContext.current().run
        with attempt(run):
            done = await step("child", side_effect, run.id, "child")
            return {"parent": payload["parent"], "step": done}

    @task("partition-flow")
    async def partition_flow(payload: dict) -> dict:
        run = RunContext.current().run
        with attempt(run):
            steps = {"a": await step("a", side_effect, run.id, "a")}
            token = await create_token(timeout="30m", tags=["partition"])
            data = (await wait_for_token(token)).unwrap()
            steps["b"] = await step("b", side_effect, run.id, "b")
            asked = await step("asked", time.time)
            await sleep(timedelta(milliseconds=payload["sleep_ms"]))
            record("slept", run.id, asked, payload["sleep_ms"], time.time())
            child = (await partition_child.trigger_and_wait({"parent": run.id})).unwrap()
            steps["c"] = await step("c", side_effect, run.id, "c")
            return {"n": payload["n"], "token": token.id, "data": data, "child": child,
                    "steps": steps}
    """
)


@dataclass
class PartitionConfig:
    runs: int = 300
    workers: int = 3
    seconds: float = 1800.0  # how long the nemeses act
    lease_seconds: float = 2.0
    step_seconds: float = 0.4
    seed: int | None = None
    workdir: Path | None = None
    keep: bool = False
    settle_timeout: float = 240.0


@dataclass
class Nemesis:
    kind: str
    worker: int
    start: float
    end: float
    detail: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    seed: int
    checks: list[Check]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def table(self) -> str:
        lines = [f"partitions seed={self.seed}"]
        lines += [f"  {k}: {v}" for k, v in self.stats.items()]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def why_not_possible() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), (IPTABLES, "iptables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian package {package})"
    name = f"wpprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if free_subnet() is None:
        return f"every one of {SUBNETS[0]}-{SUBNETS[-1]}.0.0/16 has an address on this host"
    return None


def free_subnet() -> str | None:
    """The first of ``SUBNETS`` that no address of this host is in."""
    taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    return next((subnet for subnet in SUBNETS if f" {subnet}." not in taken), None)


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


class Network:
    """One namespace and veth pair per worker; ``heal`` undoes every nemesis."""

    def __init__(self, count: int) -> None:
        subnet = free_subnet()
        if subnet is None:
            raise RuntimeError(f"no free subnet among {SUBNETS}")
        self.subnet = subnet
        tag = os.getpid() % 100_000
        self.names = [f"wpp{tag}n{i}" for i in range(count)]
        self.host_ends = [f"wph{tag}n{i}" for i in range(count)]
        self.worker_ends = [f"wpw{tag}n{i}" for i in range(count)]

    def host_address(self, i: int) -> str:
        return f"{self.subnet}.{i}.1"

    def create(self) -> None:
        for i, (ns, host, peer) in enumerate(
            zip(self.names, self.host_ends, self.worker_ends, strict=True)
        ):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "addr", "add", f"{self.subnet}.{i}.1/24", "dev", host)
            sh("ip", "link", "set", host, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.{i}.2/24", "dev", peer)
            sh("ip", "-n", ns, "link", "set", peer, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        for ns, host in zip(self.names, self.host_ends, strict=True):
            sh("ip", "link", "del", host, check=False)  # takes its peer with it
            sh("ip", "netns", "del", ns, check=False)

    def link(self, i: int, up: bool) -> None:
        sh("ip", "-n", self.names[i], "link", "set", self.worker_ends[i], "up" if up else "down")

    def drop(self, i: int, probability: float = 1.0) -> None:
        """Drop what the worker sends: every packet, or each with ``probability``."""
        rule = ["-j", "DROP"]
        if probability < 1:
            rule = ["-m", "statistic", "--mode", "random", "--probability", f"{probability}", *rule]
        sh("ip", "netns", "exec", self.names[i], IPTABLES, "-F", "OUTPUT")
        sh(
            "ip",
            "netns",
            "exec",
            self.names[i],
            IPTABLES,
            "-A",
            "OUTPUT",
            "-o",
            self.worker_ends[i],
            *rule,
        )

    def heal(self, i: int) -> None:
        sh("ip", "netns", "exec", self.names[i], IPTABLES, "-F", "OUTPUT", check=False)
        self.link(i, True)


# -- the relay ------------------------------------------------------------------------------


async def relay(listens: list[str], target: str, connections: Path) -> None:
    """Forward each ``host:port`` of ``listens`` to ``target``.

    Writes ``<i> <local port>`` to ``connections`` for each connection made to the server on
    behalf of listen address i (the server's ``client_port``: which backend serves which
    worker). A line ``<i> <ms>`` on standard input delays what worker i sends by ``ms`` from
    then on (0: none), in order: the latency of a slow link, which this kernel's missing
    ``sch_netem`` cannot add on the veth itself.
    """
    to_host, to_port = target.rsplit(":", 1)
    delays = [0.0] * len(listens)
    loop = asyncio.get_running_loop()

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: int | None
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                delay = delays[delayed] if delayed is not None else 0.0
                queue.put_nowait((loop.time() + delay, data))
            queue.put_nowait((0.0, b""))
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    def serve(index: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
            except OSError:
                writer.close()
                return
            port = up_writer.get_extra_info("sockname")[1]
            with connections.open("a") as out:
                out.write(f"{index} {port}\n")
            await asyncio.gather(pipe(reader, up_writer, index), pipe(up_reader, writer, None))

        return handle

    async def follow_orders() -> None:
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        while line := await stdin.readline():
            index, ms = line.split()
            delays[int(index)] = int(ms) / 1000

    servers = []
    for index, listen in enumerate(listens):
        host, port = listen.rsplit(":", 1)
        servers.append(await asyncio.start_server(serve(index), host, int(port)))
    print("relaying", flush=True)
    await asyncio.gather(follow_orders(), *(server.serve_forever() for server in servers))


# -- the harness ----------------------------------------------------------------------------


class Harness:
    def __init__(self, config: PartitionConfig, seed: int, workdir: Path) -> None:
        self.config = config
        self.random = random.Random(seed)  # the nemeses: the same seed, the same sequence
        self.load_random = random.Random(seed + 1)  # payloads and completion order
        self.seed = seed
        self.workdir = workdir
        self.oracle = workdir / "oracle.log"
        self.connections = workdir / "connections.log"
        self.schema = f"partitions_{uuid.uuid4().hex[:12]}"
        server = urlsplit(SERVER_URL)
        self.server = f"{server.hostname}:{server.port or 5432}"
        separator = "&" if "?" in SERVER_URL else "?"
        self.url = f"{SERVER_URL}{separator}schema={self.schema}"
        self.network = Network(config.workers)
        self.relay: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.nemeses: list[Nemesis] = []
        self.acknowledged: dict[str, Any] = {}  # token id -> the data its completion set
        self.paused: dict[int, float] = {}

    def worker_url(self, i: int) -> str:
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)
        where = f"{self.network.host_address(i)}:{self.server.rsplit(':', 1)[1]}"
        netloc[-1] = where
        return parts._replace(netloc="@".join(netloc)).geturl()

    # setting up and tearing down

    def start(self) -> None:
        (self.workdir / "partition_tasks.py").write_text(TASKS)
        self.network.create()
        port = self.server.rsplit(":", 1)[1]
        listens = [f"{self.network.host_address(i)}:{port}" for i in range(self.config.workers)]
        log = (self.workdir / "relay.log").open("wb")
        self.relay = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "relay",
                "--to",
                self.server,
                "--connections",
                str(self.connections),
                *listens,
            ],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while "relaying" not in (self.workdir / "relay.log").read_text():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not start: {self.relay_log()}")
            time.sleep(0.05)
        self.workers = [self.start_worker(i) for i in range(self.config.workers)]

    def delay(self, i: int, ms: int) -> None:
        """What worker i sends reaches the server ``ms`` later (the relay holds it)."""
        assert self.relay is not None and self.relay.stdin is not None
        self.relay.stdin.write(f"{i} {ms}\n".encode())
        self.relay.stdin.flush()

    def heal(self, i: int) -> None:
        self.network.heal(i)
        self.delay(i, 0)

    def relay_log(self) -> str:
        return (self.workdir / "relay.log").read_text(errors="replace")

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
        env.update(
            PARTITION_ORACLE=str(self.oracle),
            PARTITION_STEP_SECONDS=str(self.config.step_seconds),
            WAITPOINT_LOG_FORMAT="json",
            WAITPOINT_LEASE_SECONDS=str(self.config.lease_seconds),
            WAITPOINT_POSTGRES_POOL_SIZE="4",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(self.workdir)]),
        )
        log = (self.workdir / f"worker-{i}.log").open("wb")
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.network.names[i],
                sys.executable,
                "-c",
                "from engine.cli import main; main()",
                "worker",
                "--tasks",
                "partition_tasks",
                "--database",
                self.worker_url(i),
            ],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return process

    def stop(self) -> None:
        for i in range(len(self.workers)):
            with contextlib.suppress(Exception):
                self.network.heal(i)
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        if self.relay is not None:
            if self.relay.stdin is not None:
                self.relay.stdin.close()
            if self.relay.poll() is None:
                self.relay.terminate()
        for process in [*self.workers, *([self.relay] if self.relay else [])]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.network.destroy()

    async def drop_schema(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(SERVER_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    # the load

    async def trigger(self, engine: Any, run_ids: list[str], until: float) -> None:
        """Trigger the runs in waves every 2 s until ``until``: work is always in flight."""
        from engine.models import TaskInfo

        await engine.storage.register_tasks([TaskInfo(FLOW), TaskInfo("partition-child")])
        waves = max(1, int(self.config.seconds / 2))
        per_wave = -(-self.config.runs // waves)
        while len(run_ids) < self.config.runs:
            first = len(run_ids)
            batch = range(first, min(first + per_wave, self.config.runs))
            payloads = [{"n": n, "sleep_ms": self.load_random.randint(100, 3000)} for n in batch]
            runs = await asyncio.gather(*(engine.trigger(FLOW, p) for p in payloads))
            run_ids += [run.id for run in runs]
            await asyncio.sleep(max(0.0, min(2.0, until - time.time())))

    async def complete_tokens(self, engine: Any, stop: asyncio.Event) -> None:
        """Complete every waiting token, in random order, from the host; keep what was
        acknowledged."""
        while not stop.is_set():
            page = await engine.tokens.list(status="WAITING", tags="partition", limit=100)
            tokens = [t for t in page.data if t.id not in self.acknowledged]
            self.load_random.shuffle(tokens)
            for token in tokens:
                data = {"nonce": uuid.uuid4().hex}
                result = await engine.tokens.complete(token.id, data)
                if result.applied:
                    self.acknowledged[token.id] = data
            await asyncio.sleep(0.05 if tokens else 0.2)

    # the nemeses

    async def act(self, until: float) -> None:
        """A nemesis at a time, chosen by the seed, until ``until``."""
        lease = self.config.lease_seconds
        kinds = ["cut", "drop", "slow", "pause", "listen"]
        while time.time() < until:
            await asyncio.sleep(self.random.uniform(0.5, 3.0))
            kind = self.random.choice(kinds)
            i = self.random.randrange(self.config.workers)
            length = self.random.choice([0.5, 1.0, 2.5]) * lease * self.random.uniform(0.9, 1.1)
            start = time.time()
            detail = ""
            if kind == "cut":
                self.network.link(i, False)
                await asyncio.sleep(length)
                self.network.heal(i)
            elif kind == "drop":
                self.network.drop(i)
                await asyncio.sleep(length)
                self.network.heal(i)
            elif kind == "slow":
                delay = self.random.randint(200, 2000)
                loss = self.random.choice([0, 1, 5, 10])
                detail = f"{delay} ms, {loss}% loss"
                self.delay(i, delay)
                if loss:
                    self.network.drop(i, loss / 100)
                await asyncio.sleep(self.random.uniform(2, 3) * lease)
                self.heal(i)
            elif kind == "pause":
                length = self.random.uniform(1.5, 3.0) * lease
                self.workers[i].send_signal(signal.SIGSTOP)
                await asyncio.sleep(length)
                self.workers[i].send_signal(signal.SIGCONT)
            else:
                detail = await self.cut_listener(i)
            nemesis = Nemesis(kind, i, start, time.time(), detail)
            self.nemeses.append(nemesis)
            with (self.workdir / "nemeses.log").open("a") as out:
                out.write(f"{kind} {i} {start:.3f} {nemesis.end:.3f} {detail}\n")
            if self.random.random() < 0.2:  # now and then, a quiet spell to settle
                await asyncio.sleep(self.random.uniform(1, 2) * lease)

    async def cut_listener(self, i: int) -> str:
        """Terminate the server backend of worker i's LISTEN connection."""
        import asyncpg

        ports = [
            int(p)
            for index, p in (line.split() for line in self.connections.read_text().splitlines())
            if int(index) == i
        ]
        conn = await asyncpg.connect(SERVER_URL)
        try:
            pids = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
                " AND client_port = ANY($2::int[])",
                f"waitpoint-listen:{self.schema}",
                ports,
            )
            for row in pids:
                await conn.execute("SELECT pg_terminate_backend($1)", row["pid"])
        finally:
            await conn.close()
        return f"{len(pids)} backend(s)"

    # the checks

    def oracle_lines(self) -> list[list[str]]:
        if not self.oracle.exists():
            return []
        return [line.split() for line in self.oracle.read_text().splitlines()]

    def pauses_of(self, pid: int) -> list[tuple[float, float]]:
        index = next(i for i, w in enumerate(self.workers) if w.pid == pid)
        return [(n.start, n.end) for n in self.nemeses if n.kind == "pause" and n.worker == index]

    def worker_log_text(self, i: int) -> str:
        return (self.workdir / f"worker-{i}.log").read_text(errors="replace")

    def worker_log(self, i: int) -> list[dict[str, Any]]:
        lines = []
        for line in self.worker_log_text(i).splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def check(self, engine: Any, run_ids: list[str]) -> tuple[list[Check], dict[str, Any]]:
        from engine.models import RunStatus

        checks: list[Check] = []
        stats: dict[str, Any] = {}
        lines = self.oracle_lines()
        lease = self.config.lease_seconds
        grace = lease / 3 + 1.0  # one lease-loop turn after waking, and a loaded machine

        # 1. one terminal state each, with the right output
        runs = []
        for offset in range(0, len(run_ids), 50):
            batch = run_ids[offset : offset + 50]
            runs += await asyncio.gather(*(engine.runs.retrieve(r) for r in batch))
        wrong: list[str] = []
        for n, run in enumerate(runs):
            events = await engine.storage.get_events(run.id)
            finished = sum(1 for e in events if e.kind == "finished")
            out = run.output or {}
            if run.status is not RunStatus.COMPLETED or finished != 1:
                wrong.append(f"{run.id} {run.status.value} finished {finished}x")
            elif out.get("n") != n or out.get("child", {}).get("parent") != run.id:
                wrong.append(f"{run.id} output {out}")
        checks.append(
            Check(
                "one terminal state, the right output",
                not wrong,
                f"{len(runs) - len(wrong)} of {len(runs)} COMPLETED once; {wrong[:3]}",
            )
        )

        # 2. every acknowledged completion reached its run
        by_token = {(r.output or {}).get("token"): r for r in runs}
        lost = [
            t
            for t, data in self.acknowledged.items()
            if t not in by_token or by_token[t].output.get("data") != data
        ]
        checks.append(
            Check(
                "every acknowledged completion seen",
                not lost and len(self.acknowledged) == len(runs),
                f"{len(self.acknowledged)} acknowledged, lost {lost[:3]}",
            )
        )

        # 3. no overlapping attempts (a paused worker's may run on just past its waking)
        starts: dict[tuple[str, str], tuple[float, int]] = {}
        ends: dict[tuple[str, str], float] = {}
        for f in lines:
            if f[0] == "start":
                starts[(f[1], f[2])] = (float(f[4]), int(f[3]))
            elif f[0] == "end":
                ends[(f[1], f[2])] = float(f[4])
        attempts: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
        unended = []
        for (run_id, epoch), (start, pid) in starts.items():
            if (run_id, epoch) not in ends:
                unended.append(run_id)
                continue
            attempts[run_id].append((start, ends[(run_id, epoch)], int(epoch), pid))
        overlaps, excused = [], 0
        for run_id, spans in attempts.items():
            spans.sort()
            for first, second in itertools.pairwise(spans):
                if second[0] >= first[1]:
                    continue
                # the stale one (the older epoch) may run on briefly if its worker was paused
                # and woke just before: its writes are fenced
                stale = min(first, second, key=lambda span: span[2])
                began = second[0]
                woke = [p1 for p0, p1 in self.pauses_of(stale[3]) if p0 <= began <= p1 + grace]
                if woke and stale[1] <= woke[0] + grace:
                    excused += 1
                else:
                    overlaps.append(
                        f"{run_id}: epoch {second[2]} (pid {second[3]}) began"
                        f" {first[1] - began:.3f}s before epoch {first[2]} (pid {first[3]}) ended"
                    )
        checks.append(
            Check(
                "no two attempts of a run overlapped",
                not overlaps and not unended,
                f"{sum(map(len, attempts.values()))} attempts; {excused} ran on briefly"
                f" after a pause; {overlaps[:3]}; never ended: {unended[:3]}",
            )
        )
        stats["attempts"] = sum(map(len, attempts.values()))
        stats["take-overs (worker_lost)"] = 0

        # 4. a step ran again only where no execution of it was journaled yet
        executions: dict[tuple[str, str], list[str]] = defaultdict(list)
        for f in lines:
            if f[0] == "step":
                executions[(f[1], f[3])].append(f[4])
        redone, bad = 0, []
        children = {}
        for run in runs:
            out = run.output or {}
            steps = dict(out.get("steps", {}))
            for name, journaled in steps.items():
                ran = executions[(run.id, name)]
                redone += len(ran) > 1
                if not ran or ran[-1] != journaled:
                    bad.append(f"{run.id} {name}: journaled {journaled}, ran {ran}")
            child = out.get("child") or {}
            children[child.get("step")] = run.id
        child_steps = {k: v for k, v in executions.items() if k[1] == "child"}
        for (child_id, _), ran in child_steps.items():
            if not any(execution in children for execution in ran[-1:]):
                bad.append(f"child {child_id}: its last execution {ran[-1:]} not journaled")
        checks.append(
            Check(
                "a journaled step never ran again",
                not bad,
                f"{redone} steps ran more than once (cut off before journaling); {bad[:3]}",
            )
        )

        # 5. no durable sleep ended early
        early = [
            f
            for f in lines
            if f[0] == "slept" and float(f[4]) < float(f[2]) + int(f[3]) / 1000 - 0.002
        ]
        slept = sum(1 for f in lines if f[0] == "slept")
        resumed: dict[str, float] = {}  # each run's first resume after its sleep: how late
        for f in lines:
            if f[0] == "slept" and f[1] not in resumed:
                resumed[f[1]] = float(f[4]) - float(f[2]) - int(f[3]) / 1000
        if resumed:
            late = sorted(resumed.values())
            stats["sleep lateness p50 / p99 / max"] = " / ".join(
                f"{late[int(q * (len(late) - 1))]:.2f} s" for q in (0.5, 0.99, 1.0)
            )
        checks.append(
            Check(
                "no timer fired early",
                not early and slept > 0,
                f"{slept} sleeps ended, early: {early[:3]}",
            )
        )

        # 6. a worker cut off past its lease stopped its attempts itself, and said so
        expiring = {
            i: {
                e.get("run_id")
                for e in self.worker_log(i)
                if e.get("event") == "run.lease_expiring"
            }
            for i in range(self.config.workers)
        }
        # the lease was last renewed at most one lease before the cut began: by then plus
        # the lease (and the expiry loop's pause on a loaded machine), the attempt was over
        unstopped, stopped = [], 0
        for nemesis in self.nemeses:
            if nemesis.kind not in ("cut", "drop") or nemesis.end - nemesis.start <= lease:
                continue
            pid = self.workers[nemesis.worker].pid
            for run_id, spans in attempts.items():
                for begun, ended, number, owner in spans:
                    if owner != pid or not begun < nemesis.start < ended:
                        continue
                    if ended > nemesis.start + lease + 0.25:
                        over = ended - nemesis.start - lease
                        unstopped.append(f"{run_id} epoch {number} ended {over:.2f}s late")
                    elif run_id in expiring[nemesis.worker]:
                        stopped += 1
        long_cuts = sum(
            1 for n in self.nemeses if n.kind in ("cut", "drop") and n.end - n.start > lease
        )
        checks.append(
            Check(
                "cut off past the lease, a worker stopped its attempts itself",
                not unstopped,
                f"{long_cuts} long cuts, {stopped} attempts stopped by their worker,"
                f" {sum(map(len, expiring.values()))} run.lease_expiring logged;"
                f" {unstopped[:3]}",
            )
        )

        # the workers are all still up
        dead = [i for i, w in enumerate(self.workers) if w.poll() is not None]
        checks.append(Check("every worker survived", not dead, f"exited: {dead}"))
        taken = 0
        for run in runs:
            events = await engine.storage.get_events(run.id)
            taken += sum(1 for e in events if e.kind == "worker_lost")
        stats["take-overs (worker_lost)"] = taken
        return checks, stats

    async def run(self) -> Report:
        from engine import Engine

        config = self.config
        self.start()
        began = time.time()
        stats: dict[str, Any] = {}
        run_ids: list[str] = []
        async with Engine(self.url) as engine:
            await self.workers_live(engine)
            began = time.time()
            stop = asyncio.Event()
            completer = asyncio.create_task(self.complete_tokens(engine, stop))
            try:
                load = asyncio.create_task(self.trigger(engine, run_ids, began + config.seconds))
                try:
                    await self.act(began + config.seconds)
                    await load
                finally:
                    load.cancel()
                for i in range(config.workers):  # everything heals; the system settles
                    self.heal(i)
                settled = await self.settle(engine, run_ids, config.settle_timeout)
            finally:
                stop.set()
                await completer
            checks, stats = await self.check(engine, run_ids)
            checks.insert(0, Check("settled", settled, f"{time.time() - began:.0f} s in all"))
        counts = Counter(n.kind for n in self.nemeses)
        stats = {
            "runs": config.runs,
            "workers": config.workers,
            "lease": f"{config.lease_seconds:g} s",
            "nemeses": dict(counts),
            "long cuts (> lease)": sum(
                1
                for n in self.nemeses
                if n.kind in ("cut", "drop") and n.end - n.start > config.lease_seconds
            ),
            "seconds of nemeses": round(config.seconds),
            **stats,
        }
        return Report(self.seed, checks, stats)

    async def settle(self, engine: Any, run_ids: list[str], timeout: float) -> bool:
        """Wait until every run triggered (and every child) has ended; False after
        ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            going = await engine.runs.list(status=GOING, limit=1)
            if not going.data and await self.count(engine, ENDED, FLOW) == len(run_ids):
                return True
            await asyncio.sleep(0.5)
        return False

    async def count(self, engine: Any, status: list[str], task: str) -> int:
        total, after = 0, None
        while True:
            page = await engine.runs.list(status=status, task=task, limit=100, after=after)
            total += len(page.data)
            if page.next_cursor is None:
                return total
            after = page.next_cursor

    async def workers_live(self, engine: Any, timeout: float = 60) -> None:
        """Return once every worker has said it is up (a nemesis at its start would only
        stop it from starting: a worker that cannot reach its database at start exits)."""
        deadline = time.time() + timeout
        while len([w for w in await engine.workers.list() if w.live]) < self.config.workers:
            dead = [i for i, w in enumerate(self.workers) if w.poll() is not None]
            if dead or time.time() > deadline:
                logs = {i: self.worker_log_text(i)[-2000:] for i in range(len(self.workers))}
                raise RuntimeError(f"the workers did not all start (exited: {dead}): {logs}")
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def workdir_for(config: PartitionConfig) -> Iterator[Path]:
    if config.workdir is not None:
        config.workdir.mkdir(parents=True, exist_ok=True)
        yield config.workdir
        return
    path = Path(tempfile.mkdtemp(prefix="waitpoint-partitions-"))
    try:
        yield path
    finally:
        if not config.keep:
            shutil.rmtree(path, ignore_errors=True)


async def run_partitions(config: PartitionConfig) -> Report:
    reason = why_not_possible()
    if reason is not None:
        raise RuntimeError(reason)
    seed = config.seed if config.seed is not None else random.randrange(1_000_000)
    with workdir_for(config) as workdir:
        harness = Harness(config, seed, workdir)
        try:
            report = await harness.run()
        finally:
            harness.stop()
            if not config.keep:
                await harness.drop_schema()
        kept = config.keep or config.workdir is not None
        report.stats["workdir"] = str(workdir) if kept else "(removed)"
        return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        parser = argparse.ArgumentParser(prog="partitions.py relay")
        parser.add_argument("--to", required=True)
        parser.add_argument("--connections", type=Path, required=True)
        parser.add_argument("listen", nargs="+")
        args = parser.parse_args(sys.argv[2:])
        asyncio.run(relay(args.listen, args.to, args.connections))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--runs", type=int, help="runs in all (default: 2 a second)")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the folder and the schema")
    args = parser.parse_args()
    config = PartitionConfig(
        runs=args.runs or int(args.minutes * 120),
        seconds=args.minutes * 60,
        lease_seconds=args.lease,
        seed=args.seed,
        workdir=args.workdir,
        keep=args.keep,
    )
    report = asyncio.run(run_partitions(config))
    print(report.table())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
