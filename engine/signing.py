"""Everything the engine signs, in one module: what a credential looks like and how it is checked.

- **Callback URLs** (``CallbackSigner``): ``POST {public_url}/api/v1/waitpoints/tokens/{id}/
  callback/{sig}``, where the signature is HMAC-SHA256 of the token id under a signing secret,
  as 64 lowercase hex characters. The signing secret is derived from the secret key
  (``engine.keys``), so the database holds nothing that signs a URL. The URL is a capability:
  whoever holds it can complete that one token, so it is never logged (log the token id).
- **Public access tokens** (``PublicTokens``): HS256 JWTs signed with the secret key, as
  Trigger.dev issues them, carrying scopes such as ``write:waitpoints:<id>``.
- **Approval links** (``approval_url``): ``{public_url}/ui/approve/{id}?t=<public access
  token>``; the ``t`` grants exactly what the token's ``x-trigger-jwt`` grants.
- **Voting and inbox links** (``vote_url``, ``inbox_url``): ``{public_url}/ui/vote/{id}?t=...``
  votes on one approval as one approver; ``{public_url}/ui/inbox?t=...`` lists what one
  approver is asked. Each ``t`` carries that one scope (``vote_scope``, ``inbox_scope``).
- **Sign-in tickets and sessions** (``SignedCredentials``): HMAC-signed claims with a purpose,
  a nonce and an expiry, for the dashboard's one-click sign-in link and its session cookie.
- **Decision receipts** (``engine.receipts``): a closed token's outcome, signed with a key
  derived from the signing secret (``CallbackSigner.secrets``) for receipts alone.

The facade (``engine.client``), the API and the dashboard all import these from here, so a
script that makes an approval link loads neither FastAPI nor Jinja2.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

from . import keys
from .durations import to_timedelta
from .errors import AuthError, ConfigurationError, ValidationError
from .models import Token
from .settings import Settings
from .validation import clean_approver

# --- callback URLs ---------------------------------------------------------------------

_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")

UNKNOWN_PUBLIC_URL = "http://public-url-unknown.invalid"
"""The base of callback URLs made where no public URL is known: ``WAITPOINT_PUBLIC_URL`` is
unset and no API server recorded its address in the database. A token's ``url`` stays a URL
(the wire format wants one), the path and signature are right for whoever knows the address,
and ``.invalid`` never resolves (RFC 2606): such a URL fails at once, where a guessed address
would reach whatever answers there."""


def well_formed(signature: str) -> bool:
    """64 lowercase hex characters: the only shape a signature is ever checked in."""
    return _SIGNATURE.match(signature) is not None


class CallbackSigner:
    """Signs with ``secret``; also accepts signatures under ``previous`` (a key rotation's
    grace period: URLs handed out before it keep working until the previous key is dropped).

    ``public_url`` given here is this process's configured one (``configured``); without it,
    the owner follows the address the API server records in the database (``public_url`` is
    set again as it changes).
    """

    def __init__(self, public_url: str | None, secret: str, previous: str | None = None) -> None:
        self.public_url = public_url
        self.configured = public_url is not None
        self.secrets = keys.SigningSecrets(secret, previous or None)
        """The signing secrets themselves: what keys derived from them (receipts) start from."""
        self._key = secret.encode()
        self._previous = previous.encode() if previous else None

    def present(self, token: Token) -> Token:
        """``token`` with its callback URL: storage returns tokens without one."""
        return token.model_copy(update={"url": self.url(token.id)})

    @property
    def public_url(self) -> str | None:
        """The base URLs are made on; None while it is unknown (``UNKNOWN_PUBLIC_URL``)."""
        return self._public_url

    @public_url.setter
    def public_url(self, value: str | None) -> None:
        self._public_url = value.rstrip("/") if value else None
        self._base = self._public_url or UNKNOWN_PUBLIC_URL

    def signature(self, token_id: str) -> str:
        return hmac.new(self._key, token_id.encode(), hashlib.sha256).hexdigest()

    def url(self, token_id: str) -> str:
        return (
            f"{self._base}/api/v1/waitpoints/tokens/{token_id}/callback/{self.signature(token_id)}"
        )

    def message_url(self, run_id: str, topic: str, base: str | None = None) -> str:
        """Where a POST sends its whole body to the run's ``receive(topic)``, no key needed:
        the signature opens that run and topic only. ``base``: the server's own address, for
        the server (else the public URL this signer knows)."""
        signature = self.signature(message_subject(run_id, topic))
        root = base.rstrip("/") if base else self._base
        return f"{root}/api/v1/runs/{run_id}/messages/{topic}/{signature}"

    def verify(self, token_id: str, signature: str) -> bool:
        """Constant-time check, after refusing anything that is not 64 lowercase hex chars."""
        if not well_formed(signature):
            return False
        if hmac.compare_digest(self.signature(token_id), signature):
            return True
        if self._previous is None:
            return False
        old = hmac.new(self._previous, token_id.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(old, signature)


def message_subject(run_id: str, topic: str) -> str:
    """What a message URL's signature signs: a token id never starts with ``message:``, so no
    token's callback signature opens a message URL, nor the other way round."""
    return f"message:{run_id}:{topic}"


# --- public access tokens --------------------------------------------------------------

ISSUER = "https://id.trigger.dev"
AUDIENCE = "https://api.trigger.dev"
SUBJECT = "waitpoint"
PUBLIC_TOKEN_SECONDS = 24 * 3600


class PublicTokens:
    """Issue and verify public access tokens for one secret key.

    ``previous_key`` (a key rotation's grace period) still verifies tokens, and so approval
    links, signed before the rotation; new ones are signed with ``secret_key`` only.
    """

    def __init__(self, secret_key: str, previous_key: str | None = None) -> None:
        self._key = secret_key.encode()
        self._verifying = [self._key] + ([previous_key.encode()] if previous_key else [])

    def public_token(self, scopes: list[str], expires_in: int = PUBLIC_TOKEN_SECONDS) -> str:
        import jwt  # here: PyJWT takes 50 ms to import, and most processes never sign one

        now = int(time.time())
        claims = {
            "sub": SUBJECT,
            "pub": True,
            "scopes": scopes,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + expires_in,
        }
        with _short_keys_allowed():
            return jwt.encode(claims, self._key, algorithm="HS256")

    def scopes_of(self, token: str) -> list[str]:
        """The scopes of a valid, unexpired token; else a 401 ``AuthError`` saying why."""
        import jwt

        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the public access token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"invalid public access token: {exc}") from None
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise AuthError(401, "invalid public access token: no scopes")
        return scopes

    def _decode(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` signed with the key, or else with the previous key."""
        import jwt

        *earlier, last = self._verifying
        for key in earlier:
            with contextlib.suppress(jwt.InvalidSignatureError):
                return self._decode_with(token, key)
        return self._decode_with(token, last)

    @staticmethod
    def _decode_with(token: str, key: bytes) -> dict[str, Any]:
        import jwt

        with _short_keys_allowed():
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat"]},
            )
        return claims


@contextlib.contextmanager
def _short_keys_allowed() -> Iterator[None]:
    """Trigger.dev keys are 31 bytes, under PyJWT's recommended 32 for HS256: accept them."""
    from jwt.warnings import InsecureKeyLengthWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
        yield


# --- approval links --------------------------------------------------------------------

DEFAULT_EXPIRES_IN = "24h"
LONGEST_LINK = timedelta(days=30)


def link_seconds(expires_in: str | timedelta) -> int:
    """Seconds a link stays valid: a positive duration of at most 30 days."""
    delta = to_timedelta(expires_in)
    if delta > LONGEST_LINK:
        raise ValidationError(f"expires_in {expires_in!r} is too long: at most 30d")
    return max(1, int(delta.total_seconds()))


def approval_url(
    public_url: str, tokens: PublicTokens, token_id: str, expires_in: str | timedelta
) -> str:
    """A page that completes this one token, for whoever opens it until it expires."""
    scope = f"write:waitpoints:{token_id}"
    ticket = tokens.public_token([scope], expires_in=link_seconds(expires_in))
    return f"{public_url.rstrip('/')}/ui/approve/{quote(token_id, safe='')}?t={ticket}"


def vote_scope(approval_id: str, approver: str) -> str:
    """What an approver's link grants: voting on this approval, as this approver, only."""
    return f"vote:approvals:{approval_id}:{approver}"


def vote_url(
    public_url: str,
    tokens: PublicTokens,
    approval_id: str,
    approver: str,
    expires_in: str | timedelta,
) -> str:
    """The page where ``approver`` votes on the approval, for whoever opens it until it
    expires (the approver's identity comes from the link, so it goes to them alone)."""
    scope = vote_scope(approval_id, approver)
    ticket = tokens.public_token([scope], expires_in=link_seconds(expires_in))
    return f"{public_url.rstrip('/')}/ui/vote/{quote(approval_id, safe='')}?t={ticket}"


VOTE_SCOPE_PREFIX = "vote:approvals:"
INBOX_SCOPE_PREFIX = "read:approvals:inbox:"


def voter_of(scope: str, approval_id: str) -> str | None:
    """The approver a ``vote_scope`` lets vote on ``approval_id``; None for any other scope.

    Read here, not matched with a wildcard: an approver may contain ``:``, so the link of
    ``ana`` must not pass for ``ana:b``'s (the id is everything up to the first ``:`` after
    the prefix: ids never contain one)."""
    if not scope.startswith(VOTE_SCOPE_PREFIX):
        return None
    scoped_id, colon, approver = scope.removeprefix(VOTE_SCOPE_PREFIX).partition(":")
    if not colon or not approver or scoped_id != approval_id:
        return None
    return approver


def inbox_scope(approver: str) -> str:
    """What an approver's inbox link grants: reading the approvals that ask them (and making
    their own voting links there), nothing else."""
    return f"{INBOX_SCOPE_PREFIX}{approver}"


def inbox_owner(scope: str) -> str | None:
    """The approver whose inbox ``scope`` opens; None for any other scope."""
    if not scope.startswith(INBOX_SCOPE_PREFIX):
        return None
    return scope.removeprefix(INBOX_SCOPE_PREFIX) or None


def inbox_url(
    public_url: str, tokens: PublicTokens, approver: str, expires_in: str | timedelta
) -> str:
    """The page listing what ``approver`` is asked to decide, with a voting link for each
    (``{public_url}/ui/inbox?t=<public access token>``): whoever opens it reads and votes as
    that approver until it expires, so it goes to them alone."""
    scope = inbox_scope(clean_approver(approver))
    ticket = tokens.public_token([scope], expires_in=link_seconds(expires_in))
    return f"{public_url.rstrip('/')}/ui/inbox?t={ticket}"


def link_id(ticket: str) -> str:
    """A short id of a link's public access token, recorded with the vote it carried (the
    receipt names the link without holding a credential)."""
    return hashlib.sha256(ticket.encode()).hexdigest()[:16]


def local_secret_key(settings: Settings) -> str:
    """The key a local engine signs links with: configured, or the one ``waitpoint dev`` made."""
    key = keys.secret_key(settings, create=False)
    if key is not None:
        return key.value
    raise ConfigurationError(
        "approval links are signed with the API's secret key: set WAITPOINT_SECRET_KEY, or "
        f"start `waitpoint dev` once so that it creates {keys.key_file(settings)}"
    )


# --- sign-in tickets and sessions ------------------------------------------------------

SESSION_SECONDS = 12 * 3600
LOGIN_TICKET_SECONDS = 24 * 3600

Purpose = Literal["session", "login"]


@dataclass(frozen=True)
class Claims:
    """What a valid credential says: its purpose, its nonce, and when it expires (seconds)."""

    purpose: Purpose
    nonce: str
    expires: int

    @property
    def key(self) -> str:
        """Its name among the spent credentials (a ticket's nonce is never a session's)."""
        return f"{self.purpose}:{self.nonce}"


class SignedCredentials:
    """Sign and check sessions and login tickets for one secret key.

    A credential is ``<claims>.<signature>``, the signature an HMAC under a key derived from
    the secret key for this use alone, so a credential is never an API key or a JWT. Whether
    one was spent (signed out, a ticket used) is the dashboard's business (``ui.sessions``).
    """

    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key.encode()
        self._key = hmac.new(self._secret, b"waitpoint-ui-session-v1", hashlib.sha256).digest()

    def is_secret_key(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._secret)

    def issue(self, purpose: Purpose, seconds: int) -> str:
        claims = {"p": purpose, "exp": int(time.time()) + seconds, "n": secrets.token_urlsafe(16)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def claims(self, value: str | None, purpose: Purpose) -> Claims:
        """The claims of ``value`` if it is a signed, unexpired ``purpose`` credential; else
        raise a 401 saying why. Says nothing about whether it was spent."""
        what = credential_name(purpose)
        invalid = AuthError(401, f"this {what} is not valid: sign in with the secret key")
        if not value or value.count(".") != 1:
            raise AuthError(401, f"no valid {what}: sign in with the secret key")
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise invalid
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            raise invalid from None
        if not isinstance(claims, dict) or claims.get("p") != purpose:
            raise invalid
        nonce = claims.get("n")
        if not isinstance(nonce, str) or not nonce:
            raise invalid
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= time.time():
            raise AuthError(401, f"this {what} has expired: sign in again")
        return Claims(purpose, nonce, expires)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def credential_name(purpose: Purpose) -> str:
    return "sign-in link" if purpose == "login" else "session"


def login_link(base_url: str, secret_key: str, seconds: int = LOGIN_TICKET_SECONDS) -> str:
    """A one-click dashboard sign-in link for the terminal that started the server."""
    ticket = SignedCredentials(secret_key).issue("login", seconds)
    return f"{base_url.rstrip('/')}/ui/login?t={ticket}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
