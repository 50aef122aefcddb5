"""The notifiers of approvals: how an approver learns that a decision waits for them.

The engine calls a notifier when an approval is requested, at each reminder and when an
escalation adds approvers: once per approver, with that approver's own voting link. What the
notifier returns, a ``Delivery``, is recorded with the approval. A notifier never raises for a
failed delivery: an approver who could not be told is a fact to show on the approval, not a
reason to fail the run that waits for them. Bad settings fail at construction instead
(``ConfigurationError``), when the engine starts rather than when the first approval is due.

Two notifiers are built in:

- ``WebhookNotifier`` POSTs JSON to a URL, signed as the Standard Webhooks specification says
  (https://www.standardwebhooks.com: Svix's scheme, close to Stripe's), so that a receiver can
  tell that a delivery came from this engine, unchanged and recently. ``verify_webhook`` is the
  receiver's check. ``format="slack"`` posts Slack's ``{"text": ...}`` instead.
- ``EmailNotifier`` sends an e-mail (plain text and an HTML alternative) through an SMTP server,
  with the standard library's ``smtplib`` in a worker thread: no new dependency.

Any object with a matching ``notify`` method is a notifier (``Notifier`` is a Protocol): a chat
bot, a pager, a ticket.

A voting link is a capability: whoever holds it votes as its approver. The notifiers send it
where they are told to and nowhere else, and never put it in a log or an error. Mind where a
webhook leads: every member of a Slack channel sees the links posted to it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import json
import random
import re
import secrets
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr, parsedate_to_datetime
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from .errors import AuthError, ConfigurationError
from .models import Approval

if TYPE_CHECKING:
    import httpx  # loaded by the first webhook: `import engine` stays without it

NotifyReason = Literal["requested", "reminder", "escalated"]
"""Why an approver is told: the approval was requested, it still waits for their vote (a
reminder), or an escalation added them."""


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """What became of one notification. The engine records it with the approval, so that
    whoever wonders why an approver never voted can see whether they were ever told."""

    channel: str
    """``"webhook"``, ``"email"``, or a custom notifier's own word."""
    approver: str
    reason: NotifyReason
    attempts: int
    """How many times it was tried; 0 when it could not be tried at all (an approver that is
    not an e-mail address)."""
    ok: bool
    status: int | None = None
    """The last answer's code: a webhook's HTTP status, an e-mail's SMTP reply code (250 when
    the server took it); None when no answer came (refused, timed out, dropped)."""
    error: str | None = None
    """Why it failed, for a person to read (the last attempt's error); None when ``ok``."""
    at: datetime
    """When the last attempt ended (UTC)."""


@runtime_checkable
class Notifier(Protocol):
    """Tells one approver about an approval, through ``link``, their own voting link.

    ``notify`` must not raise for a failed delivery: it returns a ``Delivery`` with
    ``ok=False`` and the error, and the engine records it. Retries are the notifier's business
    (it knows what is worth retrying); the engine calls it once per approver and reason.
    """

    async def notify(
        self, approval: Approval, approver: str, link: str, reason: NotifyReason
    ) -> Delivery: ...


# --- retries ---------------------------------------------------------------------------


def _check_retries(who: str, attempts: int, min_delay: float, max_delay: float) -> None:
    if attempts < 1:
        raise ConfigurationError(f"{who}: attempts must be at least 1, not {attempts}")
    if min_delay < 0 or max_delay < min_delay:
        raise ConfigurationError(
            f"{who}: need 0 <= min_delay <= max_delay, not {min_delay} and {max_delay}"
        )


def _backoff(failed: int, min_delay: float, max_delay: float) -> float:
    """Seconds to wait after the ``failed``-th attempt: doubling from ``min_delay`` up to
    ``max_delay``, with up to half taken off at random, so that the notifications of one
    escalation that failed together (a receiver down) do not all come back together."""
    delay = min(max_delay, min_delay * 2.0 ** min(failed - 1, 60))
    return delay - random.uniform(0, delay / 2)


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- webhooks: signing -----------------------------------------------------------------


def _webhook_key(secret: str) -> bytes:
    """The HMAC key of ``secret``. A Standard Webhooks secret (``whsec_`` then base64) is
    decoded, as that specification's libraries do, so that a receiver using one of them
    verifies these deliveries; any other string is used as its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ConfigurationError(
                "a webhook secret that starts with whsec_ must be base64 after it"
            ) from None
    else:
        key = secret.encode()
    if not key:
        raise ConfigurationError("the webhook secret is empty: nothing would sign the deliveries")
    return key


def _signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_webhook(body: bytes, secret: str, *, webhook_id: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers that sign ``body``: ``webhook-id``,
    ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
    (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). ``WebhookNotifier`` sends
    them; a receiver's tests can make deliveries with them."""
    key = _webhook_key(secret)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{_signature(key, webhook_id, timestamp, body)}",
    }


def verify_webhook(
    body: bytes, headers: Mapping[str, str], secret: str, *, tolerance: float = 300
) -> None:
    """Check that a webhook delivery was signed with ``secret`` over exactly ``body``, less
    than ``tolerance`` seconds ago (or ahead: clocks differ); raise ``AuthError`` (401)
    otherwise. ``body`` must be the bytes received, before any JSON parsing.

    The timestamp is signed with the body, so a delivery captured and sent again later is
    refused once it is older than ``tolerance``; within it, a receiver that must not act twice
    keeps the ``webhook-id`` values it has seen (a retried delivery carries the same one).
    ``webhook-signature`` may hold several space-separated signatures (a sender rotating its
    secret); one match is enough.
    """
    found = {name.lower(): value for name, value in headers.items()}
    webhook_id = found.get("webhook-id")
    stamp = found.get("webhook-timestamp")
    signatures = found.get("webhook-signature")
    if not webhook_id or not stamp or not signatures:
        raise AuthError(
            401, "not a signed webhook: webhook-id, webhook-timestamp or webhook-signature missing"
        )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise AuthError(401, "webhook-timestamp is not a whole number of seconds") from None
    skew = time.time() - timestamp
    if abs(skew) > tolerance:
        when = "old" if skew > 0 else "ahead of this clock"
        raise AuthError(
            401,
            f"webhook-timestamp is {abs(skew):.0f} s {when}, beyond the {tolerance:g} s allowed:"
            " a delivery replayed, or a clock off",
        )
    expected = _signature(_webhook_key(secret), webhook_id, timestamp, body).encode()
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise AuthError(
        401, "webhook-signature does not match: another secret signed it, or the body changed"
    )


# --- webhooks: delivery ----------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds, or an HTTP date), None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - _now()).total_seconds())


def _slack_escape(text: str) -> str:
    """The three characters Slack's message text must have escaped (its docs, "Formatting
    text"): left alone, ``<!channel>`` in a title would ping a whole channel."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_EXCERPT = 300
"""How much of a refusing receiver's answer goes into a Delivery's error."""


class WebhookNotifier:
    """POSTs each notification as JSON to ``url``, signed with ``secret``.

    The body (``format="json"``, the default)::

        {"type": "approval.requested" | "approval.reminder" | "approval.escalated",
         "approval": <the Approval's JSON, camelCase>, "approver": "...", "link": "...",
         "sentAt": "2026-12-04T18:51:08.123Z"}

    With ``format="slack"`` it is ``{"text": "<title> — <reason>: <link>"}`` (``&``, ``<``
    and ``>`` escaped as Slack asks, which it undoes on display), what Slack's
    incoming webhooks (and Mattermost's, and others that read a ``text`` field) post to their
    channel; it is signed all the same, which Slack ignores. Everyone in that channel sees the
    link, and a link votes as its approver: use it where that is what you want. The JSON
    format's ``approval`` holds every approver's link (``Approver.url``) where the facade set
    them: the receiver is trusted with all of them.

    Signing follows Standard Webhooks (``sign_webhook``, ``verify_webhook``): ``webhook-id`` is
    unique per delivery and the same on its retries, so a receiver can drop a repeat; each
    attempt is signed afresh with its own ``webhook-timestamp`` over the same body, so that a
    late retry is not refused as stale. A ``whsec_...`` secret is decoded as its libraries do.

    A delivery is tried up to ``attempts`` times: again after a connection error, a timeout
    (``timeout`` seconds for the whole attempt), 408, 429 or a 5xx, after an exponential
    back-off from ``min_delay`` to ``max_delay`` seconds with jitter, or after what a
    ``Retry-After`` header asks for (capped at ``max_delay``). Any other answer is final: 2xx
    delivered it, 3xx and other 4xx refused it (trying again would get the same answer).

    ``client`` lends an ``httpx.AsyncClient`` (its pool, proxies, TLS settings), which stays
    open; without one, each notification opens and closes its own.
    """

    channel = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str,
        format: Literal["json", "slack"] = "json",
        attempts: int = 5,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("WebhookNotifier needs an http:// or https:// URL")
        if format not in ("json", "slack"):
            raise ConfigurationError(
                f"WebhookNotifier: format is 'json' or 'slack', not {format!r}"
            )
        if timeout <= 0:
            raise ConfigurationError(f"WebhookNotifier: timeout must be positive, not {timeout}")
        _check_retries("WebhookNotifier", attempts, min_delay, max_delay)
        self._key = _webhook_key(secret)
        self.url = url
        self.format = format
        self.attempts = attempts
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self._client = client

    def __repr__(self) -> str:
        # the path of a webhook URL is often its secret (Slack's are): the host only
        return f"WebhookNotifier({urlsplit(self.url).hostname!r}, format={self.format!r})"

    def body(self, approval: Approval, approver: str, link: str, reason: NotifyReason) -> bytes:
        """The bytes a notification POSTs (and signs): the same on every attempt."""
        payload: dict[str, object]
        if self.format == "slack":
            payload = {"text": _slack_escape(f"{approval.title} — {reason}: {link}")}
        else:
            sent_at = _now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
            payload = {
                "type": f"approval.{reason}",
                "approval": approval.model_dump(mode="json", by_alias=True),
                "approver": approver,
                "link": link,
                "sentAt": sent_at,
            }
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    async def notify(
        self, approval: Approval, approver: str, link: str, reason: NotifyReason
    ) -> Delivery:
        import httpx

        body = self.body(approval, approver, link, reason)
        webhook_id = f"msg_{secrets.token_hex(16)}"
        if self._client is not None:
            return await self._deliver(self._client, body, webhook_id, approver, reason)
        async with httpx.AsyncClient() as client:
            return await self._deliver(client, body, webhook_id, approver, reason)

    async def _deliver(
        self,
        client: httpx.AsyncClient,
        body: bytes,
        webhook_id: str,
        approver: str,
        reason: NotifyReason,
    ) -> Delivery:
        import httpx

        status: int | None = None
        error: str | None = None
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": "waitpoint-notifier",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": f"v1,{_signature(self._key, webhook_id, timestamp, body)}",
            }
            wait: float | None = None
            retry = False
            try:
                with anyio.fail_after(self.timeout):
                    async with client.stream(
                        "POST", self.url, content=body, headers=headers, timeout=self.timeout
                    ) as response:
                        status = response.status_code
                        if response.is_success:
                            return Delivery(
                                channel=self.channel,
                                approver=approver,
                                reason=reason,
                                attempts=attempt,
                                ok=True,
                                status=status,
                                at=_now(),
                            )
                        error = f"HTTP {status} {response.reason_phrase}".rstrip()
                        excerpt = await _excerpt(response)
                        if excerpt:
                            error += f": {excerpt}"
                        retry = status in (408, 429) or status >= 500
                        wait = _retry_after(response.headers.get("retry-after"))
            except (httpx.TransportError, TimeoutError) as exc:  # refused, reset, dropped, slow
                status, error, retry = None, self._scrub(_describe(exc)), True
                if isinstance(exc, TimeoutError | httpx.TimeoutException):
                    error = f"no answer within {self.timeout:g} s ({error})"
            except Exception as exc:  # a notifier never raises for a failed delivery
                status, error, retry = None, self._scrub(_describe(exc)), False
            if not retry or attempt == self.attempts:
                break
            if wait is None:
                wait = _backoff(attempt, self.min_delay, self.max_delay)
            await anyio.sleep(min(wait, self.max_delay))
        return Delivery(
            channel=self.channel,
            approver=approver,
            reason=reason,
            attempts=attempt,
            ok=False,
            status=status,
            error=error,
            at=_now(),
        )

    def _scrub(self, text: str) -> str:
        """``text`` without the URL, whose path may be a secret (Slack's are)."""
        return text.replace(self.url, "<webhook url>")


async def _excerpt(response: httpx.Response) -> str:
    """The start of a refusing answer's body (it often says why), read no further."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _EXCERPT:
            break
    text = data[:_EXCERPT].decode(errors="replace").strip()
    return " ".join(text.split())


# --- e-mail ----------------------------------------------------------------------------

_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\.][^\s@<>()\[\],;:\"\\]*")
"""local@domain with nothing that could smuggle a second address or a header in."""

_SUBJECTS: dict[NotifyReason, str] = {
    "requested": "Approval requested: {}",
    "reminder": "Reminder: {}",
    "escalated": "Approval requested (escalated): {}",
}

_LEADS: dict[NotifyReason, str] = {
    "requested": "Your approval is requested.",
    "reminder": "A reminder: this approval still waits for your vote.",
    "escalated": "This approval was escalated to you: it still waits for a decision.",
}


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EmailNotifier:
    """Sends each notification as an e-mail to the approver, who must be an e-mail address.

    Plain text, with an HTML alternative where the link is a link; the subject is
    "Approval requested: <title>", "Reminder: <title>" or "Approval requested (escalated):
    <title>". It is sent with the standard library's ``smtplib`` in a worker thread.

    TLS: ``use_tls`` connects with TLS from the start (port 465); otherwise ``starttls``
    upgrades the connection (port 587, the default), and is on unless the port is 25 (server
    to server, where STARTTLS is opportunistic) or the host is this machine (a local relay or
    a test server). A password is never sent over a connection without TLS to another
    machine: such settings are refused.

    A message is tried up to ``attempts`` times: again after a connection error or a 4xx
    reply (the server's "try again later"), after an exponential back-off from ``min_delay``
    to ``max_delay`` seconds with jitter. A 5xx reply (no such mailbox, authentication
    failed) and a TLS failure are final.
    """

    channel = "email"

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool | None = None,
        use_tls: bool = False,
        attempts: int = 3,
        min_delay: float = 1.0,
        max_delay: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        if not host:
            raise ConfigurationError("EmailNotifier needs the SMTP server's host")
        if not 0 < port < 65536:
            raise ConfigurationError(f"EmailNotifier: no such port {port}")
        if "\r" in sender or "\n" in sender or not _ADDRESS.fullmatch(parseaddr(sender)[1]):
            raise ConfigurationError(f"EmailNotifier: sender {sender!r} is not an e-mail address")
        if (username is None) != (password is None):
            raise ConfigurationError("EmailNotifier: give both username and password, or neither")
        if timeout <= 0:
            raise ConfigurationError(f"EmailNotifier: timeout must be positive, not {timeout}")
        _check_retries("EmailNotifier", attempts, min_delay, max_delay)
        loopback = _is_loopback(host)
        if starttls is None:
            starttls = not use_tls and port != 25 and not loopback
        if starttls and use_tls:
            raise ConfigurationError(
                "EmailNotifier: use_tls (TLS from the start, port 465) and starttls (TLS after"
                " connecting, port 587) exclude each other"
            )
        if password is not None and not (starttls or use_tls or loopback):
            raise ConfigurationError(
                f"EmailNotifier: the password would cross the network to {host} in clear text;"
                " use starttls=True or use_tls=True"
            )
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self._password = password
        self.starttls = starttls
        self.use_tls = use_tls
        self.attempts = attempts
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"EmailNotifier({self.host!r}, {self.port}, sender={self.sender!r})"

    def message(
        self, approval: Approval, approver: str, link: str, reason: NotifyReason
    ) -> EmailMessage:
        """The e-mail a notification sends."""
        title = " ".join(approval.title.split())  # a header holds one line
        message = EmailMessage()
        message["Subject"] = _SUBJECTS[reason].format(title)
        message["From"] = self.sender
        message["To"] = approver
        message["Date"] = format_datetime(_now())
        message["Message-ID"] = make_msgid(domain=parseaddr(self.sender)[1].rpartition("@")[2])
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
        description = approval.description.strip() if approval.description else ""
        expires = (
            approval.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            if approval.expires_at
            else None
        )
        personal = f"This link is yours: whoever opens it votes as {approver}. Do not forward it."
        text = [_LEADS[reason], "", title]
        if description:
            text += ["", description]
        text += ["", "Approve or reject it here:", link, ""]
        if expires:
            text += [f"It expires at {expires}.", ""]
        text.append(personal)
        message.set_content("\n".join(text) + "\n")
        paragraphs = [
            f"<p>{html.escape(_LEADS[reason])}</p>",
            f"<h2>{html.escape(title)}</h2>",
        ]
        if description:
            paragraphs.append("<p>" + html.escape(description).replace("\n", "<br>") + "</p>")
        paragraphs.append(
            f'<p><a href="{html.escape(link, quote=True)}">Approve or reject it here</a></p>'
        )
        if expires:
            paragraphs.append(f"<p>It expires at {html.escape(expires)}.</p>")
        paragraphs.append(f"<p><small>{html.escape(personal)}</small></p>")
        message.add_alternative(
            "<!doctype html>\n<html><body>\n" + "\n".join(paragraphs) + "\n</body></html>\n",
            subtype="html",
        )
        return message

    async def notify(
        self, approval: Approval, approver: str, link: str, reason: NotifyReason
    ) -> Delivery:
        if not _ADDRESS.fullmatch(approver):
            return Delivery(
                channel=self.channel,
                approver=approver,
                reason=reason,
                attempts=0,
                ok=False,
                error=f"approver {approver!r} is not an e-mail address: EmailNotifier sends to"
                " addresses only",
                at=_now(),
            )
        status: int | None = None
        error: str | None = None
        try:  # once: its retries keep its Message-ID, which lets a server drop a repeat
            message = self.message(approval, approver, link, reason)
        except Exception as exc:
            return Delivery(
                channel=self.channel,
                approver=approver,
                reason=reason,
                attempts=0,
                ok=False,
                error=f"the message could not be made: {_describe(exc)}",
                at=_now(),
            )
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            retry = False
            try:
                status = await anyio.to_thread.run_sync(self._send, message, abandon_on_cancel=True)
                return Delivery(
                    channel=self.channel,
                    approver=approver,
                    reason=reason,
                    attempts=attempt,
                    ok=True,
                    status=status,
                    at=_now(),
                )
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = next(iter(exc.recipients.values()), (None, b""))
                status, retry = code, code is not None and 400 <= code < 500
                error = f"the server refused {approver}: {code} {_text(reply)}"
            except smtplib.SMTPResponseException as exc:  # greeting, sender, data, auth refused
                status, retry = exc.smtp_code, 400 <= exc.smtp_code < 500
                error = f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
            except smtplib.SMTPServerDisconnected as exc:  # dropped before it was done
                status, error, retry = None, _describe(exc), True
            except smtplib.SMTPException as exc:  # no STARTTLS or AUTH offered: final
                status, error = None, _describe(exc)
            except ssl.SSLError as exc:  # a certificate refused: trying again changes nothing
                status, error = None, f"TLS with {self.host} failed: {_describe(exc)}"
            except OSError as exc:  # refused, unreachable, timed out
                status, error, retry = None, _describe(exc), True
            except Exception as exc:  # a notifier never raises for a failed delivery
                status, error = None, _describe(exc)
            if not retry or attempt == self.attempts:
                break
            await anyio.sleep(_backoff(attempt, self.min_delay, self.max_delay))
        return Delivery(
            channel=self.channel,
            approver=approver,
            reason=reason,
            attempts=attempt,
            ok=False,
            status=status,
            error=error,
            at=_now(),
        )

    def _send(self, message: EmailMessage) -> int:
        """Deliver ``message`` to the server (in a worker thread); 250, the code of the
        server's taking it (``send_message`` raises on any other)."""
        context = ssl.create_default_context() if self.use_tls or self.starttls else None
        smtp = (
            smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            if self.use_tls
            else smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        )
        with smtp:
            if self.starttls:
                smtp.starttls(context=context)
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            smtp.send_message(message)
        return 250


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


# --- from one setting ------------------------------------------------------------------


def notifier_from_settings(url: str | None, *, secret: str | None = None) -> Notifier | None:
    """A notifier from one setting (an environment variable), or None when it is empty.

    - ``https://...`` (or ``http://``): a ``WebhookNotifier`` signing with ``secret``, which
      is required; a ``hooks.slack.com`` URL is posted in the slack format.
    - ``smtp://user:password@host:port?from=approvals@example.com``: an ``EmailNotifier``
      (STARTTLS unless ``&starttls=false``, port 587 unless given); ``smtps://`` for TLS from
      the start (port 465). User and password are percent-decoded; the password may be left
      out of the URL and given as ``secret``.

    Anything else is a ``ConfigurationError``.
    """
    if not url or not url.strip():
        return None
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not secret:
            raise ConfigurationError("a webhook notifier needs a secret to sign with")
        slack = (parts.hostname or "").lower() == "hooks.slack.com"
        return WebhookNotifier(url, secret=secret, format="slack" if slack else "json")
    if parts.scheme in ("smtp", "smtps"):
        # not parse_qs, which reads "+" as a space: approvals+waitpoint@example.com stays
        query = {
            unquote(name): unquote(value)
            for name, _, value in (item.partition("=") for item in parts.query.split("&"))
            if name
        }
        sender = query.get("from", "")
        if not sender or not parts.hostname:
            raise ConfigurationError(
                "an smtp:// notifier URL needs a host and the sender: smtp://host?from=..."
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError("the smtp:// notifier URL has a bad port") from None
        use_tls = parts.scheme == "smtps"
        starttls: bool | None = None
        if "starttls" in query:
            flag = query["starttls"].lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(f"starttls={flag!r} in the smtp:// URL: true or false")
            starttls = flag in ("true", "1", "yes")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else secret
        return EmailNotifier(
            parts.hostname,
            port or (465 if use_tls else 587),
            sender=sender,
            username=username,
            password=password if username is not None else None,
            starttls=starttls,
            use_tls=use_tls,
        )
    scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
    raise ConfigurationError(
        f"no notifier for {scheme}: https:// for a webhook, smtp:// or smtps:// for e-mail"
    )
