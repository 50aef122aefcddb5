"""The approval page and the inbox tell the reviewer what they approve: the token's title, its
description (plain text: markup in it is shown, never run) and its context as a list of names
and values."""

from __future__ import annotations

import re
from html import unescape

import httpx
import pytest

from engine import Engine

from .conftest import Decision
from .test_approve import link_for

TITLE = "Refund order 42"
DESCRIPTION = 'The parcel never came.\n<script>alert("x")</script> <b>urgent</b>'
CONTEXT = {"amount": 19.99, "customer": "<i>ana</i>", "items": ["mug", "lid"], "vip": True}


@pytest.fixture
async def token_id(ui_engine: Engine) -> str:
    token = await ui_engine.tokens.create(
        timeout="1h", schema=Decision, title=TITLE, description=DESCRIPTION, context=CONTEXT
    )
    return token.id


def context_list(html: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of the context's definition list, as a reader sees them."""
    match = re.search(r'<dl class="facts context">(.*?)</dl>', html, re.S)
    assert match is not None, "no context list on the page"
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", match.group(1), re.S)
    return [(unescape(name), unescape(re.sub(r"<[^>]+>", "", value))) for name, value in pairs]


def assert_details_shown_escaped(html: str) -> None:
    assert f'<h2 class="request-title">{TITLE}</h2>' in html
    assert "<script>" not in html and "<b>urgent</b>" not in html  # shown, never markup
    assert (
        '<p class="description">The parcel never came.\n'
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &lt;b&gt;urgent&lt;/b&gt;</p>"
    ) in html
    assert context_list(html) == [
        ("amount", "19.99"),
        ("customer", "<i>ana</i>"),
        ("items", '["mug", "lid"]'),
        ("vip", "true"),
    ]
    assert "<i>ana</i>" not in html


async def test_the_approval_page_shows_what_the_reviewer_approves(
    ui: httpx.AsyncClient, token_id: str
) -> None:
    page = await ui.get(link_for(token_id))
    assert page.status_code == 200
    assert_details_shown_escaped(page.text)
    assert f"<title>Your answer is needed: {TITLE}" in page.text
    # the details come before the form that answers them
    assert page.text.index("request-title") < page.text.index('<form method="post"')


async def test_the_answered_and_closed_pages_still_say_what_it_was(
    ui_engine: Engine, ui: httpx.AsyncClient, token_id: str
) -> None:
    answer = await ui.post(
        link_for(token_id), data={"data.reviewer": "ana", "data.approved": "true"}
    )
    assert "<h1>Approved</h1>" in answer.text
    assert_details_shown_escaped(answer.text)
    again = await ui.get(link_for(token_id))
    assert "Already answered" in again.text and TITLE in again.text
    cancelled = await ui_engine.tokens.create(title="Ship it?")
    await ui_engine.tokens.cancel(cancelled.id)
    closed = await ui.get(link_for(cancelled.id))
    assert closed.status_code == 410 and "Ship it?" in closed.text


async def test_a_token_without_details_shows_no_empty_section(
    ui_engine: Engine, ui: httpx.AsyncClient
) -> None:
    token = await ui_engine.tokens.create(timeout="1h")
    page = await ui.get(link_for(token.id))
    assert page.status_code == 200 and 'class="request"' not in page.text


async def test_the_inbox_and_the_token_page_show_the_details(
    dashboard: httpx.AsyncClient, token_id: str
) -> None:
    inbox = await dashboard.get("/ui/tokens")
    assert inbox.status_code == 200
    row = next(r for r in inbox.text.split("<tr>") if token_id in r)
    assert f'<span class="token-title">{TITLE}</span>' in row
    assert "&lt;script&gt;" in row and "<script>" not in row  # the description, escaped
    assert "amount: 19.99" in row and "customer: &lt;i&gt;ana&lt;/i&gt;" in row
    page = await dashboard.get(f"/ui/tokens/{token_id}")
    assert page.status_code == 200
    assert_details_shown_escaped(page.text)
    assert re.search(f"<title>{TITLE} . Token {token_id}", page.text)
