"""Approvers' voting pages and inbox: each link votes as the one approver it was made for, on
one approval; the votes cast through the links close the approval and the run goes on.

On both backends: the app in-process over httpx, a worker in the test's event loop running
a task that calls ``request_approval``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from html import unescape
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from engine import Engine, Settings, TaskDefinition, ValidationError, Worker, request_approval
from engine.api.auth import Auth
from engine.models import CompletionSource
from engine.signing import approval_url, inbox_scope, inbox_url, link_id, vote_scope, vote_url
from tests.conftest import wait_for_status

from .conftest import BASE_URL, KEY, client_for, field_errors, local_path

PEOPLE = ["ana@example.com", "li@example.com", "sam@example.com"]
ANA, LI, SAM = PEOPLE
DESCRIPTION = "Parcel arrived damaged.\nPhotos are in <the ticket>."


class Refund(BaseModel):
    amount: float = Field(description="How much to refund, in EUR")


async def refund(payload: dict[str, Any]) -> dict[str, Any]:
    decision = await request_approval(
        payload.get("title", "Refund order 42"),
        description=DESCRIPTION,
        context={"order": 42, "customer": "Ana <ana@example.com>", "items": [1, 2]},
        approvers=payload.get("approvers", PEOPLE),
        quorum=payload.get("quorum", 2),
        reject_on=payload.get("reject_on", "majority"),
        allow_change=payload.get("allow_change", False),
        show_votes=payload.get("show_votes", True),
        schema=Refund if payload.get("typed") else None,
        timeout=payload.get("timeout", "1h"),
    )
    return {
        "approved": decision.approved,
        "timed_out": decision.timed_out,
        "voters": [v.approver for v in decision.votes],
        "reason": decision.reason,
    }


REFUND = TaskDefinition(id="ui-vote-refund", fn=refund)
Ask = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture
async def ui_engine(db_url: str) -> AsyncIterator[Engine]:
    """Both backends here; the public URL is the test client's, so links open in it."""
    settings = Settings(secret_key=KEY, public_url=BASE_URL)
    async with Engine(db_url, settings=settings) as opened:
        yield opened


@pytest.fixture
async def ask(ui_engine: Engine) -> AsyncIterator[Ask]:
    """Trigger the refund run with ``payload``; returns (run id, approval id) once it waits."""
    worker = Worker(ui_engine, {REFUND.id: REFUND}, poll_seconds=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 5)

    async def start(**payload: Any) -> tuple[str, str]:
        run = await ui_engine.trigger(REFUND.id, payload)
        await wait_for_status(ui_engine, run.id, "WAITING", timeout=20)
        [approval] = await ui_engine.approvals.list(run_id=run.id)
        return run.id, approval.id

    yield start
    worker.stop(graceful=False)
    await asyncio.wait_for(runner, 10)


def link(approval_id: str, approver: str, expires_in: str = "1h", key: str = KEY) -> str:
    return local_path(vote_url(BASE_URL, Auth(key), approval_id, approver, expires_in))


def expired(scope: str, path: str) -> str:
    return f"{path}?t={Auth(KEY).public_token([scope], expires_in=-10)}"


def text_of(html: str) -> str:
    """The page's text, tags dropped and spaces squeezed (for assertions on what it says)."""
    words = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()
    return re.sub(r" ([:;,.])", r"\1", words)


def heading(html: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", html, re.S)
    return unescape(found.group(1)).strip() if found else ""


def alert_text(html: str) -> str:
    found = re.search(r'<div class="alert" role="alert"><p>([^<]*)</p>', html)
    return unescape(found.group(1)) if found else ""


APPROVE = {"vote": "approve"}
REJECT = {"vote": "reject"}


async def test_the_page_shows_what_is_asked_who_is_asked_and_the_votes_so_far(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask()
    await ui_engine.approvals.vote(approval_id, LI, approve=False, reason="Photos are blurry")
    page = await ui.get(link(approval_id, ANA))
    assert page.status_code == 200, page.text
    assert heading(page.text) == "Your vote is needed"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'class="top"' not in page.text  # standalone: no dashboard navigation
    html, words = page.text, text_of(page.text)
    assert "Refund order 42" in words
    assert "Photos are in &lt;the ticket&gt;." in html  # plain text, escaped
    assert "order 42" in words and "customer Ana <ana@example.com>" in words
    assert "items [1, 2]" in words
    assert f"You {ANA}" in words
    assert all(person in words for person in PEOPLE)
    assert "2 of those asked approve; it is rejected once most of them reject" in words
    assert "Votes so far 1" in words
    [row] = rows(html, "h-votes")
    assert row.startswith(f"{LI} reject Photos are blurry 20")
    assert ">Approve</button>" in html and ">Reject</button>" in html
    assert 'name="reason"' in html and 'maxlength="1000"' in html
    assert 'name="data.' not in html and 'name="json"' not in html  # no schema: no data fields
    assert re.search(r'<form method="post" action="/ui/vote/[^"?]+\?t=[^"]+"', html)


async def test_two_approvers_vote_through_their_own_links_and_the_run_completes(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, approval_id = await ask()
    links = await ui_engine.approvals.links(approval_id, expires_in="1h")
    assert set(links) == set(PEOPLE) and all(
        u.startswith(f"{BASE_URL}/ui/vote/") for u in links.values()
    )

    first = await ui.post(local_path(links[ANA]), data=APPROVE)
    assert first.status_code == 200, first.text
    assert heading(first.text) == "Your approval was recorded"
    assert "stays open until enough people decide" in first.text
    assert (await ui_engine.approvals.retrieve(approval_id)).status == "WAITING"

    second = await ui.post(local_path(links[LI]), data=APPROVE)
    assert heading(second.text) == "Your approval was recorded"
    assert "Your vote decided the request: it is approved" in text_of(second.text)
    approval = await ui_engine.approvals.retrieve(approval_id)
    assert approval.status == "COMPLETED" and approval.approved is True
    assert [(v.approver, v.approve, v.via) for v in approval.votes] == [
        (ANA, True, CompletionSource.PUBLIC_TOKEN),
        (LI, True, CompletionSource.PUBLIC_TOKEN),
    ]
    assert approval.votes[0].link_id == link_id(links[ANA].split("?t=")[1])
    done = await ui_engine.wait_for_run(run_id, timeout=20)
    assert done.output == {
        "approved": True,
        "timed_out": False,
        "voters": [ANA, LI],
        "reason": None,
    }

    back = await ui.get(local_path(links[SAM]))  # the third approver comes too late
    assert back.status_code == 200 and heading(back.text) == "Approved"
    assert "<form" not in back.text
    assert f"{ANA} you" not in text_of(back.text) and f"{SAM} you" in text_of(back.text)


async def test_a_link_votes_as_its_own_approver_only(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask()
    _, other_id = await ask(title="Refund order 43")
    # whatever the form says, the identity is the link's
    sent = {**APPROVE, "approver": LI, "data.approver": LI}
    assert (await ui.post(link(approval_id, ANA), data=sent)).status_code == 200
    assert [v.approver for v in (await ui_engine.approvals.retrieve(approval_id)).votes] == [ANA]

    auth = Auth(KEY)
    forged = {
        "another approval's link": link(other_id, LI).replace(other_id, approval_id, 1),
        "two approvers at once": f"/ui/vote/{approval_id}?t="
        + auth.public_token([vote_scope(approval_id, LI), vote_scope(approval_id, SAM)]),
        "the approval without an approver": f"/ui/vote/{approval_id}?t="
        + auth.public_token([f"vote:approvals:{approval_id}"]),
        "an approver's prefix": f"/ui/vote/{approval_id}?t="
        + auth.public_token([f"vote:approvals:{approval_id}:"]),
        "a one-link approval": local_path(approval_url(BASE_URL, auth, approval_id, "1h")).replace(
            "/ui/approve/", "/ui/vote/", 1
        ),
        "an inbox": f"/ui/vote/{approval_id}?t=" + auth.public_token([inbox_scope(LI)]),
        "someone not asked": link(approval_id, "eve@example.com"),
    }
    for what, url in forged.items():
        for answer in (await ui.get(url), await ui.post(url, data=APPROVE)):
            assert answer.status_code == 403, what
            assert "<form" not in answer.text and 'class="top"' not in answer.text, what
    assert len((await ui_engine.approvals.retrieve(approval_id)).votes) == 1
    assert (await ui_engine.approvals.retrieve(other_id)).votes == []


@pytest.mark.parametrize(
    ("make_link", "status", "title"),
    [
        (lambda aid: f"/ui/vote/{aid}", 401, "Link incomplete"),
        (lambda aid: f"/ui/vote/{aid}?t=", 401, "Link incomplete"),
        (lambda aid: f"/ui/vote/{aid}?t=garbage", 401, "Link not valid"),
        (lambda aid: f"/ui/vote/{aid}?t=a.b.c", 401, "Link not valid"),
        (
            lambda aid: link(aid, ANA, key="another_key_0123456789abcdef0123456789"),
            401,
            "Link not valid",
        ),
        (lambda aid: expired(vote_scope(aid, ANA), f"/ui/vote/{aid}"), 401, "Link expired"),
        (lambda aid: f"/ui/vote/{aid}?t={KEY}", 403, "Not allowed"),
    ],
)
async def test_a_bad_link_is_an_error_page_without_a_form(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask, make_link: Any, status: int, title: str
) -> None:
    _, approval_id = await ask()
    url = make_link(approval_id)
    for answer in (await ui.get(url), await ui.post(url, data=APPROVE)):
        assert answer.status_code == status, answer.text
        assert heading(answer.text) == title
        assert "<form" not in answer.text and 'class="top"' not in answer.text
    assert (await ui_engine.approvals.retrieve(approval_id)).votes == []


async def test_wrong_links_count_against_the_sender_then_429(
    ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask()
    statuses = [(await ui.get(f"/ui/vote/{approval_id}?t=x.y.z")).status_code for _ in range(40)]
    assert statuses[0] == 401 and statuses[-1] == 429
    refused = await ui.get(link(approval_id, ANA))  # even a good link, until the wait is over
    assert refused.status_code == 429 and "retry-after" in refused.headers


async def test_an_unknown_approval_is_a_404_page(ui: httpx.AsyncClient) -> None:
    answer = await ui.get(link("waitpoint_doesnotexist", ANA))
    assert answer.status_code == 404 and "<form" not in answer.text
    assert "There is no approval with this id." in answer.text


async def test_a_decided_approval_shows_its_outcome_and_takes_a_late_vote_as_late(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask(reject_on="any")
    await ui_engine.approvals.vote(approval_id, LI, approve=False, reason="Not covered")
    page = await ui.get(link(approval_id, ANA))
    assert page.status_code == 200 and heading(page.text) == "Rejected"
    assert "<form" not in page.text and "Not covered" in page.text
    late = await ui.post(link(approval_id, ANA), data=APPROVE)
    assert late.status_code == 200 and heading(late.text) == "Too late to vote"
    assert "already rejected when your vote arrived" in late.text
    assert [v.approver for v in (await ui_engine.approvals.retrieve(approval_id)).votes] == [LI]


async def test_a_timed_out_approval_is_a_410_page(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, approval_id = await ask(timeout="1s")
    assert (await ui_engine.wait_for_run(run_id, timeout=20)).output["timed_out"] is True
    page = await ui.get(link(approval_id, ANA))
    late = await ui.post(link(approval_id, ANA), data=APPROVE)
    for answer, title in ((page, "This request is closed"), (late, "Too late to vote")):
        assert answer.status_code == 410 and heading(answer.text) == title
        assert "timed out" in answer.text and "<form" not in answer.text


async def test_a_second_vote_shows_the_first_where_changes_are_not_allowed(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask(quorum=3)
    url = link(approval_id, ANA)
    await ui.post(url, data={**APPROVE, "reason": "Looks right"})
    again = await ui.post(url, data={**APPROVE, "reason": "Looks right"})  # sent twice
    assert again.status_code == 200 and heading(again.text) == "Your approval was recorded"

    page = await ui.get(url)
    assert heading(page.text) == "You already voted" and "<form" not in page.text
    assert "Your vote approve: Looks right" in text_of(page.text)
    refused = await ui.post(url, data=REJECT)
    assert refused.status_code == 422 and "<form" not in refused.text
    assert "already voted" in alert_text(refused.text)
    [vote] = (await ui_engine.approvals.retrieve(approval_id)).votes
    assert vote.approve is True


async def test_a_vote_may_be_changed_where_the_approval_allows_it(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, approval_id = await ask(allow_change=True, reject_on="any")
    url = link(approval_id, ANA)
    await ui.post(url, data=APPROVE)
    page = await ui.get(url)
    assert heading(page.text) == "You voted" and "Change your vote" in page.text
    changed = await ui.post(url, data={**REJECT, "reason": "Second thoughts"})
    assert heading(changed.text) == "Your rejection was recorded"
    done = await ui_engine.wait_for_run(run_id, timeout=20)
    assert done.output["approved"] is False and done.output["reason"] == "Second thoughts"


async def test_a_rejection_with_a_reason_rejects_and_the_run_sees_the_reason(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, approval_id = await ask(reject_on="any")
    url = link(approval_id, SAM)

    no_choice = await ui.post(url, data={"reason": "Hmm"})
    assert no_choice.status_code == 422 and alert_text(no_choice.text) == "choose Approve or Reject"
    too_long = await ui.post(url, data={**REJECT, "reason": "x" * 1001})
    assert too_long.status_code == 422
    assert field_errors(too_long.text)["field-reason"].startswith(
        "reason must be 1 to 1000 characters"
    )
    assert "x" * 1001 in too_long.text  # what was typed stays in the form
    assert (await ui_engine.approvals.retrieve(approval_id)).votes == []

    reason = "Photos show <no> damage;\nask for more."
    answer = await ui.post(url, data={**REJECT, "reason": f"  {reason} "})
    assert answer.status_code == 200
    assert heading(answer.text) == "Your rejection was recorded"
    assert "it is rejected" in text_of(answer.text)
    [vote] = (await ui_engine.approvals.retrieve(approval_id)).votes
    assert (vote.approver, vote.approve, vote.reason) == (SAM, False, reason)
    done = await ui_engine.wait_for_run(run_id, timeout=20)
    assert done.output == {"approved": False, "timed_out": False, "voters": [SAM], "reason": reason}


async def test_the_schema_is_a_form_and_bad_data_is_refused_next_to_its_field(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask(typed=True)
    url = link(approval_id, ANA)
    page = await ui.get(url)
    assert 'name="data.amount"' in page.text and "How much to refund, in EUR" in page.text
    wrong = await ui.post(url, data={**APPROVE, "data.amount": "lots"})
    assert wrong.status_code == 422
    assert field_errors(wrong.text)["field-1"] == "'lots' is not a number"
    missing = await ui.post(url, data=APPROVE)
    assert field_errors(missing.text)["field-1"] == "this field is required"
    assert (await ui_engine.approvals.retrieve(approval_id)).votes == []
    done = await ui.post(url, data={**APPROVE, "data.amount": "19.99"})
    assert done.status_code == 200
    [vote] = (await ui_engine.approvals.retrieve(approval_id)).votes
    assert vote.data == {"amount": 19.99}


async def test_hidden_votes_stay_hidden_but_your_own_is_shown(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    _, approval_id = await ask(show_votes=False, quorum=3)
    await ui_engine.approvals.vote(approval_id, LI, approve=True, reason="secret reasons")
    await ui.post(link(approval_id, ANA), data={**APPROVE, "reason": "mine"})
    page = await ui.get(link(approval_id, ANA))
    assert "Votes so far" not in page.text and "secret reasons" not in page.text
    assert "Your vote approve: mine" in text_of(page.text)


async def test_the_links_grant_nothing_on_the_api(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, approval_id = await ask()
    for ticket in (
        link(approval_id, ANA).split("?t=")[1],
        local_path(inbox_url(BASE_URL, Auth(KEY), ANA, "1h")).split("?t=")[1],
    ):
        bearer = {"Authorization": f"Bearer {ticket}"}
        assert (await ui.get("/api/v1/runs", headers=bearer)).status_code == 403
        assert (await ui.get(f"/api/v3/runs/{run_id}", headers=bearer)).status_code == 403
        assert (await ui.get("/ui/runs", headers=bearer)).status_code == 401


def inbox_link(approver: str, expires_in: str = "1h") -> str:
    return local_path(inbox_url(BASE_URL, Auth(KEY), approver, expires_in))


def rows(html: str, section: str) -> list[str]:
    """The text of each row of a section's table (its header aside)."""
    part = html.split(f'aria-labelledby="{section}"', 1)[1].split("</section>", 1)[0]
    part = part.split("<tbody>", 1)[-1]
    return [text_of(row) for row in re.findall(r"<tr>(.*?)</tr>", part, re.S)]


async def test_the_inbox_lists_what_the_approver_is_asked_and_its_links_vote(
    ui_engine: Engine, ui: httpx.AsyncClient, ask: Ask
) -> None:
    run_id, first = await ask(title="Refund order 42")
    _, second = await ask(title="Refund order 43", reject_on="any")
    await ask(title="Not for Ana", approvers=[LI, SAM])
    _, decided = await ask(title="Refund order 41", reject_on="any")
    await ui_engine.approvals.vote(decided, SAM, approve=False, reason="no")

    page = await ui.get(inbox_link(ANA))
    assert page.status_code == 200, page.text
    assert heading(page.text) == "Your approvals" and 'class="top"' not in page.text
    waiting = rows(page.text, "h-waiting")
    assert len(waiting) == 2 and not any("Not for Ana" in row for row in waiting)
    assert any("Refund order 42" in row and run_id in row and "not yet" in row for row in waiting)
    assert "data-countdown" in page.text
    [closed] = rows(page.text, "h-decided")
    assert "Refund order 41" in closed and "rejected" in closed and "not yet" in closed

    urls = dict(
        (unescape(title), unescape(url))
        for url, title in re.findall(
            r'<a href="([^"]+)" class="token-title">([^<]+)</a>', page.text
        )
    )
    assert set(urls) == {"Refund order 42", "Refund order 43", "Refund order 41"}
    assert all(u.startswith(f"{BASE_URL}/ui/vote/") for u in urls.values())
    opened = await ui.get(local_path(urls["Refund order 42"]))
    assert opened.status_code == 200 and heading(opened.text) == "Your vote is needed"
    assert f"You {ANA}" in text_of(opened.text)
    voted = await ui.post(local_path(urls["Refund order 42"]), data=APPROVE)
    assert heading(voted.text) == "Your approval was recorded"
    assert [v.approver for v in (await ui_engine.approvals.retrieve(first)).votes] == [ANA]
    assert (await ui_engine.approvals.retrieve(second)).votes == []

    again = await ui.get(inbox_link(ANA))
    [row_42] = [row for row in rows(again.text, "h-waiting") if "Refund order 42" in row]
    assert "approve" in row_42 and "not yet" not in row_42

    other = await ui.get(inbox_link(LI))
    assert len(rows(other.text, "h-waiting")) == 3  # 42, 43 and the one not for Ana


async def test_a_bad_inbox_link_is_an_error_page(ui: httpx.AsyncClient, ask: Ask) -> None:
    _, approval_id = await ask()
    cases = {
        "/ui/inbox": 401,
        "/ui/inbox?t=garbage": 401,
        expired(inbox_scope(ANA), "/ui/inbox"): 401,
        f"/ui/inbox?t={KEY}": 403,
        "/ui/inbox?t=" + link(approval_id, ANA).split("?t=")[1]: 403,
        "/ui/inbox?t=" + Auth(KEY).public_token([inbox_scope(ANA), inbox_scope(LI)]): 403,
        "/ui/inbox?t=" + Auth(KEY).public_token(["read:approvals:inbox:"]): 403,
    }
    for url, status in cases.items():
        answer = await ui.get(url)
        assert answer.status_code == status, url
        assert "<table" not in answer.text and 'class="top"' not in answer.text


def test_inbox_url_is_one_scope_for_one_approver() -> None:
    auth = Auth(KEY)
    url = inbox_url("https://approvals.example.com/base/", auth, " ana@example.com ", "7d")
    assert url.startswith("https://approvals.example.com/base/ui/inbox?t=")
    assert auth.scopes_of(url.split("?t=")[1]) == ["read:approvals:inbox:ana@example.com"]
    with pytest.raises(ValidationError, match="no spaces"):
        inbox_url(BASE_URL, auth, "ana lima", "1h")
    with pytest.raises(ValidationError, match="at most 30d"):
        inbox_url(BASE_URL, auth, ANA, "31d")


async def test_the_vote_page_also_works_for_an_approval_link_made_elsewhere(
    ui_engine: Engine, ask: Ask, db_url: str
) -> None:
    """A link made by the facade on another public URL still opens here (path and query)."""
    _, approval_id = await ask()
    settings = Settings(secret_key=KEY, public_url="https://approvals.example.com/base/")
    async with Engine(db_url, settings=settings) as elsewhere:
        links = await elsewhere.approvals.links(approval_id)
    assert links[ANA].startswith(f"https://approvals.example.com/base/ui/vote/{approval_id}?t=")
    async with client_for(ui_engine) as browser:
        page = await browser.get(local_path(links[ANA]).removeprefix("/base"))
        assert page.status_code == 200 and heading(page.text) == "Your vote is needed"
