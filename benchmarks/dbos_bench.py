"""The same workloads on DBOS Transact, for the ratio column (run in its own process).

    python benchmarks/dbos_bench.py --db /tmp/dbos.sqlite --workload wait --n 1000

Prints one JSON line: ``{"workload", "n", "seconds", "runs_per_s"}``.

DBOS executes workflows in the process that starts them, so here one process does it all:
it starts N workflows with ``DBOS.start_workflow_async``; each runs one ``@DBOS.step``, then
(``wait``) announces itself on an in-memory queue and waits in ``DBOS.recv_async``; a sender
coroutine takes the announced ids and calls ``DBOS.send_async`` (the completion). The clock
runs from the first start to the last workflow's result. System database: SQLite
(``sqlite:///...``), with SQLite's default ``synchronous=FULL`` and DBOS's own journal mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from typing import Any

from dbos import DBOS, DBOSConfig

_announced: asyncio.Queue[str] | None = None


@DBOS.step()
async def prepare(i: int) -> int:
    return i


@DBOS.workflow()
async def trivial_workflow(i: int) -> dict[str, Any]:
    return {"i": await prepare(i)}


@DBOS.workflow()
async def wait_workflow(i: int) -> dict[str, Any]:
    await prepare(i)
    assert _announced is not None
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None
    _announced.put_nowait(workflow_id)
    message = await DBOS.recv_async("done", timeout_seconds=3600)
    return {"ok": message is not None}


async def _bounded(n: int, limit: int, make: Any) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def main(args: argparse.Namespace) -> None:
    global _announced
    _announced = asyncio.Queue()
    config: DBOSConfig = {
        "name": "waitpoint-bench",
        "system_database_url": f"sqlite:///{args.db}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        sent = 0

        async def sender() -> None:
            nonlocal sent
            assert _announced is not None
            pending: set[asyncio.Task[None]] = set()
            while sent < args.n:
                workflow_id = await _announced.get()
                task = asyncio.create_task(DBOS.send_async(workflow_id, {"ok": 1}, "done"))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if pending:
                await asyncio.gather(*pending)

        workflow = wait_workflow if args.workload == "wait" else trivial_workflow
        started = time.perf_counter()
        sending = asyncio.create_task(sender()) if args.workload == "wait" else None
        handles = await _bounded(
            args.n, args.concurrency, lambda i: DBOS.start_workflow_async(workflow, i)
        )
        results = await asyncio.gather(*(h.get_result() for h in handles))
        seconds = time.perf_counter() - started
        if sending is not None:
            await sending
        ok = sum(1 for r in results if r)
        print(
            json.dumps(
                {
                    "workload": args.workload,
                    "n": args.n,
                    "ok": ok,
                    "seconds": seconds,
                    "runs_per_s": args.n / seconds,
                    "dbos_version": _version(),
                }
            ),
            flush=True,
        )
    finally:
        DBOS.destroy(destroy_registry=False)


def _version() -> str:
    from importlib.metadata import version

    return version("dbos")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--workload", choices=["wait", "trivial"], default="wait")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("DBOS__APPVERSION", "bench")
    asyncio.run(main(args))
