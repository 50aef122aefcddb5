"""``request_approval``: a run waits for people to decide, by a rule, with reminders and
escalation, and keeps the votes as proof.

One durable call (``approval:<title>#n``): the first execution makes the approval (its
approvers asked, a notice each through the worker's notifier) and parks the run; each vote
is one transaction (``storage.approvals``) and the one that meets the rule closes it and
wakes the run, which gets an ``ApprovalDecision`` (the same one on every replay: it is
journaled). The deadline (``timeout``) closes it as not approved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import anyio
from pydantic import BaseModel

from .context import Recorded, RunContext
from .durations import Deadline, Timeout, duration_ms
from .errors import ValidationError
from .logs import get_logger
from .models import ApprovalVote, WaitpointStatus
from .notifiers import Notifier, NotifyReason
from .storage import JournalWrite, NewApproval, Notice, Storage
from .validation import (
    MAX_DESCRIPTION_LENGTH,
    MAX_TITLE_LENGTH,
    clean_approver,
    clean_token_context,
    clean_token_text,
    data_schema_of,
)

if TYPE_CHECKING:
    from .client import Engine

log = get_logger("engine.approvals")

MAX_APPROVERS = 100
FIRE_BATCH = 100
"""Approvals whose reminders or escalations one transaction fires."""
MAX_FIRING_BATCHES = 50
NOTICE_BATCH = 20
"""Notices one worker delivers at once."""
NOTICE_LEASE_MS = 10 * 60_000
"""How long a claimed notice is this worker's: longer than a notifier's retries take."""
NOTICE_ROUNDS = 3
"""Deliveries of one notice (each with the notifier's own retries) before it gives up."""
NOTICE_RETRY_MS = 60_000
LINK_LIFE = "7d"
"""How long the voting link in a notice works."""


@dataclass(frozen=True)
class ApprovalDecision:
    """How an approval closed: ``approved`` (its quorum approved) or not (rejected by its
    rule, or ``timed_out``), with every vote that counted, in order."""

    approval_id: str
    approved: bool
    timed_out: bool
    votes: list[ApprovalVote]

    @property
    def rejected(self) -> bool:
        return not self.approved and not self.timed_out

    @property
    def reasons(self) -> list[str]:
        """The reasons the rejecting approvers gave."""
        return [v.reason for v in self.votes if not v.approve and v.reason]

    @property
    def reason(self) -> str | None:
        """The first rejection's reason, if one was given."""
        return next(iter(self.reasons), None)


async def request_approval(
    title: str,
    *,
    approvers: Sequence[str],
    quorum: int = 1,
    description: str | None = None,
    context: dict[str, Any] | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    reject_on: str = "any",
    allow_change: bool = False,
    show_votes: bool = True,
    remind_every: str | timedelta | None = None,
    escalate: Sequence[tuple[str | timedelta, Sequence[str]]] = (),
    timeout: Timeout | None = None,
) -> ApprovalDecision:
    """Park the run until ``quorum`` of ``approvers`` approve (approved), or the rejection
    rule is met (``reject_on="any"``: the first rejection; ``"majority"``: more than half of
    those asked; either way, once the quorum can no longer be reached), or ``timeout``
    passes (not approved, ``timed_out``).

    Each approver gets a link of their own (``engine.approvals.links``) and a notice through
    the worker's notifier; ``remind_every`` reminds those who have not voted, and each
    ``escalate`` step (``("24h", ["manager@example.com"])``, measured from the request) asks
    more people if the approval is still open. ``schema`` is what each approver fills in
    (a vote's ``data``). ``allow_change`` lets an approver change their vote while it is open;
    ``show_votes`` shows the votes so far on the approval page.
    """
    new = approval_request(
        title,
        approvers=approvers,
        quorum=quorum,
        description=description,
        context=context,
        schema=schema,
        reject_on=reject_on,
        allow_change=allow_change,
        show_votes=show_votes,
        remind_every=remind_every,
        escalate=escalate,
        timeout=timeout,
    )
    context_ = RunContext.current()

    async def execute(write: JournalWrite) -> Recorded | None:
        decision = await context_.storage.wait_on_approval(new, write, context_.elapsed_ms())
        if decision is None:
            log.info("run.suspended", approval=new.title, approvers=len(new.approvers))
            return None
        return Recorded(decision)

    value = await context_.durable_call(
        "approval", new.title, execute=execute, decode=_as_is, waits="request_approval"
    )
    return decision_from(value)


def approval_request(
    title: str,
    *,
    approvers: Sequence[str],
    quorum: int,
    description: str | None,
    context: dict[str, Any] | None,
    schema: type[BaseModel] | dict[str, Any] | None,
    reject_on: str,
    allow_change: bool,
    show_votes: bool,
    remind_every: str | timedelta | None,
    escalate: Sequence[tuple[str | timedelta, Sequence[str]]],
    timeout: Timeout | None,
) -> NewApproval:
    """The checked ``NewApproval`` (a ``ValidationError`` names the first problem)."""
    clean_title = clean_token_text(title, "title", MAX_TITLE_LENGTH)
    if clean_title is None:
        raise ValidationError("an approval needs a title (1-200 characters)")
    people = clean_approvers(approvers, "approvers")
    steps: list[tuple[int, list[str]]] = []
    for index, step in enumerate(escalate):
        if not isinstance(step, tuple | list) or len(step) != 2:
            raise ValidationError(
                f"escalate[{index}] must be (after, [approvers]), like ('24h', ['boss@x.org'])"
            )
        after = duration_ms(step[0])
        if steps and after <= steps[-1][0]:
            raise ValidationError("escalate steps must come later one after another")
        steps.append((after, clean_approvers(step[1], f"escalate[{index}] approvers")))
    everyone = set(people).union(*(set(p) for _, p in steps))
    if len(everyone) > MAX_APPROVERS:
        raise ValidationError(f"an approval asks at most {MAX_APPROVERS} approvers")
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise ValidationError(f"quorum must be a whole number from 1 on, got {quorum!r}")
    if quorum > len(everyone):
        raise ValidationError(
            f"quorum {quorum} is more than the {len(everyone)} approvers that can be asked"
        )
    if reject_on not in ("any", "majority"):
        raise ValidationError(f"reject_on must be 'any' or 'majority', not {reject_on!r}")
    data_schema = data_schema_of(schema)
    return NewApproval(
        title=clean_title,
        approvers=people,
        quorum=quorum,
        reject_on=reject_on,
        allow_change=bool(allow_change),
        show_votes=bool(show_votes),
        description=clean_token_text(description, "description", MAX_DESCRIPTION_LENGTH),
        context=clean_token_context(context),
        data_schema=data_schema,
        remind_every_ms=None if remind_every is None else duration_ms(remind_every),
        escalations=steps,
        deadline=None if timeout is None else Deadline.of(timeout),
    )


def clean_approvers(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValidationError(f"{what} must be a non-empty list of approvers (e-mail addresses)")
    people = [clean_approver(person) for person in value]
    if len(set(people)) < len(people):
        raise ValidationError(f"{what} names an approver twice")
    return people


async def fire_approvals(storage: Storage) -> int | None:
    """Fire the reminders and escalations due now, a batch at a time (a worker's timer loop
    and the test clock); returns when the next one falls due (None: none)."""
    for _ in range(MAX_FIRING_BATCHES):
        next_ms = await storage.fire_due_approvals(FIRE_BATCH)
        if next_ms is None or next_ms > storage.now_ms():
            return next_ms
    return storage.now_ms()  # more still due: the next turn goes on


async def deliver_notices(engine: Engine, notifier: Notifier, limit: int = NOTICE_BATCH) -> int:
    """Deliver the notices due (a worker's notice loop): each approver told through
    ``notifier`` with their own voting link, the outcome recorded. A notice a worker claimed
    and never recorded (it died) is claimed again once its claim ran out: at least once. A
    failed delivery is tried again later, ``NOTICE_ROUNDS`` times in all. Returns how many
    were claimed."""
    storage = engine.storage
    notices = await storage.claim_notices(limit, NOTICE_LEASE_MS)

    async def deliver(notice: Notice) -> None:
        approval = await engine.approvals.retrieve(notice.approval_id)
        if approval.status is not WaitpointStatus.WAITING:
            await storage.record_notice(
                notice, ok=False, channel="none", error="the approval closed first", retry_ms=None
            )
            return
        link = await engine.approvals.link(approval.id, notice.approver, expires_in=LINK_LIFE)
        reason = cast(NotifyReason, notice.reason)  # written by the storage from that set
        delivery = await notifier.notify(approval, notice.approver, link, reason)
        again = not delivery.ok and notice.attempts < NOTICE_ROUNDS
        await storage.record_notice(
            notice,
            ok=delivery.ok,
            channel=delivery.channel,
            error=delivery.error,
            retry_ms=NOTICE_RETRY_MS * notice.attempts if again else None,
        )
        log.info(
            "approval.notified",
            approval_id=approval.id,
            approver=notice.approver,
            reason=notice.reason,
            ok=delivery.ok,
            channel=delivery.channel,
            error=delivery.error,
        )

    async with anyio.create_task_group() as group:
        for notice in notices:
            group.start_soon(deliver, notice)
    return len(notices)


def decision_from(value: dict[str, Any]) -> ApprovalDecision:
    return ApprovalDecision(
        approval_id=str(value.get("id", "")),
        approved=bool(value.get("approved")),
        timed_out=bool(value.get("timedOut")),
        votes=[ApprovalVote.model_validate(v) for v in value.get("votes", [])],
    )


def _as_is(value: Any) -> Any:
    return value
