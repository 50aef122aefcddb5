"""An approver's inbox: ``/ui/inbox?t=<public access token>``.

A standalone page (no navigation, no session) listing the approvals waiting for one approver,
soonest deadline first, each with who asked (its run), when it expires, whether they voted,
and a link to vote; then the last ones decided that asked them. The link's public access
token carries exactly one scope, ``read:approvals:inbox:<approver>``
(``engine.signing.inbox_url``), and the approver is read from it: whoever holds the link sees
and votes as that approver, until it expires. Each voting link is made here, on the server,
with its secret key and public URL (``signing.vote_url``), so the inbox link never needs to
carry more than its one scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from ..api.deps import auth_of, public_url_of
from ..models import Approval, ApprovalVote, WaitpointStatus
from ..signing import DEFAULT_EXPIRES_IN, inbox_owner, vote_url
from ..storage.approvals import current_votes
from .routing import PageError, PageRoute, engine_of, link_caller, ui_of

router = APIRouter(prefix="/ui/inbox", route_class=PageRoute, include_in_schema=False)

WAITING_SHOWN = 100
DECIDED_SHOWN = 25
CLOSED = (WaitpointStatus.COMPLETED, WaitpointStatus.TIMED_OUT, WaitpointStatus.CANCELLED)


@dataclass(frozen=True)
class Entry:
    """One approval in the inbox: the approver's vote on it and their link to its page."""

    approval: Approval
    own: ApprovalVote | None
    url: str


def owner(scopes: frozenset[str]) -> str:
    """The approver the link's one scope names, else a 403 page."""
    found = [inbox_owner(scope) for scope in scopes]
    if len(found) != 1 or found[0] is None:
        raise PageError(403, "Not allowed", "This link does not open an approver's inbox.")
    return found[0]


def _expiry(approval: Approval) -> tuple[bool, float]:
    """Soonest deadline first; those without one last."""
    moment = approval.expires_at
    return (moment is None, moment.timestamp() if moment else 0.0)


def _closed_at(approval: Approval) -> float:
    moment = approval.completed_at or approval.created_at
    return moment.timestamp()


@router.get("")
async def inbox(request: Request, t: str | None = None) -> Response:
    approver = owner(link_caller(request, t).scopes)
    approvals = engine_of(request).approvals
    waiting = await approvals.list(
        approver=approver, status=WaitpointStatus.WAITING, limit=WAITING_SHOWN
    )
    closed: list[Approval] = []
    for status in CLOSED:
        closed += await approvals.list(approver=approver, status=status, limit=DECIDED_SHOWN)
    decided = sorted(closed, key=_closed_at, reverse=True)[:DECIDED_SHOWN]
    public_url, tokens = public_url_of(request), auth_of(request)

    def entry(approval: Approval) -> Entry:
        url = vote_url(public_url, tokens, approval.id, approver, DEFAULT_EXPIRES_IN)
        return Entry(approval, current_votes(approval).get(approver), url)

    return ui_of(request).renderer.page(
        request,
        "inbox.html",
        standalone=True,
        approver=approver,
        waiting=[entry(a) for a in sorted(waiting, key=_expiry)],
        decided=[entry(a) for a in decided],
        more_waiting=len(waiting) >= WAITING_SHOWN,
        link_lifetime=DEFAULT_EXPIRES_IN,
    )
