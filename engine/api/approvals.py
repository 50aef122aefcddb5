"""``/api/v1/approvals``: the approvals runs wait for (``request_approval``), and votes.

List and retrieve (the secret key), each approver's voting links (the secret key), and a
vote: with the secret key for any approver the body names, or through an approver's own
link (its public access token), as that approver only. A vote that cannot count is a 4xx
that says why and changes nothing, except a late one (410), which is kept.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..models import Approval, CompletionSource
from ..signing import DEFAULT_EXPIRES_IN, inbox_url, link_id, vote_url
from ..validation import MAX_PAGE_SIZE
from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller, Voter, approver_of, auth_of, public_url_of
from .problems import Problem

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])
router.route_class = JSONGuardRoute


class VoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approver: str | None = Field(
        default=None, description="Who votes (with the secret key; a link votes as its own)"
    )
    approve: bool = Field(default=True, description="false rejects")
    data: Any = Field(default=None, description="What the approval's schema asks for")
    reason: str | None = Field(default=None, description="Why (1-1000 characters)")


class LinksBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expiresIn: str = DEFAULT_EXPIRES_IN


def approval_json(approval: Approval) -> dict[str, Any]:
    body: dict[str, Any] = approval.model_dump(mode="json", by_alias=True)
    return body


@router.get("", summary="List approvals, newest first (ours)")
async def list_approvals(
    engine: EngineDep,
    _: SecretCaller,
    approver: str | None = None,
    run_id: Annotated[str | None, Query(alias="runId")] = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 25,
) -> dict[str, Any]:
    found = await engine.approvals.list(
        approver=approver, run_id=run_id, status=status, limit=limit
    )
    return {"data": [approval_json(a) for a in found]}


class InboxLinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approver: str
    expiresIn: str = DEFAULT_EXPIRES_IN


@router.post("/inbox-link", summary="An approver's inbox link (ours)")
async def inbox_link(request: Request, _: SecretCaller, body: InboxLinkBody) -> dict[str, Any]:
    """Signed with this server's key, starting with its public URL."""
    base, tokens = public_url_of(request), auth_of(request)
    return {"url": inbox_url(base, tokens, body.approver, body.expiresIn)}


@router.get("/{approval_id}", summary="Retrieve an approval with its approvers and votes")
async def retrieve_approval(approval_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return approval_json(await engine.approvals.retrieve(approval_id))


@router.get("/{approval_id}/receipts", summary="The signed receipts of a closed approval (ours)")
async def receipts(approval_id: str, engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    return {"data": await engine.approvals.receipts(approval_id)}


@router.post("/{approval_id}/votes", summary="Vote on an approval")
async def vote(
    approval_id: str,
    request: Request,
    engine: EngineDep,
    who: Voter,
    body: VoteBody | None = None,
) -> dict[str, Any]:
    given = body or VoteBody()
    if who.is_secret:
        if given.approver is None:
            raise Problem(422, "name the approver who votes ('approver')")
        approver, source, link = given.approver, CompletionSource.API, None
    else:
        approver = approver_of(who, approval_id)
        if given.approver is not None and given.approver != approver:
            raise Problem(403, f"this link votes as {approver}, not as {given.approver}")
        credential = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        source, link = CompletionSource.PUBLIC_TOKEN, link_id(credential)
    approval = await engine.approvals.vote(
        approval_id,
        approver,
        approve=given.approve,
        data=given.data,
        reason=given.reason,
        source=source,
        link_id=link,
    )
    return {"approval": approval_json(approval)}


@router.post("/{approval_id}/links", summary="Each approver's own voting link (ours)")
async def links(
    approval_id: str,
    request: Request,
    engine: EngineDep,
    _: SecretCaller,
    body: LinksBody | None = None,
) -> dict[str, Any]:
    """Signed with this server's key, starting with its public URL."""
    expires_in = (body or LinksBody()).expiresIn
    approval = await engine.approvals.retrieve(approval_id)
    base, tokens = public_url_of(request), auth_of(request)
    return {
        "links": {
            a.approver: vote_url(base, tokens, approval.id, a.approver, expires_in)
            for a in approval.approvers
        }
    }
