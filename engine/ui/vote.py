"""An approver's voting page: ``/ui/vote/{approval_id}?t=<public access token>``.

A standalone page (no navigation, no session) for one approver of one approval
(``request_approval``). The link's public access token carries exactly one scope,
``vote:approvals:<id>:<approver>`` (``engine.signing.vote_url``): the approver is read from it,
never from the form, so a link votes as the person it was made for and no one else. Without
a valid link it shows an error page and no form (as the one-link approval page does: 401 for
a missing, malformed or expired link, counted against the sender; 403 for the key itself or
a link to another approval or another kind of link; 404 for an unknown approval).

The page shows what is asked (title, description, context), who is asked, the votes so far
when the approval shows them (``show_votes``), the approver's own vote, and a form: the
approval's schema as fields (``forms``), an optional reason, Approve and Reject. A vote is
cast as ``CompletionSource.PUBLIC_TOKEN`` with the link's ``signing.link_id``: it came with a
link's public access token, as a one-link approval does, not from the signed-in dashboard
(``ui``), and the receipt names the link. A closed approval shows how it closed (410 when it
timed out or was cancelled, 200 with the outcome when it was decided).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response

from ..errors import ApprovalClosedError, ValidationError, VoteRefusedError
from ..models import Approval, ApprovalVote, CompletionSource, WaitpointStatus
from ..signing import link_id, voter_of
from ..storage.approvals import current_votes
from ..validation import clean_reason
from .completion import prepared_form, read_checked
from .forms import APPROVED, FORM_ERROR, PREFIX, Form, Reading
from .routing import (
    PageError,
    PageRoute,
    engine_of,
    form_pairs,
    link_caller,
    same_site,
    self_link,
    ui_of,
)

router = APIRouter(prefix="/ui/vote", route_class=PageRoute, include_in_schema=False)

CLOSED_WITHOUT_DECISION = (WaitpointStatus.TIMED_OUT, WaitpointStatus.CANCELLED)
VOTE = "vote"
REASON = "reason"
_CHOICES = {"approve": True, "reject": False}


@dataclass(frozen=True)
class Ballot:
    """The approval a link votes on, and the approver it votes as."""

    approval: Approval
    approver: str

    @property
    def own(self) -> ApprovalVote | None:
        """The approver's vote that counts now, if any."""
        return current_votes(self.approval).get(self.approver)

    @property
    def can_vote(self) -> bool:
        approval = self.approval
        return approval.status is WaitpointStatus.WAITING and (
            self.own is None or approval.allow_change
        )


@dataclass
class Filled:
    """What a submitted vote form said: the choice, the data, the reason, what is wrong."""

    reading: Reading = field(default_factory=Reading)
    approve: bool | None = None
    reason: str = ""
    reason_error: str = ""

    @property
    def refused(self) -> bool:
        return bool(self.reading.errors or self.reason_error)


def voter(scopes: frozenset[str], approval_id: str) -> str:
    """The approver the link's one scope names for this approval, else a 403 page."""
    found = [voter_of(scope, approval_id) for scope in scopes]
    if len(found) != 1 or found[0] is None:
        raise PageError(403, "Not allowed", "This link is not for voting on this approval.")
    return found[0]


async def _ballot(request: Request, approval_id: str, t: str | None) -> Ballot:
    approver = voter(link_caller(request, t).scopes, approval_id)
    approval = await engine_of(request).approvals.retrieve(approval_id)
    if approver not in {person.approver for person in approval.approvers}:
        raise PageError(403, "Not allowed", "This approval does not ask whom this link is for.")
    return Ballot(approval, approver)


def data_form(approval: Approval) -> Form | None:
    """The fields of a vote's data (the approval's schema); None when it has no schema."""
    if approval.data_schema is None:
        return None
    return prepared_form(approval.data_schema)


async def read_vote(approval: Approval, pairs: Sequence[tuple[str, str]]) -> Filled:
    """The vote a submitted form casts, with a message next to each part that is wrong."""
    sent = dict(pairs)  # the last value wins, as in forms.read_form
    filled = Filled(reason=sent.get(REASON, ""))
    filled.approve = _CHOICES.get(sent.get(VOTE, ""))
    if filled.approve is None:
        filled.reading.errors[FORM_ERROR] = "choose Approve or Reject"
    if filled.reason.strip():
        try:
            clean_reason(filled.reason)
        except ValidationError as exc:
            filled.reason_error = str(exc)
    form = data_form(approval)
    if form is not None:
        if form.approval and filled.approve is not None:  # the schema's own `approved`
            pairs = [*pairs, (PREFIX + APPROVED, "true" if filled.approve else "false")]
        reading = await read_checked(form, approval.data_schema, pairs)
        reading.errors.update(filled.reading.errors)
        filled.reading = reading
    return filled


def _show(
    request: Request,
    ballot: Ballot,
    *,
    filled: Filled | None = None,
    status_code: int | None = None,
    **extra: Any,
) -> Response:
    approval = ballot.approval
    if status_code is None:
        status_code = 410 if approval.status in CLOSED_WITHOUT_DECISION else 200
    filled = filled or Filled()
    form = data_form(approval)
    votes = sorted(current_votes(approval).values(), key=lambda vote: vote.at)
    context: dict[str, Any] = {"result": None, "late": False, **extra}
    return ui_of(request).renderer.page(
        request,
        "vote.html",
        status_code=status_code,
        standalone=True,
        approval=approval,
        approver=ballot.approver,
        own=ballot.own,
        can_vote=ballot.can_vote and context["result"] is None,
        votes=votes if approval.show_votes else [],
        form=form or Form(),
        with_data=form is not None,
        reading=filled.reading,
        reason=filled.reason,
        reason_error=filled.reason_error,
        action=self_link(request),
        **context,
    )


@router.get("/{approval_id}")
async def vote_page(request: Request, approval_id: str, t: str | None = None) -> Response:
    return _show(request, await _ballot(request, approval_id, t))


@router.post("/{approval_id}")
async def cast_vote(request: Request, approval_id: str, t: str | None = None) -> Response:
    ballot = await _ballot(request, approval_id, t)
    same_site(request)  # after the link: without one the answer stays 401, whoever sent it
    assert t is not None  # the link was checked
    approvals = engine_of(request).approvals
    filled = await read_vote(ballot.approval, await form_pairs(request))
    if filled.refused or filled.approve is None:
        if ballot.approval.status is not WaitpointStatus.WAITING:
            return _show(request, ballot)
        return _show(request, ballot, filled=filled, status_code=422)
    try:
        after = await approvals.vote(
            approval_id,
            ballot.approver,
            approve=filled.approve,
            data=filled.reading.data,
            reason=filled.reason.strip() or None,
            source=CompletionSource.PUBLIC_TOKEN,
            link_id=link_id(t),
        )
    except ApprovalClosedError:  # closed meanwhile: the engine kept the vote as a late one
        closed = Ballot(await approvals.retrieve(approval_id), ballot.approver)
        return _show(request, closed, late=True)
    except (VoteRefusedError, ValidationError) as exc:  # nothing changed
        now = Ballot(await approvals.retrieve(approval_id), ballot.approver)
        filled.reading.errors[FORM_ERROR] = str(exc)
        return _show(request, now, filled=filled, status_code=422)
    return _show(request, Ballot(after, ballot.approver), result=filled.approve)
