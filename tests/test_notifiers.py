"""The notifiers of approvals (``engine.notifiers``), against real servers on 127.0.0.1.

Webhooks go to a small HTTP server made here with ``asyncio.start_server``, which answers
each request with the next reply of its script (a status, a dropped connection, silence), one
request per connection; e-mail goes to an ``aiosmtpd`` server. Nothing is mocked: what is
checked is what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypedDict

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from engine.errors import AuthError, ConfigurationError
from engine.models import Approval, Approver, WaitpointStatus
from engine.notifiers import (
    Delivery,
    EmailNotifier,
    Notifier,
    WebhookNotifier,
    notifier_from_settings,
    sign_webhook,
    verify_webhook,
)

SECRET = "a-webhook-secret-of-some-length"
LINK = "https://waitpoint.example/ui/approve/waitpoint_01?t=eyJ.abc&lang=en"


class Delays(TypedDict):
    min_delay: float
    max_delay: float


FAST: Delays = {"min_delay": 0.01, "max_delay": 0.05}
"""Back-off delays for tests: tiny."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def an_approval(title: str = "Deploy v2 to production", **changes: Any) -> Approval:
    created = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": "waitpoint_01",
        "run_id": "run_01",
        "status": WaitpointStatus.WAITING,
        "title": title,
        "description": "Release 2.0: the new billing.",
        "quorum": 2,
        "reject_on": "any",
        "approvers": [
            Approver(approver="alice@example.com", added_at=created),
            Approver(approver="bob@example.com", added_at=created),
        ],
        "votes": [],
        "created_at": created,
        "expires_at": created + timedelta(days=1),
    }
    return Approval(**{**fields, **changes})


# --- a scripted HTTP server ------------------------------------------------------------

Reply = int | tuple[int, dict[str, str]] | str
"""A status; a status and headers; "drop" (close without answering); "hang" (never answer)."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Answers the n-th request with ``replies[n]`` (the last one again once they run out)."""

    replies: Sequence[Reply]
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/T0/B0/path-secret"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(head[0].split(" ")[1], headers, body))
            reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
            if reply == "drop":
                return
            if reply == "hang":
                await reader.read()  # until the client gives up and closes
                return
            status, extra = reply if isinstance(reply, tuple) else (reply, {})
            assert isinstance(status, int)
            text = f"answer {status}".encode()
            lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            lines += [f"Content-Length: {len(text)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode() + text)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# --- webhooks --------------------------------------------------------------------------


async def test_a_webhook_is_retried_with_one_id_until_it_is_accepted() -> None:
    approval = an_approval()
    async with ScriptedServer([500, "drop", 200]) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, **FAST)
        before = datetime.now(UTC)
        delivery = await notifier.notify(approval, "alice@example.com", LINK, "requested")

    assert delivery.ok, delivery
    assert (delivery.channel, delivery.approver, delivery.reason) == (
        "webhook",
        "alice@example.com",
        "requested",
    )
    assert (delivery.attempts, delivery.status, delivery.error) == (3, 200, None)
    assert delivery.at.tzinfo is not None and delivery.at.utcoffset() == timedelta(0)
    assert before <= delivery.at <= datetime.now(UTC)

    assert len(server.requests) == 3
    assert {r.path for r in server.requests} == {"/hooks/T0/B0/path-secret"}
    assert len({r.headers["webhook-id"] for r in server.requests}) == 1
    assert len({r.body for r in server.requests}) == 1  # the same body, signed afresh each time
    last = server.requests[-1]
    assert last.headers["content-type"] == "application/json"
    assert last.headers["webhook-signature"].startswith("v1,")
    assert abs(int(last.headers["webhook-timestamp"]) - time.time()) < 30

    payload = json.loads(last.body)
    assert payload["type"] == "approval.requested"
    assert payload["approval"] == approval.model_dump(mode="json", by_alias=True)
    assert payload["approval"]["runId"] == "run_01"
    assert (payload["approver"], payload["link"]) == ("alice@example.com", LINK)
    sent_at = datetime.fromisoformat(payload["sentAt"])
    assert payload["sentAt"].endswith("Z") and before - timedelta(seconds=1) <= sent_at

    for request in server.requests:
        verify_webhook(request.body, request.headers, SECRET)
    with pytest.raises(AuthError) as tampered:
        verify_webhook(last.body.replace(b"alice", b"mallory"), last.headers, SECRET)
    assert tampered.value.status == 401
    with pytest.raises(AuthError, match="does not match"):
        verify_webhook(last.body, last.headers, "another-secret")


def test_verify_webhook_refuses_old_or_unsigned_deliveries() -> None:
    body = b'{"type":"approval.reminder"}'
    old = sign_webhook(body, SECRET, webhook_id="msg_1", timestamp=int(time.time()) - 600)
    with pytest.raises(AuthError, match="old") as stale:
        verify_webhook(body, old, SECRET)
    assert stale.value.status == 401
    verify_webhook(body, old, SECRET, tolerance=900)  # it was only the age

    ahead = sign_webhook(body, SECRET, webhook_id="msg_1", timestamp=int(time.time()) + 600)
    with pytest.raises(AuthError, match="ahead"):
        verify_webhook(body, ahead, SECRET)

    fresh = sign_webhook(body, SECRET, webhook_id="msg_1", timestamp=int(time.time()))
    verify_webhook(body, {name.title(): value for name, value in fresh.items()}, SECRET)
    for missing in fresh:
        with pytest.raises(AuthError, match="missing"):
            verify_webhook(body, {k: v for k, v in fresh.items() if k != missing}, SECRET)
    with pytest.raises(AuthError, match="whole number"):
        verify_webhook(body, {**fresh, "webhook-timestamp": "soon"}, SECRET)
    with pytest.raises(AuthError, match="does not match"):
        verify_webhook(body, {**fresh, "webhook-id": "msg_2"}, SECRET)
    with pytest.raises(AuthError, match="does not match"):
        verify_webhook(
            body, {**fresh, "webhook-signature": "v2," + fresh["webhook-signature"]}, SECRET
        )
    # a sender rotating its secret sends one signature per secret: one match is enough
    other = sign_webhook(body, "the-old-secret", webhook_id="msg_1", timestamp=int(time.time()))
    both = f"{other['webhook-signature']} {fresh['webhook-signature']}"
    verify_webhook(body, {**fresh, "webhook-signature": both}, SECRET)


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    """The specification's published example (also in Svix's docs): what lets a receiver
    verify these deliveries with any Standard Webhooks library, given a whsec_ secret."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = sign_webhook(
        body, secret, webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    verify_webhook(body, headers, secret, tolerance=time.time())


@pytest.mark.parametrize(
    ("replies", "settings"),
    [
        # Retry-After: 0 is honoured, though the back-off alone would wait 20 s
        ([(503, {"Retry-After": "0"}), 200], {"min_delay": 20.0, "max_delay": 60.0}),
        # a Retry-After of an hour is capped at max_delay
        ([(429, {"Retry-After": "3600"}), 200], {"min_delay": 0.01, "max_delay": 0.05}),
        ([408, 200], FAST),
    ],
    ids=["retry-after-0", "retry-after-capped", "408"],
)
async def test_retry_after_is_honoured_and_capped(replies: list[Reply], settings: Delays) -> None:
    async with ScriptedServer(replies) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, **settings)
        started = time.monotonic()
        delivery = await notifier.notify(an_approval(), "bob", LINK, "reminder")
    assert time.monotonic() - started < 5
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 2, 200)
    assert json.loads(server.requests[0].body)["type"] == "approval.reminder"


async def test_a_400_is_not_retried() -> None:
    async with ScriptedServer([400, 200]) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, **FAST)
        delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "escalated")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 1, 400)
    assert delivery.error == "HTTP 400 Bad Request: answer 400"
    assert len(server.requests) == 1


async def test_a_receiver_that_never_answers_well_gets_attempts_tries() -> None:
    async with ScriptedServer([500, 502, 503]) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, attempts=3, **FAST)
        delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 3, 503)
    assert delivery.error == "HTTP 503 Service Unavailable: answer 503"
    assert len(server.requests) == 3


async def test_a_silent_receiver_times_out_each_attempt() -> None:
    async with ScriptedServer(["hang"]) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, attempts=2, timeout=0.2, **FAST)
        delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 2, None)
    assert delivery.error is not None and delivery.error.startswith("no answer within 0.2 s")
    assert len(server.requests) == 2


async def test_a_refused_connection_is_retried_and_the_url_stays_out_of_the_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/services/T0/B0/path-secret"
    notifier = WebhookNotifier(url, secret=SECRET, attempts=3, **FAST)
    delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 3, None)
    assert delivery.error is not None and delivery.error.startswith("ConnectError")
    assert "path-secret" not in delivery.error and "path-secret" not in repr(notifier)


async def test_the_slack_format_posts_text_and_is_signed() -> None:
    approval = an_approval(title="Deploy <!channel> & db")
    async with ScriptedServer([200]) as server:
        notifier = WebhookNotifier(server.url, secret=SECRET, format="slack", **FAST)
        delivery = await notifier.notify(approval, "alice@example.com", LINK, "reminder")
    assert delivery.ok
    received = server.requests[0]
    assert json.loads(received.body) == {
        "text": "Deploy &lt;!channel&gt; &amp; db — reminder: " + LINK.replace("&", "&amp;")
    }
    verify_webhook(received.body, received.headers, SECRET)


def test_bad_webhook_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        WebhookNotifier("ftp://example.com/hook", secret=SECRET)
    with pytest.raises(ConfigurationError, match="empty"):
        WebhookNotifier("https://example.com/hook", secret="")
    with pytest.raises(ConfigurationError, match="base64"):
        WebhookNotifier("https://example.com/hook", secret="whsec_not base64!")
    with pytest.raises(ConfigurationError, match="attempts"):
        WebhookNotifier("https://example.com/hook", secret=SECRET, attempts=0)
    with pytest.raises(ConfigurationError, match="min_delay"):
        WebhookNotifier("https://example.com/hook", secret=SECRET, min_delay=5, max_delay=1)
    with pytest.raises(ConfigurationError, match="format"):
        WebhookNotifier("https://example.com/hook", secret=SECRET, format="teams")  # type: ignore[arg-type]


# --- e-mail ----------------------------------------------------------------------------


@dataclass
class Inbox:
    """An aiosmtpd handler: keeps what arrives; ``refusals`` answer the next RCPTs first."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refusals:
            return self.refusals.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope, message))
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server(**kwargs: Any) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_an_email_arrives_with_subject_sender_and_the_link_in_both_parts() -> None:
    approval = an_approval(
        title="Deploy <v2> & more", description="Release 2.0: the new billing.\nNo downtime."
    )
    link = "http://127.0.0.1:8000/ui/approve/waitpoint_01?t=abc&x=1"
    with smtp_server() as (inbox, port):
        notifier = EmailNotifier("127.0.0.1", port, sender="Waitpoint <approvals@example.com>")
        assert notifier.starttls is False  # a server on this machine
        delivery = await notifier.notify(approval, "alice@example.com", link, "requested")

    assert delivery == Delivery(
        channel="email",
        approver="alice@example.com",
        reason="requested",
        attempts=1,
        ok=True,
        status=250,
        at=delivery.at,
    )
    [(envelope, message)] = inbox.messages
    assert envelope.mail_from == "approvals@example.com"
    assert envelope.rcpt_tos == ["alice@example.com"]
    assert message["Subject"] == "Approval requested: Deploy <v2> & more"
    assert message["From"] == "Waitpoint <approvals@example.com>"
    assert message["To"] == "alice@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@example.com>")
    text = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert text is not None and page is not None
    plain = text.get_content().replace("\r\n", "\n")
    assert link in plain and "Release 2.0: the new billing.\nNo downtime." in plain
    assert "votes as alice@example.com" in plain
    markup = page.get_content().replace("\r\n", "\n")
    assert '<a href="http://127.0.0.1:8000/ui/approve/waitpoint_01?t=abc&amp;x=1">' in markup
    assert "Deploy &lt;v2&gt; &amp; more" in markup and "<v2>" not in markup
    assert "<p>Release 2.0: the new billing.<br>No downtime.</p>" in markup


@pytest.mark.parametrize(
    ("reason", "subject"),
    [("reminder", "Reminder: A title"), ("escalated", "Approval requested (escalated): A title")],
)
async def test_the_subject_says_why(reason: Any, subject: str) -> None:
    with smtp_server() as (inbox, port):
        notifier = EmailNotifier("127.0.0.1", port, sender="approvals@example.com")
        delivery = await notifier.notify(an_approval("A\ntitle"), "bob@example.com", LINK, reason)
    assert delivery.ok
    assert inbox.messages[0][1]["Subject"] == subject


async def test_an_approver_that_is_not_an_address_is_not_sent_to() -> None:
    with smtp_server() as (inbox, port):
        notifier = EmailNotifier("127.0.0.1", port, sender="approvals@example.com")
        for approver in ("bob", "bob@example.com\nBcc: eve@example.com", "a@b.c, eve@d.e"):
            delivery = await notifier.notify(an_approval(), approver, LINK, "requested")
            assert (delivery.ok, delivery.attempts, delivery.status) == (False, 0, None)
            assert delivery.error is not None and "is not an e-mail address" in delivery.error
    assert inbox.messages == []


async def test_a_4xx_reply_is_retried_and_a_5xx_is_final() -> None:
    with smtp_server() as (inbox, port):
        notifier = EmailNotifier("127.0.0.1", port, sender="approvals@example.com", **FAST)
        inbox.refusals = ["451 4.3.0 Try again later"]
        later = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
        inbox.refusals = ["550 5.1.1 No such mailbox"]
        never = await notifier.notify(an_approval(), "nobody@example.com", LINK, "requested")
    assert (later.ok, later.attempts, later.status) == (True, 2, 250)
    assert (never.ok, never.attempts, never.status) == (False, 1, 550)
    assert never.error == "the server refused nobody@example.com: 550 5.1.1 No such mailbox"
    assert len(inbox.messages) == 1


async def test_a_server_without_starttls_is_not_tried_again() -> None:
    """Asked for TLS, the notifier does not send without it, and asking again changes nothing."""
    with smtp_server() as (inbox, port):
        notifier = EmailNotifier(
            "127.0.0.1", port, sender="approvals@example.com", starttls=True, **FAST
        )
        delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 1, None)
    assert delivery.error is not None and "STARTTLS" in delivery.error
    assert inbox.messages == []


async def test_a_server_that_is_not_there_gives_up_after_the_attempts() -> None:
    notifier = EmailNotifier(
        "127.0.0.1", free_port(), sender="approvals@example.com", attempts=3, **FAST
    )
    delivery = await notifier.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 3, None)
    assert delivery.error is not None and delivery.error.startswith("ConnectionRefusedError")


async def test_the_notifier_logs_in_when_given_credentials() -> None:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"s3cret"
        if ok:
            inbox.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)

    with smtp_server(authenticator=authenticate, auth_require_tls=False) as (inbox, port):
        good = EmailNotifier(
            "127.0.0.1", port, sender="approvals@example.com", username="relay", password="s3cret"
        )
        bad = EmailNotifier(
            "127.0.0.1", port, sender="approvals@example.com", username="relay", password="nope"
        )
        assert (await good.notify(an_approval(), "alice@example.com", LINK, "requested")).ok
        refused = await bad.notify(an_approval(), "alice@example.com", LINK, "requested")
    assert inbox.logins == ["relay"]
    assert (refused.ok, refused.attempts, refused.status) == (False, 1, 535)
    assert "s3cret" not in repr(good) and "nope" not in (refused.error or "")


def test_bad_email_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="sender"):
        EmailNotifier("smtp.example.com", sender="approvals")
    with pytest.raises(ConfigurationError, match="both"):
        EmailNotifier("smtp.example.com", sender="a@example.com", username="relay")
    with pytest.raises(ConfigurationError, match="exclude"):
        EmailNotifier("smtp.example.com", 465, sender="a@example.com", use_tls=True, starttls=True)
    with pytest.raises(ConfigurationError, match="clear text"):
        EmailNotifier(
            "smtp.example.com",
            sender="a@example.com",
            username="relay",
            password="pw",
            starttls=False,
        )
    assert EmailNotifier("smtp.example.com", sender="a@example.com").starttls is True
    assert EmailNotifier("smtp.example.com", 25, sender="a@example.com").starttls is False
    assert EmailNotifier("localhost", 1025, sender="a@example.com").starttls is False
    assert (
        EmailNotifier("smtp.example.com", 465, sender="a@example.com", use_tls=True).starttls
        is False
    )


# --- from one setting ------------------------------------------------------------------


def test_notifier_from_settings() -> None:
    assert notifier_from_settings(None) is None
    assert notifier_from_settings("  ") is None

    hook = notifier_from_settings("https://hooks.example.com/approvals", secret=SECRET)
    assert isinstance(hook, WebhookNotifier) and isinstance(hook, Notifier)
    assert (hook.url, hook.format) == ("https://hooks.example.com/approvals", "json")
    slack = notifier_from_settings("https://hooks.slack.com/services/T0/B0/x", secret=SECRET)
    assert isinstance(slack, WebhookNotifier) and slack.format == "slack"
    with pytest.raises(ConfigurationError, match="secret"):
        notifier_from_settings("https://hooks.example.com/approvals")

    mail = notifier_from_settings(
        "smtp://relay%40example.com:p%2Fw@smtp.example.com?from=approvals@example.com"
    )
    assert isinstance(mail, EmailNotifier) and isinstance(mail, Notifier)
    assert (mail.host, mail.port, mail.sender) == ("smtp.example.com", 587, "approvals@example.com")
    assert (mail.username, mail._password, mail.starttls, mail.use_tls) == (
        "relay@example.com",
        "p/w",
        True,
        False,
    )
    tls = notifier_from_settings("smtps://relay@smtp.example.com?from=a@example.com", secret="pw")
    assert isinstance(tls, EmailNotifier)
    assert (tls.port, tls.use_tls, tls.starttls, tls._password) == (465, True, False, "pw")
    tagged = notifier_from_settings("smtp://smtp.example.com?from=approvals+waitpoint@example.com")
    assert isinstance(tagged, EmailNotifier) and tagged.sender == "approvals+waitpoint@example.com"
    local = notifier_from_settings("smtp://mailpit:1025?from=a@example.com&starttls=false")
    assert isinstance(local, EmailNotifier)
    assert (local.host, local.port, local.starttls, local.username) == (
        "mailpit",
        1025,
        False,
        None,
    )

    with pytest.raises(ConfigurationError, match="sender"):
        notifier_from_settings("smtp://smtp.example.com")
    with pytest.raises(ConfigurationError, match="no notifier"):
        notifier_from_settings("slack://whatever")


def test_secrets_and_links_stay_out_of_reprs() -> None:
    hook = WebhookNotifier("https://hooks.slack.com/services/T0/B0/xyz", secret=SECRET)
    assert repr(hook) == "WebhookNotifier('hooks.slack.com', format='json')"
    assert SECRET not in repr(hook) and "xyz" not in repr(hook)
