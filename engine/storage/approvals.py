"""Approvals: a decision several people make, that a run waits for (``request_approval``).

An approval is an APPROVAL waitpoint (title, description, context and data schema on its row;
the run blocks on it as on a token, and its deadline times it out as a token's does) plus its
rules (``approvals``), the people it asks (``approval_approvers``) and their votes
(``approval_votes``). A vote is one transaction that locks the waitpoint's row, so racing
votes count in turn and the one that meets the rule closes the approval, exactly once:

- approved once ``quorum`` approvers approve;
- rejected on the first rejection (``reject_on="any"``), or once a majority of the approvers
  asked (escalations included) reject (``"majority"``), or once the approvals still possible
  cannot reach the quorum.

An approver's latest vote counts (a second one only where ``allow_change``; the same vote
again changes nothing). A vote after the close is refused and kept (``late``).

Reminders and escalations are due times on the approval, fired by workers with the timers
(``fire_due_approvals``): a reminder makes a notice for each approver who has not voted, an
escalation adds its approvers and makes a notice for each. Notices are an outbox
(``approval_notices``) that workers claim, deliver through their notifier and record.
"""

from __future__ import annotations

import json
from typing import Any

from ..clock import from_ms, from_ms_or_none
from ..errors import ApprovalClosedError, ApprovalNotFoundError, VoteRefusedError
from ..models import (
    Approval,
    ApprovalNotice,
    ApprovalVote,
    Approver,
    CompletionSource,
    WaitpointStatus,
)
from .base import JournalWrite, NewApproval, NewVote, Notice
from .records import RowLike, dump_json, load_json
from .sql import Op, count, rows
from .waits import Waits

DECISION_VERSION = 1


class Approvals(Waits):
    """Approvals, their votes, reminders, escalations and notices."""

    async def wait_on_approval(
        self, new: NewApproval, journal: JournalWrite, elapsed_ms: int = 0
    ) -> dict[str, Any] | None:
        def op(now: int) -> Op[dict[str, Any] | None]:
            yield from self._fence(journal.run_id, journal.epoch)
            made = yield from self._made_by(journal.run_id, journal.key)
            if made is None:
                made = yield from self._make_approval(new, journal.run_id, journal.key, now)
            [waitpoint] = yield from self._closed_when_due([made], now)
            if waitpoint["status"] == WaitpointStatus.WAITING:
                yield from self._block(journal, {waitpoint["id"]: "all"}, elapsed_ms, now)
                return None
            approval = yield from self._approval(waitpoint)
            decision = decision_of(approval)
            yield from self._journal_and_unblock(
                journal, decision, [waitpoint["id"]], now, "approval"
            )
            return decision

        return await self._write(op, notify=False)

    def _make_approval(self, new: NewApproval, run_id: str, key: str, now: int) -> Op[RowLike]:
        schema = new.data_schema
        columns: dict[str, object] = {
            "kind": "APPROVAL",
            "status": "WAITING",
            "timeout_at": None if new.deadline is None else new.deadline.resolve(now),
            "title": new.title,
            "description": new.description,
            "context": None if new.context is None else dump_json(new.context, "the context"),
            "data_schema": None if schema is None else dump_json(schema, "the schema"),
        }
        made = yield from self._insert_waitpoint(run_id, key, now, columns)
        escalations = [[after, people] for after, people in new.escalations]
        first_escalation = new.escalations[0][0] + now if new.escalations else None
        yield count(
            "INSERT INTO approvals (id, run_id, quorum, reject_on, allow_change, show_votes,"
            " remind_every_ms, next_remind_at, escalations, next_escalation_at, created_at)"
            " VALUES (:id, :run_id, :quorum, :reject_on, :allow_change, :show_votes,"
            " :remind_every_ms, :next_remind_at, :escalations, :next_escalation_at, :now)",
            id=made["id"],
            run_id=run_id,
            quorum=new.quorum,
            reject_on=new.reject_on,
            allow_change=new.allow_change,
            show_votes=new.show_votes,
            remind_every_ms=new.remind_every_ms,
            next_remind_at=None if new.remind_every_ms is None else now + new.remind_every_ms,
            escalations=json.dumps(escalations),
            next_escalation_at=first_escalation,
            now=now,
        )
        yield from self._add_approvers(made["id"], new.approvers, 0, "requested", now)
        yield from self._event([run_id], "approval_requested", now, {"approval": made["id"]})
        return made

    def _add_approvers(
        self, approval_id: str, people: list[str], escalation: int, reason: str, now: int
    ) -> Op[list[str]]:
        """Ask ``people`` (those asked already are left as they are), a notice each; returns
        those it added."""
        asked = yield rows(
            "SELECT approver FROM approval_approvers WHERE approval_id = :id", id=approval_id
        )
        known = {row["approver"] for row in asked}
        new = [p for p in dict.fromkeys(people) if p not in known]
        for person in new:
            yield count(
                "INSERT INTO approval_approvers (approval_id, approver, escalation, added_at)"
                " VALUES (:id, :approver, :escalation, :now)",
                id=approval_id,
                approver=person,
                escalation=escalation,
                now=now,
            )
        yield from self._make_notices(approval_id, new, reason, now)
        return new

    def _make_notices(self, approval_id: str, people: list[str], reason: str, now: int) -> Op[None]:
        if not people:
            return
        last = yield rows(
            "SELECT coalesce(max(n), 0) AS n FROM approval_notices WHERE approval_id = :id",
            id=approval_id,
        )
        n = int(last[0]["n"])
        for person in people:
            n += 1
            yield count(
                "INSERT INTO approval_notices (approval_id, n, approver, reason, due_at)"
                " VALUES (:id, :n, :approver, :reason, :now)",
                id=approval_id,
                n=n,
                approver=person,
                reason=reason,
                now=now,
            )

    # --- votes ------------------------------------------------------------------------------

    async def vote(self, vote: NewVote) -> tuple[bool, Approval]:
        def op(now: int) -> Op[tuple[bool, Approval] | ApprovalClosedError]:
            found = yield rows(
                f"SELECT * FROM waitpoints WHERE id = :id AND kind = 'APPROVAL'{self.q.for_update}",
                id=vote.approval_id,
            )
            if not found:
                raise ApprovalNotFoundError(f"no approval with id {vote.approval_id!r}")
            [waitpoint] = yield from self._closed_when_due(found, now)
            approval = yield from self._approval(waitpoint)
            if approval.status is not WaitpointStatus.WAITING:
                yield from self._insert_vote(vote, now, late=True)
                return ApprovalClosedError(approval.id, approval.status.value, approval.approved)
            if vote.approver not in {a.approver for a in approval.approvers}:
                raise VoteRefusedError(
                    f"{vote.approver!r} is not asked by approval {approval.id}"
                    f" (asked: {', '.join(a.approver for a in approval.approvers)})"
                )
            before = current_votes(approval).get(vote.approver)
            if before is not None and _same(before, vote):
                return False, approval  # a link used twice changes nothing
            if before is not None and not approval.allow_change:
                raise VoteRefusedError(
                    f"{vote.approver!r} already voted on approval {approval.id}, and it does"
                    " not allow changing a vote"
                )
            yield from self._insert_vote(vote, now, late=False)
            approval = yield from self._approval(waitpoint)
            approved = yield from self._escalations_left(approval.id)
            outcome = rule_met(approval, approved)
            if outcome is not None:
                yield from self._close(approval, outcome, vote.via, now)
                approval = yield from self._approval(
                    (yield rows("SELECT * FROM waitpoints WHERE id = :id", id=approval.id))[0]
                )
            return True, approval

        result = await self._write(op)
        if isinstance(result, ApprovalClosedError):  # the late vote is kept: raise after commit
            raise result
        return result

    def _insert_vote(self, vote: NewVote, now: int, *, late: bool) -> Op[None]:
        last = yield rows(
            "SELECT coalesce(max(n), 0) AS n FROM approval_votes WHERE approval_id = :id",
            id=vote.approval_id,
        )
        yield count(
            "INSERT INTO approval_votes (approval_id, n, approver, approve, data, reason, at,"
            " via, link_id, late) VALUES (:id, :n, :approver, :approve, :data, :reason, :now,"
            " :via, :link_id, :late)",
            id=vote.approval_id,
            n=int(last[0]["n"]) + 1,
            approver=vote.approver,
            approve=vote.approve,
            data=dump_json(vote.data, "the vote's data"),
            reason=vote.reason,
            now=now,
            via=vote.via.value,
            link_id=vote.link_id,
            late=late,
        )

    def _escalations_left(self, approval_id: str) -> Op[list[str]]:
        """The people escalations still to come would add (they may yet approve)."""
        found = yield rows(
            "SELECT escalations, escalated FROM approvals WHERE id = :id", id=approval_id
        )
        if not found:
            return []
        steps = json.loads(found[0]["escalations"] or "[]")
        return [person for _, people in steps[int(found[0]["escalated"]) :] for person in people]

    def _close(
        self, approval: Approval, approved: bool, via: CompletionSource, now: int
    ) -> Op[None]:
        closed = approval.model_copy(update={"approved": approved})
        yield count(
            "UPDATE waitpoints SET status = 'COMPLETED', completed_at = :now, completed_via = :via,"
            " data = :data WHERE id = :id AND status = 'WAITING'",
            now=now,
            via=via.value,
            data=json.dumps(decision_of(closed)),
            id=approval.id,
        )
        yield count(
            "UPDATE approvals SET approved = :approved, next_remind_at = NULL,"
            " next_escalation_at = NULL WHERE id = :id",
            approved=approved,
            id=approval.id,
        )
        yield from self._event(
            [approval.run_id],
            "approval_closed",
            now,
            {"approval": approval.id, "approved": approved},
        )
        yield from self._requeue_blocked([approval.id], now)

    # --- reading ----------------------------------------------------------------------------

    def _approval(self, waitpoint: RowLike) -> Op[Approval]:
        approval_id = waitpoint["id"]
        found = yield rows("SELECT * FROM approvals WHERE id = :id", id=approval_id)
        if not found:
            raise ApprovalNotFoundError(f"no approval with id {approval_id!r}")
        people = yield rows(
            "SELECT * FROM approval_approvers WHERE approval_id = :id"
            " ORDER BY escalation, added_at, approver",
            id=approval_id,
        )
        votes = yield rows(
            "SELECT * FROM approval_votes WHERE approval_id = :id AND late = :no ORDER BY n",
            id=approval_id,
            no=False,
        )
        notices = yield rows(
            "SELECT * FROM approval_notices WHERE approval_id = :id ORDER BY n", id=approval_id
        )
        return approval_from_rows(waitpoint, found[0], people, votes, notices)

    async def get_approval(self, approval_id: str) -> Approval:
        def op(now: int) -> Op[Approval]:
            found = yield rows(
                "SELECT * FROM waitpoints WHERE id = :id AND kind = 'APPROVAL'", id=approval_id
            )
            if not found:
                raise ApprovalNotFoundError(f"no approval with id {approval_id!r}")
            return (yield from self._approval(found[0]))

        return await self._read_op(op)

    async def list_approvals(
        self,
        *,
        approver: str | None = None,
        run_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        where = ["w.kind = 'APPROVAL'"]
        params: dict[str, Any] = {"limit": limit}
        if approver is not None:
            where.append(
                "w.id IN (SELECT approval_id FROM approval_approvers WHERE approver = :approver)"
            )
            params["approver"] = approver
        if run_id is not None:
            where.append("a.run_id = :run_id")
            params["run_id"] = run_id
        if status is not None:
            where.append("w.status = :status")
            params["status"] = status

        def op(now: int) -> Op[list[Approval]]:
            found = yield rows(
                "SELECT w.* FROM waitpoints w JOIN approvals a ON a.id = w.id"
                f" WHERE {' AND '.join(where)} ORDER BY w.created_at DESC, w.id DESC"
                " LIMIT :limit",
                **params,
            )
            approvals = []
            for row in found:
                approvals.append((yield from self._approval(row)))
            return approvals

        return await self._read_op(op)

    # --- reminders, escalations, notices -------------------------------------------------

    async def fire_due_approvals(self, limit: int) -> int | None:
        # read first: a timer turn with nothing due (nearly every one) writes nothing
        upcoming = _moment(await self._read(NEXT_APPROVAL_DUE, control=True))
        if upcoming is None or upcoming > self.now_ms():
            return upcoming

        def op(now: int) -> Op[int | None]:
            due = yield rows(
                "SELECT a.* FROM approvals a JOIN waitpoints w ON w.id = a.id"
                " WHERE w.status = 'WAITING' AND (a.next_remind_at <= :now"
                " OR a.next_escalation_at <= :now) ORDER BY a.id LIMIT :limit"
                f"{self.q.for_update}",
                now=now,
                limit=limit,
            )
            for row in due:
                yield from self._fire_approval(row, now)
            return _moment((yield NEXT_APPROVAL_DUE))

        return await self._write(op, notify=False, control=True)

    def _fire_approval(self, row: RowLike, now: int) -> Op[None]:
        approval_id = row["id"]
        steps = json.loads(row["escalations"] or "[]")
        escalated = int(row["escalated"])
        next_escalation = row["next_escalation_at"]
        told: set[str] = set()  # just asked by an escalation: no reminder at the same time
        while next_escalation is not None and next_escalation <= now:
            _, people = steps[escalated]
            escalated += 1
            added = yield from self._add_approvers(approval_id, people, escalated, "escalated", now)
            told.update(added)
            detail = {"approval": approval_id, "escalation": escalated, "approvers": added}
            yield from self._event([row["run_id"]], "approval_escalated", now, detail)
            more = escalated < len(steps)
            next_escalation = row["created_at"] + steps[escalated][0] if more else None
        next_remind = row["next_remind_at"]
        if next_remind is not None and next_remind <= now:
            every = int(row["remind_every_ms"])
            voted = yield rows(
                "SELECT DISTINCT approver FROM approval_votes WHERE approval_id = :id"
                " AND late = :no",
                id=approval_id,
                no=False,
            )
            people = yield rows(
                "SELECT approver FROM approval_approvers WHERE approval_id = :id"
                " ORDER BY escalation, added_at, approver",
                id=approval_id,
            )
            done = {r["approver"] for r in voted} | told
            waiting = [r["approver"] for r in people if r["approver"] not in done]
            yield from self._make_notices(approval_id, waiting, "reminder", now)
            if waiting:
                detail = {"approval": approval_id, "approvers": waiting}
                yield from self._event([row["run_id"]], "approval_reminded", now, detail)
            missed = (now - next_remind) // every + 1  # after downtime: one reminder, not many
            next_remind += missed * every
        yield count(
            "UPDATE approvals SET escalated = :escalated, next_escalation_at = :escalation,"
            " next_remind_at = :remind WHERE id = :id",
            escalated=escalated,
            escalation=next_escalation,
            remind=next_remind,
            id=approval_id,
        )

    async def claim_notices(self, limit: int, lease_ms: int) -> list[Notice]:
        def op(now: int) -> Op[list[Notice]]:
            found = yield rows(
                "SELECT approval_id, n FROM approval_notices WHERE delivered_at IS NULL"
                " AND due_at <= :now AND (claimed_until IS NULL OR claimed_until <= :now)"
                f" ORDER BY due_at, approval_id, n LIMIT :limit{self.q.skip_locked()}",
                now=now,
                limit=limit,
            )
            notices: list[Notice] = []
            for row in found:
                claimed = yield rows(
                    "UPDATE approval_notices SET claimed_until = :until,"
                    " attempts = attempts + 1 WHERE approval_id = :id AND n = :n"
                    " RETURNING approval_id, n, approver, reason, attempts, due_at",
                    until=now + lease_ms,
                    id=row["approval_id"],
                    n=row["n"],
                )
                notices.extend(
                    Notice(
                        r["approval_id"],
                        r["n"],
                        r["approver"],
                        r["reason"],
                        r["attempts"],
                        int(r["due_at"]),
                    )
                    for r in claimed
                )
            return notices

        return await self._write(op, notify=False, control=True)

    async def record_notice(
        self, notice: Notice, *, ok: bool, channel: str, error: str | None, retry_ms: int | None
    ) -> None:
        def op(now: int) -> Op[None]:
            outcome = "ok = :ok, channel = :channel, error = :error, claimed_until = NULL"
            where = "WHERE approval_id = :id AND n = :n"
            if retry_ms is None:
                done = f"UPDATE approval_notices SET {outcome}, delivered_at = :at {where}"
            else:
                done = f"UPDATE approval_notices SET {outcome}, due_at = :at {where}"
            yield count(
                done,
                ok=ok,
                channel=channel,
                error=error,
                at=now if retry_ms is None else now + retry_ms,
                id=notice.approval_id,
                n=notice.n,
            )

        await self._write(op, notify=False, control=True)


_OPEN = "FROM approvals a JOIN waitpoints w ON w.id = a.id AND w.status = 'WAITING'"
NEXT_APPROVAL_DUE = rows(
    f"SELECT min(t) AS t FROM (SELECT min(a.next_remind_at) AS t {_OPEN}"
    f" UNION ALL SELECT min(a.next_escalation_at) {_OPEN}) AS due"
)
"""When (``t``) the next reminder or escalation of an open approval falls due (the timer
loop's ``timer_outlook`` reads it too)."""


def _moment(found: list[RowLike]) -> int | None:
    value = found[0]["t"] if found else None
    return None if value is None else int(value)


def current_votes(approval: Approval) -> dict[str, ApprovalVote]:
    """Each approver's latest vote (the ones that count)."""
    latest: dict[str, ApprovalVote] = {}
    for vote in approval.votes:
        latest[vote.approver] = vote
    return latest


def rule_met(approval: Approval, still_to_ask: list[str]) -> bool | None:
    """True (approved) or False (rejected) once the approval's rule is met, else None."""
    votes = current_votes(approval).values()
    yes = sum(1 for v in votes if v.approve)
    no = sum(1 for v in votes if not v.approve)
    if yes >= approval.quorum:
        return True
    asked = {a.approver for a in approval.approvers} | set(still_to_ask)
    if approval.reject_on == "any" and no >= 1:
        return False
    if approval.reject_on == "majority" and no * 2 > len(asked):
        return False
    if len(asked) - no < approval.quorum:  # not enough people left to approve
        return False
    return None


def decision_of(approval: Approval) -> dict[str, Any]:
    """What the waiting run journals and sees: how the approval closed, and the votes."""
    timed_out = approval.status is WaitpointStatus.TIMED_OUT
    return {
        "version": DECISION_VERSION,
        "id": approval.id,
        "approved": bool(approval.approved) and not timed_out,
        "timedOut": timed_out,
        "votes": [v.model_dump(mode="json", by_alias=True) for v in approval.votes],
    }


def approval_from_rows(
    waitpoint: RowLike,
    row: RowLike,
    people: list[RowLike],
    votes: list[RowLike],
    notices: list[RowLike],
) -> Approval:
    status = WaitpointStatus(waitpoint["status"])
    approved = row["approved"]
    return Approval(
        id=waitpoint["id"],
        run_id=row["run_id"],
        status=status,
        title=waitpoint["title"] or "",
        description=waitpoint["description"],
        context=load_json(waitpoint["context"]),
        quorum=row["quorum"],
        reject_on=row["reject_on"],
        allow_change=bool(row["allow_change"]),
        approvers=[
            Approver(
                approver=p["approver"],
                added_at=from_ms(p["added_at"]),
                escalation=p["escalation"],
            )
            for p in people
        ],
        votes=[
            ApprovalVote(
                approver=v["approver"],
                approve=bool(v["approve"]),
                data=load_json(v["data"]),
                reason=v["reason"],
                at=from_ms(v["at"]),
                via=CompletionSource(v["via"]),
                link_id=v["link_id"],
            )
            for v in votes
        ],
        approved=None if approved is None else bool(approved),
        created_at=from_ms(waitpoint["created_at"]),
        expires_at=from_ms_or_none(waitpoint["timeout_at"]),
        completed_at=from_ms_or_none(waitpoint["completed_at"]),
        show_votes=bool(row["show_votes"]),
        notices=[
            ApprovalNotice(
                approver=n["approver"],
                reason=n["reason"],
                due_at=from_ms(n["due_at"]),
                attempts=n["attempts"],
                delivered_at=from_ms_or_none(n["delivered_at"]),
                ok=None if n["ok"] is None else bool(n["ok"]),
                channel=n["channel"],
                error=n["error"],
            )
            for n in notices
        ],
        data_schema=load_json(waitpoint["data_schema"]),
    )


def _same(before: ApprovalVote, vote: NewVote) -> bool:
    return (before.approve, before.data, before.reason) == (vote.approve, vote.data, vote.reason)
