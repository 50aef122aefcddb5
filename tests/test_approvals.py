"""Approvals (``request_approval``): quorum, rejection rules, racing votes, late votes,
escalation and reminders, on both backends with real workers.

A run asks several approvers and parks; each vote is one transaction, and the one that meets
the rule closes the approval exactly once and wakes the run with the decision.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    ApprovalClosedError,
    ApprovalNotFoundError,
    Engine,
    RunStateError,
    TaskDefinition,
    ValidationError,
    VoteRefusedError,
    request_approval,
)
from engine.receipts import data_sha256

from .conftest import StartWorker, wait_for_status

PEOPLE = ["ana@example.com", "li@example.com", "sam@example.com"]


class RefundDecision(BaseModel):
    amount: float


async def refund(payload: dict[str, Any]) -> dict[str, Any]:
    decision = await request_approval(
        "Refund order 42 (19.99 EUR)",
        description="Parcel arrived damaged.",
        context={"order": 42, "amount": 19.99},
        approvers=payload.get("approvers", PEOPLE),
        quorum=payload.get("quorum", 2),
        reject_on=payload.get("reject_on", "majority"),
        allow_change=payload.get("allow_change", False),
        schema=RefundDecision if payload.get("typed") else None,
        timeout=payload.get("timeout"),
    )
    return {
        "approved": decision.approved,
        "rejected": decision.rejected,
        "timed_out": decision.timed_out,
        "voters": [v.approver for v in decision.votes],
        "reason": decision.reason,
    }


REFUND = TaskDefinition(id="approval-refund", fn=refund)
TASKS = [REFUND]


async def _asked(engine: Engine, payload: dict[str, Any]) -> tuple[str, str]:
    run = await engine.trigger(REFUND.id, payload)
    await wait_for_status(engine, run.id, "WAITING", timeout=20)
    [approval] = await engine.approvals.list(run_id=run.id)
    return run.id, approval.id


async def test_two_of_three_approve_past_one_rejection(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {})
    shown = await engine.approvals.retrieve(approval_id)
    assert [a.approver for a in shown.approvers] == PEOPLE
    assert shown.title == "Refund order 42 (19.99 EUR)" and shown.context == {
        "order": 42,
        "amount": 19.99,
    }
    after = await engine.approvals.vote(
        approval_id, "ana@example.com", approve=False, reason="photos are blurry"
    )
    assert after.status == "WAITING"  # a majority of three must reject
    await engine.approvals.vote(approval_id, "li@example.com")
    closed = await engine.approvals.vote(approval_id, "sam@example.com")
    assert closed.status == "COMPLETED" and closed.approved is True
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output == {
        "approved": True,
        "rejected": False,
        "timed_out": False,
        "voters": PEOPLE,
        "reason": "photos are blurry",
    }
    with pytest.raises(ApprovalClosedError, match="was approved"):
        await engine.approvals.vote(approval_id, "ana@example.com", approve=True)
    assert len((await engine.approvals.retrieve(approval_id)).votes) == 3  # the late one aside
    receipts = await engine.approvals.receipts(approval_id)  # the decision's, then each vote's
    assert [r["answeredBy"] for r in receipts] == [None, *PEOPLE]
    assert receipts[0]["dataSha256"] == data_sha256({"approved": True})
    rejection = {"approve": False, "data": None, "reason": "photos are blurry"}
    assert receipts[1]["dataSha256"] == data_sha256(rejection)
    for receipt in receipts:
        await engine.tokens.verify_receipt(receipt)
    forged = {**receipts[1], "answeredBy": "li@example.com"}
    with pytest.raises(ValidationError, match="bad signature"):
        await engine.tokens.verify_receipt(forged)


async def test_any_rejection_rejects_with_its_reason(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"reject_on": "any"})
    await engine.approvals.vote(approval_id, "li@example.com")
    await engine.approvals.vote(approval_id, "sam@example.com", approve=False, reason="no")
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["rejected"] is True and done.output["reason"] == "no"


async def test_a_quorum_out_of_reach_rejects(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"quorum": 3})
    await engine.approvals.vote(approval_id, "li@example.com", approve=False)
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["rejected"] is True and done.output["voters"] == ["li@example.com"]


async def test_twenty_racing_votes_close_the_approval_exactly_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    people = [f"p{n}@example.com" for n in range(20)]
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"approvers": people, "quorum": 10})
    outcomes = await asyncio.gather(
        *(engine.approvals.vote(approval_id, person) for person in people),
        return_exceptions=True,
    )
    late = [o for o in outcomes if isinstance(o, ApprovalClosedError)]
    counted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(counted) == 10 and len(late) == 10, outcomes
    closing = [o for o in counted if o.status == "COMPLETED"]
    assert len(closing) == 1  # the votes counted in turn: only the tenth saw it close
    approval = await engine.approvals.retrieve(approval_id)
    assert approval.approved is True and len(approval.votes) == 10
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["approved"] is True and len(done.output["voters"]) == 10
    timeline = await engine.runs.timeline(run_id)
    assert [e.kind for e in timeline].count("approval_closed") == 1


async def test_votes_that_cannot_count_are_refused_and_change_nothing(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    _, approval_id = await _asked(engine, {"typed": True, "quorum": 3})
    with pytest.raises(VoteRefusedError, match="is not asked"):
        await engine.approvals.vote(approval_id, "eve@example.com", data={"amount": 1})
    with pytest.raises(ValidationError, match="amount"):
        await engine.approvals.vote(approval_id, "ana@example.com", data={"wrong": 1})
    with pytest.raises(ValidationError, match="reason"):
        await engine.approvals.vote(approval_id, "ana@example.com", reason=" ")
    with pytest.raises(ApprovalNotFoundError):
        await engine.approvals.vote("waitpoint_nope", "ana@example.com")
    assert (await engine.approvals.retrieve(approval_id)).votes == []
    await engine.approvals.vote(approval_id, "ana@example.com", data={"amount": 5})
    again = await engine.approvals.vote(approval_id, "ana@example.com", data={"amount": 5})
    assert len(again.votes) == 1  # the same vote twice (a link used twice): nothing changes
    with pytest.raises(VoteRefusedError, match="already voted"):
        await engine.approvals.vote(approval_id, "ana@example.com", data={"amount": 6})


async def test_a_vote_may_change_where_the_approval_allows_it(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"allow_change": True, "reject_on": "any"})
    await engine.approvals.vote(approval_id, "ana@example.com")
    await engine.approvals.vote(approval_id, "ana@example.com", approve=False, reason="no")
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["rejected"] is True


async def test_the_deadline_closes_it_as_timed_out(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(REFUND.id, {"timeout": "1s"})
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output["timed_out"] is True and done.output["approved"] is False
    [approval] = await engine.approvals.list(run_id=run.id)
    with pytest.raises(ApprovalClosedError, match="timed out"):
        await engine.approvals.vote(approval.id, "ana@example.com")
    [decided] = await engine.approvals.receipts(approval.id)
    assert decided["status"] == "TIMED_OUT" and decided["completedVia"] == "timeout"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"approvers": []}, "non-empty list"),
        ({"approvers": ["a b"]}, "no spaces"),
        ({"approvers": ["x@y", "x@y"]}, "twice"),
        ({"quorum": 4}, "more than the 3 approvers"),
        ({"quorum": 0}, "quorum must be"),
        ({"reject_on": "all"}, "reject_on must be"),
    ],
)
async def test_a_bad_request_fails_the_run_saying_why(
    engine: Engine, start_worker: StartWorker, change: dict[str, Any], error: str
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(REFUND.id, change)
    with pytest.raises(Exception, match=error):
        await engine.wait_for_run(run.id, timeout=20)


YEARS = 10 * 365 * 86400


@pytest.fixture
async def clocked(db_url: str) -> Any:
    """An engine on a manual clock (a long lease: moving it never makes an attempt look lost)."""
    import secrets

    from engine import Settings
    from engine.testing import ManualClock

    clock = ManualClock()
    settings = Settings(
        database_url=db_url, api_url=None, lease_seconds=YEARS, signing_secret=secrets.token_hex(32)
    )
    async with Engine(settings=settings, clock=clock) as engine:
        yield engine, clock


@pytest.fixture
async def start_worker_on() -> Any:
    """Start a Worker on a given engine; every one is stopped at teardown."""
    from engine import Worker

    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(engine: Engine, tasks: list[TaskDefinition], **options: Any) -> Worker:
        worker = Worker(engine, {t.id: t for t in tasks}, poll_seconds=0.05, **options)
        runner = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 5)
        running.append((worker, runner))
        return worker

    yield start
    for worker, runner in running:
        worker.stop(graceful=False)
        await asyncio.wait_for(runner, 10)


async def escalating(payload: Any) -> bool:
    decision = await request_approval(
        "Pay invoice 7",
        approvers=["ana@example.com", "li@example.com"],
        quorum=2,
        remind_every="4h",
        escalate=[("24h", ["boss@example.com"])],
    )
    return decision.approved


ESCALATING = TaskDefinition(id="approval-escalating", fn=escalating)


async def _notices(engine: Engine) -> list[tuple[str, str, int]]:
    """The notices due now, delivered (a claimed notice not recorded is claimed again once
    its claim ran out: at least once)."""
    claimed = await engine.storage.claim_notices(100, 60_000)
    for notice in claimed:
        await engine.storage.record_notice(
            notice, ok=True, channel="test", error=None, retry_ms=None
        )
    return sorted((n.approver, n.reason, n.due_at) for n in claimed)


async def test_reminders_come_on_time_across_a_restart_and_escalation_asks_more(
    clocked: tuple[Engine, Any], start_worker_on: Any
) -> None:
    from datetime import timedelta

    from engine.approvals import fire_approvals

    engine, clock = clocked
    worker = await start_worker_on(engine, [ESCALATING])
    run = await engine.trigger(ESCALATING.id)
    await wait_for_status(engine, run.id, "WAITING", timeout=20)
    [approval] = await engine.approvals.list(run_id=run.id)
    t0 = approval.created_at
    start = int(t0.timestamp() * 1000)
    assert await _notices(engine) == [
        ("ana@example.com", "requested", start),
        ("li@example.com", "requested", start),
    ]
    await engine.approvals.vote(approval.id, "ana@example.com")
    with pytest.raises(VoteRefusedError, match="is not asked"):  # not before the escalation
        await engine.approvals.vote(approval.id, "boss@example.com")

    clock.advance(timedelta(hours=4))
    await fire_approvals(engine.storage)
    assert await _notices(engine) == [("li@example.com", "reminder", start + 4 * 3600_000)]
    worker.stop(graceful=True)  # a restart: the next reminder is in the database, not in it
    await start_worker_on(engine, [ESCALATING])
    clock.advance(timedelta(hours=4))
    await fire_approvals(engine.storage)
    assert await _notices(engine) == [("li@example.com", "reminder", start + 8 * 3600_000)]

    clock.advance(timedelta(hours=16))  # 24h: the escalation, and the reminder of that hour
    await fire_approvals(engine.storage)
    assert await _notices(engine) == [
        ("boss@example.com", "escalated", start + 24 * 3600_000),
        ("li@example.com", "reminder", start + 24 * 3600_000),
    ]
    shown = await engine.approvals.retrieve(approval.id)
    assert [(a.approver, a.escalation) for a in shown.approvers][-1] == ("boss@example.com", 1)
    await engine.approvals.vote(approval.id, "boss@example.com")  # the escalation decides
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output is True
    clock.advance(timedelta(hours=4))
    await fire_approvals(engine.storage)
    assert await _notices(engine) == []  # a closed approval reminds no one


async def test_the_rest_routes_list_vote_and_link_and_refuse_what_cannot_count(
    engine: Engine, start_worker: StartWorker
) -> None:
    from urllib.parse import parse_qs, urlparse

    from .api.conftest import AUTH, api_client

    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"quorum": 3})
    with pytest.raises(RunStateError, match="no decision yet"):
        await engine.approvals.receipts(approval_id)
    async with api_client(engine) as api:
        listed = await api.get("/api/v1/approvals", params={"runId": run_id}, headers=AUTH)
        assert [a["id"] for a in listed.json()["data"]] == [approval_id]
        mine = await api.get(
            "/api/v1/approvals", params={"approver": "li@example.com"}, headers=AUTH
        )
        assert [a["id"] for a in mine.json()["data"]] == [approval_id]
        shown = await api.get(f"/api/v1/approvals/{approval_id}", headers=AUTH)
        assert shown.json()["quorum"] == 3 and shown.json()["rejectOn"] == "majority"
        links = (await api.post(f"/api/v1/approvals/{approval_id}/links", headers=AUTH)).json()
        assert sorted(links["links"]) == PEOPLE
        inbox = await api.post(
            "/api/v1/approvals/inbox-link", json={"approver": "li@example.com"}, headers=AUTH
        )
        assert "/ui/inbox?t=" in inbox.json()["url"]
        no_inbox = await api.post(
            "/api/v1/approvals/inbox-link", json={"approver": "a b"}, headers=AUTH
        )
        assert no_inbox.status_code == 422
        ticket = parse_qs(urlparse(links["links"]["li@example.com"]).query)["t"][0]
        as_li = {"Authorization": f"Bearer {ticket}"}
        votes = f"/api/v1/approvals/{approval_id}/votes"
        refused = [
            await api.post(votes, json={"approver": "ana@example.com"}, headers=as_li),
            await api.post(votes, json={}, headers=AUTH),
            await api.post(votes, json={"approver": "eve@x.org"}, headers=AUTH),
            await api.post(votes, json={"approver": "ana@example.com", "x": 1}, headers=AUTH),
            await api.post("/api/v1/approvals/nope/votes", json={}, headers=as_li),
            await api.post("/api/v1/approvals/nope/votes", json={"approver": "a@b"}, headers=AUTH),
            await api.post(votes, json={"approver": "ana@example.com"}),
        ]
        assert [r.status_code for r in refused] == [403, 422, 409, 422, 403, 404, 401]
        assert (await engine.approvals.retrieve(approval_id)).votes == []  # nothing counted
        by_link = await api.post(votes, json={"approve": True}, headers=as_li)
        assert by_link.status_code == 200
        [counted] = by_link.json()["approval"]["votes"]
        assert counted["approver"] == "li@example.com" and counted["via"] == "public-token"
        assert len(counted["linkId"]) == 16
        await api.post(votes, json={"approver": "ana@example.com"}, headers=AUTH)
        closing = await api.post(
            votes, json={"approver": "sam@example.com", "approve": False}, headers=AUTH
        )
        assert closing.json()["approval"]["status"] == "COMPLETED"
        assert closing.json()["approval"]["approved"] is False  # the quorum of 3 is out of reach
        late = await api.post(votes, json={"approver": "sam@example.com"}, headers=AUTH)
        assert late.status_code == 410 and late.json()["approved"] is False
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["rejected"] is True


REMOTE_TASKS = """
from engine import request_approval, task


@task("remote-approval")
async def remote_approval(payload):
    decision = await request_approval("Ship it", approvers=["ana@x.org", "li@x.org"], quorum=2)
    return [decision.approved, [v.approver for v in decision.votes]]
"""


async def test_the_remote_engine_lists_votes_and_links_through_the_api(tmp_path: Any) -> None:
    from .test_remote import KEY, dev_server

    with dev_server(tmp_path, "approval_tasks", REMOTE_TASKS, KEY) as url:
        async with Engine(url, api_key=KEY) as remote:
            run = await remote.trigger("remote-approval")
            await wait_for_status(remote, run.id, "WAITING", timeout=30)
            [approval] = await remote.approvals.list(run_id=run.id)
            links = await remote.approvals.links(approval.id, expires_in="1h")
            assert sorted(links) == ["ana@x.org", "li@x.org"]
            assert all(u.startswith(f"{url}/ui/vote/{approval.id}?t=") for u in links.values())
            inbox = await remote.approvals.inbox_link("ana@x.org", expires_in="1h")
            assert inbox.startswith(f"{url}/ui/inbox?t=")
            with pytest.raises(VoteRefusedError, match="is not asked"):
                await remote.approvals.vote(approval.id, "eve@x.org")
            await remote.approvals.vote(approval.id, "ana@x.org")
            closed = await remote.approvals.vote(approval.id, "li@x.org")
            assert closed.approved is True
            with pytest.raises(ApprovalClosedError):
                await remote.approvals.vote(approval.id, "li@x.org", approve=False)
            with pytest.raises(ApprovalNotFoundError):
                await remote.approvals.retrieve("waitpoint_nope")
            receipts = await remote.approvals.receipts(approval.id)
            assert [r["answeredBy"] for r in receipts] == [None, "ana@x.org", "li@x.org"]
            for receipt in receipts:
                await remote.tokens.verify_receipt(receipt)
            done = await remote.wait_for_run(run.id, timeout=30)
            assert done.output == [True, ["ana@x.org", "li@x.org"]]


async def _all_recorded(engine: Engine, approval_id: str) -> bool:
    notices = (await engine.approvals.retrieve(approval_id)).notices
    return bool(notices) and all(n.delivered_at is not None for n in notices)


class Recorder:
    """A notifier that keeps what it was asked to send (and fails the first ``fail`` times)."""

    def __init__(self, fail: int = 0, expect: int = 1) -> None:
        self.sent: list[tuple[str, str, str, str]] = []
        self.fail = fail
        self.expect = expect
        self.all_sent = asyncio.Event()

    async def notify(self, approval: Any, approver: str, link: str, reason: Any) -> Any:
        from datetime import UTC, datetime

        from engine.notifiers import Delivery

        ok = self.fail <= 0
        self.fail -= 1
        if ok:
            self.sent.append((approval.title, approver, link, reason))
            if len(self.sent) >= self.expect:
                self.all_sent.set()
        return Delivery(
            channel="recorder",
            approver=approver,
            reason=reason,
            attempts=1,
            ok=ok,
            error=None if ok else "the test said no",
            at=datetime.now(UTC),
        )


async def test_a_worker_tells_each_approver_through_its_notifier_with_their_own_link(
    db_url: str, start_worker_on: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import parse_qs, urlparse

    from engine import Settings
    from engine.api.auth import Auth

    key = "wp_test_" + "k" * 40
    settings = Settings(
        database_url=db_url, api_url=None, secret_key=key, public_url="http://127.0.0.1:8030"
    )
    monkeypatch.setattr("engine.approvals.NOTICE_RETRY_MS", 0)
    recorder = Recorder(fail=1, expect=3)  # one delivery fails: its notice is sent again later
    async with Engine(settings=settings) as engine:
        await start_worker_on(engine, TASKS, notifier=recorder)
        _, approval_id = await _asked(engine, {})
        await asyncio.wait_for(recorder.all_sent.wait(), 20)
        assert sorted(person for _, person, _, _ in recorder.sent) == PEOPLE
        assert {reason for _, _, _, reason in recorder.sent} == {"requested"}
        for title, person, link, _ in recorder.sent:
            assert title == "Refund order 42 (19.99 EUR)"
            assert link.startswith(f"http://127.0.0.1:8030/ui/vote/{approval_id}?t=")
            ticket = parse_qs(urlparse(link).query)["t"][0]  # opens this approval as them only
            scopes = Auth(key).caller(f"Bearer {ticket}").scopes
            assert scopes == {f"vote:approvals:{approval_id}:{person}"}
        async with asyncio.timeout(20):  # each delivery is recorded with the approval
            while not await _all_recorded(engine, approval_id):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        notices = (await engine.approvals.retrieve(approval_id)).notices
        assert [(n.ok, n.channel) for n in notices] == [(True, "recorder")] * 3
        assert sorted(n.attempts for n in notices) == [1, 1, 2]  # the failed one, sent again


async def test_purging_a_finished_run_deletes_its_approval_with_it(
    engine: Engine, start_worker: StartWorker
) -> None:
    from datetime import timedelta

    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {"quorum": 1})
    await engine.approvals.vote(approval_id, "ana@example.com")
    await engine.wait_for_run(run_id, timeout=20)
    await asyncio.sleep(0.01)  # older than the millisecond it finished in
    purged = await engine.purge(timedelta(milliseconds=1))
    assert purged.runs == 1
    with pytest.raises(ApprovalNotFoundError):
        await engine.approvals.retrieve(approval_id)
    for table in ("approvals", "approval_approvers", "approval_votes", "approval_notices"):
        column = "id" if table == "approvals" else "approval_id"
        from engine.storage.sql import rows

        left = await engine.storage._read(  # type: ignore[attr-defined]
            rows(f"SELECT count(*) AS n FROM {table} WHERE {column} = :id", id=approval_id)
        )
        assert left[0]["n"] == 0, table


def test_the_commands_list_vote_link_and_print_receipts(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from .test_cli import assert_one_line_error, invoke, ok_json

    async def asked() -> tuple[str, str]:
        from engine import Worker

        async with Engine(db_url) as engine:
            worker = Worker(engine, {t.id: t for t in TASKS}, poll_seconds=0.05)
            running = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.started.wait(), 10)
            try:
                return await _asked(engine, {"quorum": 2, "reject_on": "any"})
            finally:
                worker.stop(graceful=False)
                await asyncio.wait_for(running, 10)

    run_id, approval_id = asyncio.run(asked())
    listed = ok_json(db_url, "approvals", "list", "--run", run_id)
    assert [a["id"] for a in listed["data"]] == [approval_id]
    table = invoke(db_url, "approvals", "list", "--approver", "li@example.com")
    assert approval_id in table.stdout and "0+ 0- / 2" in table.stdout
    shown = ok_json(db_url, "approvals", "get", approval_id)
    assert shown["title"] == "Refund order 42 (19.99 EUR)"
    voted = ok_json(db_url, "approvals", "vote", approval_id, "--as", "ana@example.com")
    assert [v["via"] for v in voted["votes"]] == ["cli"]
    refused = invoke(db_url, "approvals", "vote", approval_id, "--as", "eve@x.org")
    assert_one_line_error(refused, "is not asked")
    bad = invoke(db_url, "approvals", "vote", approval_id, "--as", "li@example.com", "--data", "{")
    assert_one_line_error(bad, "--data")
    rejected = ok_json(
        db_url,
        "approvals",
        "vote",
        approval_id,
        "--as",
        "li@example.com",
        "--reject",
        "--reason",
        "not this week",
    )
    assert rejected["status"] == "COMPLETED" and rejected["approved"] is False
    printed = invoke(db_url, "approvals", "receipts", approval_id)
    receipts = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [r["answeredBy"] for r in receipts] == [None, "ana@example.com", "li@example.com"]
    unknown = invoke(db_url, "approvals", "get", "waitpoint_nope")
    assert_one_line_error(unknown, "no approval with id")
    # links are signed with the API's key (a database opened without one gets it now)
    monkeypatch.setenv("WAITPOINT_SECRET_KEY", "wp_test_" + "k" * 40)
    monkeypatch.setenv("WAITPOINT_PUBLIC_URL", "http://127.0.0.1:8030")
    inbox = invoke(db_url, "approvals", "inbox", "ana@example.com", "--expires-in", "1h")
    assert inbox.stdout.startswith("http://127.0.0.1:8030/ui/inbox?t="), inbox.output
    links = invoke(db_url, "approvals", "links", approval_id)
    assert sorted(line.split("\t")[0] for line in links.stdout.splitlines()) == [
        "ana@example.com",
        "li@example.com",
        "sam@example.com",
    ]


async def test_an_approval_whose_run_ended_first_takes_no_votes_and_reminds_no_one(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, approval_id = await _asked(engine, {})
    await engine.runs.cancel(run_id)
    approval = await engine.approvals.retrieve(approval_id)
    assert approval.status == "CANCELLED"
    with pytest.raises(ApprovalClosedError, match=f"approval {approval_id} closed"):
        await engine.approvals.vote(approval_id, "ana@example.com")
    assert await engine.approvals.list(status="WAITING") == []


async def test_a_worker_configured_by_notify_url_sends_signed_webhooks_and_emails(
    db_url: str, start_worker_on: Any
) -> None:
    """WAITPOINT_NOTIFY_URL end to end: a webhook receiver that fails at first gets each
    approver's notice, signed; an SMTP server gets the e-mails."""
    import json

    from engine import Settings, verify_webhook

    from .test_notifiers import ScriptedServer, smtp_server

    key = "wp_test_" + "k" * 40
    secret = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="
    async with ScriptedServer([500, 200]) as receiver:
        settings = Settings(
            database_url=db_url,
            api_url=None,
            secret_key=key,
            public_url="http://127.0.0.1:8030",
            notify_url=receiver.url,
            notify_secret=secret,
        )
        async with Engine(settings=settings) as engine:
            await start_worker_on(engine, TASKS)
            _, approval_id = await _asked(engine, {})
            async with asyncio.timeout(30):
                while not await _all_recorded(engine, approval_id):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            notices = (await engine.approvals.retrieve(approval_id)).notices
            assert [(n.ok, n.channel) for n in notices] == [(True, "webhook")] * 3
        told = {}
        for request in receiver.requests:
            verify_webhook(request.body, request.headers, secret)  # raises if not ours
            body = json.loads(request.body)
            told[body["approver"]] = body
        assert sorted(told) == PEOPLE
        assert {b["type"] for b in told.values()} == {"approval.requested"}
        assert all(b["link"].startswith("http://127.0.0.1:8030/ui/vote/") for b in told.values())

    with smtp_server() as (inbox, port):
        settings = Settings(
            database_url=db_url,
            api_url=None,
            secret_key=key,
            public_url="http://127.0.0.1:8030",
            notify_url=f"smtp://127.0.0.1:{port}?from=approvals@example.com",
        )
        async with Engine(settings=settings) as engine:
            await start_worker_on(engine, TASKS)
            _, approval_id = await _asked(engine, {"approvers": ["ana@example.com"], "quorum": 1})
            async with asyncio.timeout(30):
                while not await _all_recorded(engine, approval_id):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        [(envelope, message)] = inbox.messages
        assert envelope.rcpt_tos == ["ana@example.com"]
        assert message["Subject"] == "Approval requested: Refund order 42 (19.99 EUR)"
