"""A refund two of three people must approve: request_approval, votes, the decision, receipts.

    python examples/quorum_approval.py

Runs a worker in this process on a throw-away SQLite file (or WAITPOINT_DATABASE_URL), with a
notifier that prints each approver's link instead of e-mailing it, casts the votes from
Python (an approver would open their link), and finishes by itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Approval, Delivery, Engine, Worker, request_approval, task
from engine.logs import configure_logging


class RefundDecision(BaseModel):
    amount: float
    """What each approver agrees to refund."""


@task("quorum-refund")
async def quorum_refund(order: dict) -> dict:
    decision = await request_approval(
        f"Refund order {order['id']} ({order['amount']} EUR)",
        description="Parcel arrived damaged; photos in the ticket.",
        context={"order": order["id"], "amount": order["amount"]},
        approvers=["ana@example.com", "li@example.com", "sam@example.com"],
        quorum=2,  # 2 of 3 approve; with reject_on="majority", one rejection is not enough
        reject_on="majority",
        schema=RefundDecision,
        remind_every="4h",
        escalate=[("24h", ["manager@example.com"])],
        timeout="72h",
    )
    return {
        "approved": decision.approved,
        "votes": [(v.approver, v.approve, v.reason) for v in decision.votes],
    }


class PrintingNotifier:
    """Prints what an e-mail or a webhook would carry (see WebhookNotifier, EmailNotifier)."""

    def __init__(self) -> None:
        self.told: list[str] = []
        self.all_told = asyncio.Event()

    async def notify(self, approval: Approval, approver: str, link: str, reason: str) -> Delivery:
        print(f"  notice ({reason}) to {approver}: {link[:60]}...")
        self.told.append(approver)
        if len(self.told) == len(approval.approvers):
            self.all_told.set()
        return Delivery(
            channel="print",
            approver=approver,
            reason=reason,  # type: ignore[arg-type]
            attempts=1,
            ok=True,
            at=datetime.now(UTC),
        )


async def main(database_url: str) -> None:
    configure_logging("auto")  # engine events go to stderr; this script's story to stdout
    async with Engine(database_url) as engine:
        notifier = PrintingNotifier()
        worker = Worker(engine, {"quorum-refund": quorum_refund}, notifier=notifier)
        running = asyncio.create_task(worker.run())

        run = await engine.trigger("quorum-refund", {"id": 42, "amount": 19.99})
        print(f"triggered {run.id}")
        while not (approvals := await engine.approvals.list(run_id=run.id)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        approval = approvals[0]
        print(f"approval {approval.id} asks {[a.approver for a in approval.approvers]}")
        await asyncio.wait_for(notifier.all_told.wait(), 10)  # the worker tells each approver

        await engine.approvals.vote(
            approval.id, "ana@example.com", approve=False, reason="photos are blurry"
        )
        await engine.approvals.vote(approval.id, "li@example.com", data={"amount": 19.99})
        await engine.approvals.vote(approval.id, "sam@example.com", data={"amount": 19.99})
        finished = await engine.wait_for_run(run.id, timeout=30)
        print(f"run {finished.status}: {finished.output}")

        receipts = await engine.approvals.receipts(approval.id)
        for receipt in receipts:
            await engine.tokens.verify_receipt(receipt)  # raises if one was changed
        print(f"{len(receipts)} receipts verified; the last: {receipts[-1]['answeredBy']}")

        worker.stop()
        await running


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("WAITPOINT_SECRET_KEY", "wp_example_" + secrets.token_urlsafe(32))
        os.environ.setdefault("WAITPOINT_PUBLIC_URL", "http://127.0.0.1:8030")
        url = os.environ.get("WAITPOINT_DATABASE_URL", f"sqlite:///{folder}/example.db")
        asyncio.run(main(url))
