"""The UI in a real browser: headless Chromium (Debian's) driven by Playwright, against a
real ``waitpoint dev`` process (worker and API) on a free loopback port.

A reviewer opens an approval link, is told what is wrong with an incomplete answer, approves,
and the waiting run resumes and completes. Two approvers open their own voting links, approve,
and the run waiting on ``request_approval`` completes with both votes. The dashboard signs in
through the one-click link ``waitpoint dev`` printed, lists the waiting token with its
countdown, completes one from its generated form, and shows a run's timeline, which updates
by itself when the run finishes. Wrong and expired links get an error page without a form.
A finished run's waterfall draws its bars as wide as the timeline's durations say, and the
runs page charts the runs finished in the last hour.

``WAITPOINT_UI_SCREENSHOTS=docs`` writes the README's screenshots to docs/.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine import Engine, Settings
from engine.api.auth import Auth
from engine.signing import inbox_url
from tests.test_api_server import DevServer, get_run, poll

playwright_api = pytest.importorskip("playwright.sync_api")
Browser = playwright_api.Browser
Locator = playwright_api.Locator
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"

BROWSER_TASKS = """
import time
from typing import Literal

from pydantic import BaseModel, Field

from engine import Retry, create_token, request_approval, sleep, step, task, wait_for_token


class Decision(BaseModel):
    approved: bool
    reviewer: str = Field(description="Who made the decision")
    channel: Literal["email", "phone", "chat"] = "email"
    refund_percent: int = Field(100, ge=0, le=100, description="Share of the order refunded")
    note: str = ""


def open_ticket(order_id: int) -> str:
    return f"T-{order_id}"


@task("approve-refund")
async def approve_refund(payload: dict) -> dict:
    ticket = await step("open-ticket", open_ticket, payload["order_id"])
    token = await create_token(
        timeout="24h", tags=["refund", f"order:{payload['order_id']}"], schema=Decision
    )
    result = await wait_for_token(token)
    decision = result.output
    return {"ticket": ticket, "refunded": decision.approved, "reviewer": decision.reviewer}


@task("vote-refund")
async def vote_refund(payload: dict) -> dict:
    decision = await request_approval(
        "Refund order 42",
        description="Parcel arrived damaged; photos in the ticket.",
        approvers=["ana@example.com", "li@example.com"],
        quorum=2,
        context={"order": 42},
    )
    return {"approved": decision.approved, "voters": [v.approver for v in decision.votes]}


CHARGED: dict[int, int] = {}


def charge_card(order_id: int) -> str:
    time.sleep(0.2)
    CHARGED[order_id] = CHARGED.get(order_id, 0) + 1
    if CHARGED[order_id] == 1:
        raise ConnectionError("payment gateway timed out")
    return f"ch_{order_id}"


@task("pack-parcel")
async def pack_parcel(payload: dict) -> dict:
    await step("pick-items", time.sleep, 0.4)
    await sleep("1s")
    return {"parcel": f"P-{payload['order_id']}"}


@task("ship-order", retry=Retry(max_attempts=2, min_delay="1s", max_delay="1s", jitter=False))
async def ship_order(payload: dict) -> dict:
    await step("reserve-stock", time.sleep, 0.3)
    token = await create_token(timeout="1h", tags=[f"ship:{payload['order_id']}"])
    await wait_for_token(token)
    await step("charge-card", charge_card, payload["order_id"])
    parcel = await pack_parcel.trigger_and_wait({"order_id": payload["order_id"]})
    await sleep("2s")
    return {"parcel": parcel.output["parcel"]}
"""


def _chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = DevServer(tmp_path_factory.mktemp("browser"), "browser_tasks", BROWSER_TASKS)
    try:
        dev.start()
        yield dev
    finally:
        dev.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1120, "height": 760}, locale="en-US")
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def api(server: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.auth_headers, timeout=10) as client:
        yield client


def screenshot(page: Page, name: str, tmp_path: Path, *, down_to: Locator | None = None) -> None:
    """Keep a screenshot; with WAITPOINT_UI_SCREENSHOTS=docs, as the README's picture. The
    whole page, or from its top down to the bottom of ``down_to``."""
    target = DOCS if os.environ.get("WAITPOINT_UI_SCREENSHOTS") == "docs" else tmp_path
    target.mkdir(exist_ok=True)
    if down_to is None:
        page.screenshot(path=str(target / name), full_page=True)
        return
    box, size = down_to.bounding_box(), page.viewport_size
    assert box is not None and size is not None
    bottom = box["y"] + box["height"] + 16
    clip = {"x": 0, "y": 0, "width": size["width"], "height": bottom}
    page.screenshot(path=str(target / name), full_page=True, clip=clip)


def trigger_and_park(api: httpx.Client, order_id: int) -> tuple[str, dict[str, Any]]:
    """Trigger a refund run and wait until it waits; returns the run id and its token."""
    answer = api.post(
        "/api/v1/tasks/approve-refund/trigger",
        json={"payload": {"order_id": order_id}, "options": {"tags": ["vip"]}},
    )
    assert answer.status_code == 200, answer.text
    run_id: str = answer.json()["id"]
    poll(lambda: get_run(api, run_id), lambda r: r["status"] == "WAITING", "WAITING", 30)
    listed = api.get(
        "/api/v1/waitpoints/tokens",
        params={"filter[status]": "WAITING", "filter[tags]": f"order:{order_id}"},
    )
    [token] = listed.json()["data"]
    return run_id, token


def approval_link(api: httpx.Client, token_id: str) -> str:
    answer = api.post(f"/api/v1/waitpoints/tokens/{token_id}/approval-link", json={})
    assert answer.status_code == 200, answer.text
    url: str = answer.json()["url"]
    return url


def login_link(server: DevServer) -> str:
    """The one-click sign-in link ``waitpoint dev`` printed at start."""
    found = re.search(r"dashboard .*: (http://\S+/ui/login\?t=\S+)", server.output())
    assert found, server.output()
    return found.group(1)


def test_a_reviewer_approves_through_the_link_and_the_run_completes(
    server: DevServer, api: httpx.Client, page: Page, tmp_path: Path
) -> None:
    run_id, token = trigger_and_park(api, 4242)
    link = approval_link(api, token["id"])
    assert server.secret_key not in link

    page.goto(link)
    expect(page.get_by_role("heading", name="Your answer is needed")).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    expect(page.get_by_role("button", name="Reject")).to_be_visible()
    expect(page.locator("time[data-countdown]")).to_have_text(re.compile(r"^in 2[34]h"))
    page.get_by_label("Refund percent").fill("150")
    page.get_by_label("phone").check()
    page.get_by_role("button", name="Approve").click()

    # Refused by the server: the messages sit next to their fields, the answer is kept.
    expect(page.locator("#field-1-error")).to_have_text("this field is required")
    expect(page.locator("#field-3-error")).to_have_text("150 is greater than the maximum of 100")
    expect(page.get_by_label("Refund percent")).to_have_value("150")
    expect(page.get_by_label("phone")).to_be_checked()
    assert get_run(api, run_id)["status"] == "WAITING"

    page.get_by_label("Reviewer").fill("Ana Lima")
    expect(page.locator("#field-1-error")).to_have_count(0)  # the stale message goes
    page.goto(link)
    page.get_by_label("Reviewer").fill("Ana Lima")
    page.get_by_label("phone").check()
    page.get_by_label("Refund percent").fill("80")
    page.get_by_label("Note").fill("Parcel arrived damaged; photos in the ticket.")
    page.get_by_label("Note").blur()
    screenshot(page, "approval-page.png", tmp_path)
    page.get_by_label("Note").press("Enter")  # Enter must not approve by itself
    expect(page.get_by_role("heading", name="Your answer is needed")).to_be_visible()
    page.get_by_role("button", name="Approve").click()

    expect(page.get_by_role("heading", name="Approved")).to_be_visible()
    done = poll(lambda: get_run(api, run_id), lambda r: r["status"] == "COMPLETED", "done", 30)
    assert done["output"] == {"ticket": "T-4242", "refunded": True, "reviewer": "Ana Lima"}
    closed = api.get(f"/api/v1/waitpoints/tokens/{token['id']}").json()
    assert closed["completedVia"] == "public-token"
    assert closed["data"]["refund_percent"] == 80 and closed["data"]["channel"] == "phone"

    page.goto(link)  # coming back later shows the answer, no form
    expect(page.get_by_role("heading", name="Already answered")).to_be_visible()
    expect(page.locator("form")).to_have_count(0)


def voting_links(server: DevServer, run_id: str) -> dict[str, str]:
    """Each approver's link, made the way a script beside the server makes them: a local
    engine on its database, with its secret key and public URL."""

    async def links() -> dict[str, str]:
        settings = Settings(
            database_url=server.database,
            secret_key=server.secret_key,
            public_url=server.base_url,
            api_url=None,
        )
        async with Engine(settings=settings) as engine:
            [approval] = await engine.approvals.list(run_id=run_id)
            return await engine.approvals.links(approval.id, expires_in="1h")

    # in a thread of its own: Playwright's sync API keeps an event loop on this one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, links()).result(30)


def test_two_approvers_vote_through_their_own_links_and_the_run_completes(
    server: DevServer, api: httpx.Client, page: Page, tmp_path: Path
) -> None:
    answer = api.post("/api/v1/tasks/vote-refund/trigger", json={"payload": {}})
    assert answer.status_code == 200, answer.text
    run_id: str = answer.json()["id"]
    poll(lambda: get_run(api, run_id), lambda r: r["status"] == "WAITING", "WAITING", 30)
    links = voting_links(server, run_id)
    assert sorted(links) == ["ana@example.com", "li@example.com"]
    assert all(server.secret_key not in url for url in links.values())

    page.goto(links["ana@example.com"])
    expect(page.get_by_role("heading", name="Your vote is needed")).to_be_visible()
    expect(page.get_by_role("heading", name="Refund order 42")).to_be_visible()
    expect(page.locator("dl.context")).to_contain_text("order")
    expect(page.get_by_text("No votes yet.")).to_be_visible()
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Your approval was recorded")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("stays open")
    assert get_run(api, run_id)["status"] == "WAITING"

    page.goto(links["li@example.com"])
    expect(page.get_by_role("heading", name="Your vote is needed")).to_be_visible()
    votes = page.get_by_role("table", name="Votes, in the order they were cast")
    expect(votes).to_contain_text("ana@example.com")
    expect(votes).to_contain_text("approve")
    page.get_by_label("Reason").fill("Photos confirm the damage.")
    page.get_by_label("Reason").blur()
    screenshot(page, "vote-page.png", tmp_path)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Your approval was recorded")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("it is approved")

    done = poll(lambda: get_run(api, run_id), lambda r: r["status"] == "COMPLETED", "done", 30)
    assert done["output"] == {"approved": True, "voters": ["ana@example.com", "li@example.com"]}

    page.goto(links["ana@example.com"])  # coming back later shows the outcome, no form
    expect(page.get_by_role("heading", name="Approved")).to_be_visible()
    expect(page.locator("form")).to_have_count(0)
    inbox = inbox_url(server.base_url, Auth(server.secret_key), "li@example.com", "1h")
    page.goto(inbox)
    expect(page.get_by_role("heading", name="Your approvals")).to_be_visible()
    decided = page.get_by_role("table", name="Approvals that asked you and closed")
    expect(decided.get_by_role("row").filter(has_text="Refund order 42")).to_contain_text(
        "approved"
    )


def test_wrong_and_expired_links_show_an_error_page_without_a_form(
    server: DevServer, api: httpx.Client, page: Page
) -> None:
    _, token = trigger_and_park(api, 77)
    good = approval_link(api, token["id"])
    expired = Auth(server.secret_key).public_token(
        [f"write:waitpoints:{token['id']}"], expires_in=-60
    )
    cases = [
        (good.split("?t=")[0] + "?t=not-a-token", 401, "Link not valid"),
        (good.split("?t=")[0] + f"?t={expired}", 401, "Link expired"),
        (good.replace(token["id"], "waitpoint_unknown", 1), 403, "Not allowed"),
        (good.split("?t=")[0], 401, "Link incomplete"),
    ]
    for url, status, heading in cases:
        response = page.goto(url)
        assert response is not None and response.status == status, url
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        expect(page.locator("form")).to_have_count(0)
        expect(page.get_by_role("navigation")).to_have_count(0)


def test_the_dashboard_signs_in_lists_completes_and_follows_a_run_live(
    server: DevServer, api: httpx.Client, page: Page, tmp_path: Path
) -> None:
    waiting_run, waiting_token = trigger_and_park(api, 1001)
    live_run, live_token = trigger_and_park(api, 1002)
    trigger_and_park(api, 1003)

    page.goto(login_link(server))
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    cookies = page.context.cookies()
    [session] = [c for c in cookies if c["name"] == "waitpoint_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert server.secret_key not in session["value"]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session

    row = page.get_by_role("row").filter(has_text=waiting_token["id"])
    expect(row.locator("time[data-countdown]")).to_have_text(re.compile(r"^in 2[34]h \d+m$"))
    expect(row).to_contain_text("order:1001")
    page.get_by_role("link", name="order:1001").first.click()
    expect(page.get_by_role("row")).to_have_count(2)  # the header and the one tagged row
    page.get_by_role("link", name="Inbox").click()
    screenshot(page, "inbox.png", tmp_path)

    page.get_by_role("link", name=waiting_token["id"]).click()
    expect(page.get_by_role("heading", name=waiting_token["id"])).to_be_visible()
    page.get_by_label("Reviewer").fill("Bo")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator(".heading .badge")).to_have_text("COMPLETED")
    expect(page.locator("dl.facts")).to_contain_text("via ui")
    done = poll(lambda: get_run(api, waiting_run), lambda r: r["status"] == "COMPLETED", "x", 30)
    assert done["output"]["refunded"] is False

    page.get_by_role("link", name="Runs").click()
    page.get_by_role("link", name=live_run).click()
    timeline = page.locator("table.timeline")
    expect(timeline).to_contain_text("step open-ticket")
    expect(timeline).to_contain_text("create token")
    expect(timeline).to_contain_text(f'on: ["{live_token["id"]}"]')
    expect(page.locator(".heading .badge")).to_have_text("WAITING")

    # The page follows the run over server-sent events: no reload needed.
    page.evaluate("window.__notReloaded = true")
    answer = api.post(
        f"/api/v1/waitpoints/tokens/{live_token['id']}/complete",
        json={"data": {"approved": True, "reviewer": "Cy"}},
    )
    assert answer.status_code == 200
    expect(page.locator(".heading .badge")).to_have_text("COMPLETED", timeout=20_000)
    expect(timeline).to_contain_text("wait for token")
    expect(timeline).to_contain_text("via api")
    expect(page.get_by_text('"reviewer": "Cy"').first).to_be_visible()
    assert page.evaluate("window.__notReloaded") is True
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    screenshot(page, "run.png", tmp_path)


def test_signing_in_with_the_key_and_cancelling_a_run(
    server: DevServer, api: httpx.Client, page: Page
) -> None:
    run_id, _ = trigger_and_park(api, 555)
    page.goto(f"{server.base_url}/ui/runs/{run_id}")
    expect(page.get_by_role("heading", name="Sign-in needed")).to_be_visible()
    page.get_by_label("Secret key").fill("not the key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("That is not the secret key of this server.")).to_be_visible()
    page.get_by_label("Secret key").fill(server.secret_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=run_id)).to_be_visible()  # back where we were
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".heading .badge")).to_have_text("CANCELED")
    assert get_run(api, run_id)["status"] == "CANCELED"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    started = time.monotonic()
    response = page.goto(f"{server.base_url}/ui/runs")
    assert response is not None and response.status == 401
    assert time.monotonic() - started < 5


def waterfall_durations(timeline: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """``{(journal key, attempt): ms}`` for each step and wait, read from the timeline as the
    API gives it (not from the page): a step's ``durationMs``; a wait from its ``waiting``
    event to the ``attempt_started`` that resumed it, keyed by the entry written next."""
    found: dict[tuple[str, int], int] = {}
    parked: datetime | None = None
    resumed: int | None = None
    for entry in timeline:
        at = datetime.fromisoformat(entry["at"])
        if entry["kind"] == "waiting":
            parked = at
        elif entry["kind"] == "attempt_started" and parked is not None:
            resumed, parked = (at - parked) // timedelta(milliseconds=1), None
        elif "key" in entry:
            if resumed is not None:
                found[entry["key"], entry["attempt"]] = resumed
            elif entry["kind"] == "step":
                found[entry["key"], entry["attempt"]] = entry["durationMs"]
            resumed = None
    return found


def test_a_finished_runs_waterfall_draws_durations_to_scale(
    server: DevServer, api: httpx.Client, page: Page, tmp_path: Path
) -> None:
    answer = api.post("/api/v1/tasks/ship-order/trigger", json={"payload": {"order_id": 7}})
    assert answer.status_code == 200, answer.text
    run_id: str = answer.json()["id"]
    poll(lambda: get_run(api, run_id), lambda r: r["status"] == "WAITING", "WAITING", 30)
    [token] = api.get("/api/v1/waitpoints/tokens", params={"filter[tags]": "ship:7"}).json()["data"]
    time.sleep(1.2)  # someone takes a moment to answer: the token's wait has a length
    api.post(f"/api/v1/waitpoints/tokens/{token['id']}/complete", json={"data": {"ok": True}})
    done = poll(lambda: get_run(api, run_id), lambda r: r["status"] == "COMPLETED", "done", 60)
    assert done["output"] == {"parcel": "P-7"}
    timeline = api.get(f"/api/v1/runs/{run_id}/timeline").json()["data"]
    durations = waterfall_durations(timeline)
    assert ("step:charge-card#0", 1) in durations and ("step:charge-card#0", 2) in durations

    page.goto(f"{server.base_url}/ui/runs/{run_id}")  # the one-click link may be spent
    page.get_by_label("Secret key").fill(server.secret_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=run_id)).to_be_visible()
    picture = page.get_by_role("img", name=re.compile("^Waterfall of the run"))
    expect(picture).to_be_visible()
    expect(picture).to_have_attribute(
        "aria-label", re.compile(r"2 attempts, 3 steps \(1 failed\), 3 waits, 1 child run\.$")
    )

    def width(key: str, attempt: int) -> float:
        row = page.locator(f'svg.waterfall g[data-key="{key}"][data-attempt="{attempt}"]')
        box = row.locator("rect.wf-bar").bounding_box()
        assert box is not None, (key, attempt)
        return float(box["width"])

    # one scale for every bar: the longest gives it; bars shorter than 150 ms are left out
    # (their minimum width is not to scale)
    measured = {bar: (ms, width(*bar)) for bar, ms in durations.items() if ms >= 150}
    assert len(measured) >= 6, durations  # 3 steps (one failed), token, child run and sleep
    longest_ms, longest_px = max(measured.values())
    px_per_ms = longest_px / longest_ms
    for bar, (ms, px) in measured.items():
        assert abs(px - ms * px_per_ms) <= 2, (bar, ms, px, px_per_ms)
    token_wait = measured[f"wait_for_token:{token['id']}#0", 1]
    reserve = measured["step:reserve-stock#0", 1]
    assert abs(token_wait[1] / reserve[1] * reserve[0] - token_wait[0]) * px_per_ms <= 2

    child = page.locator("svg.waterfall g.wf-child a")
    expect(child).to_have_attribute("href", re.compile(r"^/ui/runs/run_"))
    expect(page.locator("svg.waterfall g.wf-attempt.wf-bad")).to_contain_text(
        "failed: payment gateway timed out; retried after 1.0 s"
    )
    screenshot(page, "waterfall.png", tmp_path, down_to=page.locator("figure.waterfall"))

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Runs").click()
    chart = page.get_by_role("img", name=re.compile("^Runs finished per minute"))
    expect(chart).to_be_visible()
    expect(page.locator("svg.chart rect[data-status=COMPLETED]").first).to_be_visible()
    listed = page.locator("table.list tbody tr")
    screenshot(page, "runs-chart.png", tmp_path, down_to=listed.nth(min(listed.count(), 6) - 1))
