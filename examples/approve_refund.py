"""Trigger the approval flow in tasks/approvals.py, approve it, and print the result.

    python examples/approve_refund.py

Runs a worker in this process on a throw-away SQLite file (or WAITPOINT_DATABASE_URL), so it
needs nothing else running, and finishes by itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Engine, Worker
from engine.logs import configure_logging
from engine.registry import load_tasks


async def main(database_url: str) -> None:
    configure_logging("auto")  # engine events go to stderr; this script's story to stdout
    tasks = load_tasks("tasks")
    async with Engine(database_url) as engine:
        worker = Worker(engine, tasks)
        running = asyncio.create_task(worker.run())

        run = await engine.trigger("approve-refund", {"order_id": 42, "amount": 19.99})
        print(f"triggered {run.id}")

        while (run := await engine.runs.retrieve(run.id)).status != "WAITING":  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the run opens a ticket, creates a token, parks on it
        page = await engine.tokens.list(status="WAITING", tags=["order:42"])
        token = page.data[0]
        print(f"run is {run.status}, waiting on {run.waiting_on}; the reviewer's token: {token.id}")

        await engine.tokens.complete(token.id, {"approved": True, "reviewer": "ana"})
        finished = await engine.wait_for_run(run.id, timeout=30)
        print(f"run {finished.status}: {finished.output}")

        worker.stop()
        await running


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("WAITPOINT_DEMO_OUTBOX", f"{folder}/outbox")
        url = os.environ.get("WAITPOINT_DATABASE_URL", f"sqlite:///{folder}/example.db")
        asyncio.run(main(url))
