"""A refund that waits for a person to approve it.

The run opens a ticket, creates a token that a reviewer completes (from Python, the CLI, or
by POSTing to the token's callback URL), sends the reviewer the link, and parks. Nothing of
the run stays in memory while it waits, for up to 24 hours; if nobody answers in time, the
refund is declined. Try it:

    waitpoint dev                                             # one terminal
    waitpoint trigger approve-refund --payload '{"order_id": 42, "amount": 19.99}'
    waitpoint tokens list --status WAITING --tag order:42     # the reviewer's token
    waitpoint tokens complete <token id> --data '{"approved": true, "reviewer": "ana"}'
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine import create_token, step, task, wait_for_token


class Refund(BaseModel):
    order_id: int
    amount: float
    reason: str = ""


class Decision(BaseModel):
    """What the reviewer sends back when completing the token."""

    approved: bool
    reviewer: str = ""
    note: str = ""


def _outbox() -> Path:
    """Where this demo 'sends' things: a local folder instead of a ticket system and email."""
    folder = Path(os.environ.get("WAITPOINT_DEMO_OUTBOX", ".waitpoint/outbox"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_ticket(refund: dict[str, Any]) -> str:
    """Record the request in the (file-based) ticket system; returns the ticket id."""
    ticket = f"T-{refund['order_id']}"
    record = {"ticket": ticket, "refund": refund, "opened_at": datetime.now(UTC).isoformat()}
    with (_outbox() / "tickets.jsonl").open("a") as file:
        file.write(json.dumps(record) + "\n")
    return ticket


def send_to_reviewer(ticket: str, token_id: str, callback_url: str) -> None:
    """'Email' the reviewer: the callback URL completes this one token, so it is a secret."""
    message = {
        "to": "refunds@example.com",
        "ticket": ticket,
        "token": token_id,
        "url": callback_url,
    }
    (_outbox() / f"review-{token_id}.json").write_text(json.dumps(message))


@task("approve-refund")
async def approve_refund(refund: Refund) -> dict[str, Any]:
    ticket = await step("open-ticket", open_ticket, refund.model_dump())
    token = await create_token(
        timeout="24h",
        tags=["refund", f"order:{refund.order_id}"],
        idempotency_key=f"refund-{refund.order_id}",
        schema=Decision,
        # what the approval page and the inbox show the reviewer
        title=f"Refund order {refund.order_id}",
        description=refund.reason or "The customer asked for their money back.",
        context={"order": refund.order_id, "amount": refund.amount, "ticket": ticket},
    )
    await step("notify", send_to_reviewer, ticket, token.id, token.url)
    result = await wait_for_token(token)  # the run parks here: no coroutine, no memory
    if not result.ok:  # timed out or cancelled
        return {"refunded": False, "ticket": ticket, "reason": str(result.error)}
    decision: Decision = result.output
    return {
        "refunded": decision.approved,
        "ticket": ticket,
        "reviewer": decision.reviewer,
        "amount": refund.amount if decision.approved else 0,
    }
