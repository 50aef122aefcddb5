"""A SQLite database that fills up under running tasks: the run whose write does not fit is
handed back and tried again, the others go on, nothing is failed for the database's fault."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from typing import Any

from engine import Engine, RunStatus, Worker, step, task

BIG = "x" * 400_000
RAN: list[str] = []


def produce(size: str) -> str:
    RAN.append(size)
    return BIG if size == "big" else "small"


@task("sf-write")
async def write(payload: dict[str, Any]) -> int:
    try:
        value: str = await step("produce", produce, payload["size"])
    except Exception:  # a task may catch everything: a full database is not its error
        return -1
    return len(value)


async def until_ran(name: str) -> None:
    for _ in range(500):
        if name in RAN:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never ran")


async def set_max_pages(engine: Engine, extra: int | None) -> None:
    """Cap the file at its size plus ``extra`` pages (None: lift the cap), on the writer."""

    def op(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra if extra else 1_073_741_823}")

    await engine.storage._writer.run(op)  # type: ignore[attr-defined]


async def test_a_run_whose_write_does_not_fit_is_handed_back_and_the_others_go_on(
    sqlite_url: str,
) -> None:
    RAN.clear()
    async with Engine(sqlite_url) as engine:
        worker = Worker(engine, {"sf-write": write}, poll_seconds=0.05)
        runner = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.started.wait(), 5)
            await set_max_pages(engine, 40)  # room for small writes, not for 400 kB
            big = await engine.trigger("sf-write", {"size": "big"})
            await until_ran("big")
            small = [await engine.trigger("sf-write", {"size": "small"}) for _ in range(5)]
            for run in small:
                done = await engine.wait_for_run(run.id, timeout=15)
                assert done.output == len("small")
            assert (await engine.runs.retrieve(big.id)).status in (
                RunStatus.QUEUED,
                RunStatus.EXECUTING,
            )
            await set_max_pages(engine, None)
            done = await engine.wait_for_run(big.id, timeout=15)
        finally:
            worker.stop(graceful=False)
            await asyncio.wait_for(runner, 10)
    assert done.status is RunStatus.COMPLETED and done.output == len(BIG)
    assert done.attempt_count == 1  # handed back, not a failed attempt
    assert RAN.count("big") >= 2  # its body ran again: its result never fit


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""
GATE: dict[str, asyncio.Event] = {}


async def gated() -> str:
    RAN.append("gated")
    await GATE["open"].wait()
    return "written"


@task("sf-locked")
async def locked(payload: None) -> str:
    try:
        value: str = await step("write", gated)
    except Exception:
        return "swallowed"
    return value


async def test_a_run_whose_write_meets_another_process_holding_the_lock_is_tried_again(
    sqlite_url: str,
) -> None:
    RAN.clear()
    GATE["open"] = asyncio.Event()
    async with Engine(sqlite_url) as engine:
        # give up on the lock after about half a second (the defaults wait a minute)
        engine.storage._writer._busy_seconds = 0.3  # type: ignore[attr-defined]
        await engine.storage._writer.run(  # type: ignore[attr-defined]
            lambda conn: conn.execute("PRAGMA busy_timeout = 100")
        )
        worker = Worker(engine, {"sf-locked": locked}, poll_seconds=0.05, lease_seconds=2)
        runner = asyncio.create_task(worker.run())
        holder = None
        try:
            await asyncio.wait_for(worker.started.wait(), 5)
            run = await engine.trigger("sf-locked")
            await until_ran("gated")
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                HOLDER,
                sqlite_url.removeprefix("sqlite:///"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert holder.stdout is not None and holder.stdin is not None
            assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"held\n"
            GATE["open"].set()  # the step's result meets the lock for longer than the budget
            await asyncio.sleep(1)
            assert (await engine.runs.retrieve(run.id)).status is not RunStatus.COMPLETED
            holder.stdin.write(b"go\n")
            await holder.stdin.drain()
            assert await asyncio.wait_for(holder.wait(), 10) == 0
            done = await engine.wait_for_run(run.id, timeout=20)
        finally:
            if holder is not None and holder.returncode is None:
                holder.kill()
                await holder.wait()
            worker.stop(graceful=False)
            await asyncio.wait_for(runner, 10)
    assert done.status is RunStatus.COMPLETED and done.output == "written"
    assert done.attempt_count == 1
    assert RAN.count("gated") == 2  # the body ran again: its result was never journaled
