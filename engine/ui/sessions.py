"""Dashboard sign-in without the secret key ever reaching the browser.

Whoever knows the secret key signs in once; the browser then holds a session the server
signed (HMAC-SHA256 under a key derived from the secret key), in an ``HttpOnly``,
``SameSite=Strict`` cookie: scripts cannot read it and other sites cannot make the browser
send it. The derived key differs from the one public access tokens are signed with, so a
session can never be replayed as an API credential, and changing the secret key signs every
session out.

The one-click link ``waitpoint dev`` prints carries a *login ticket* signed the same way
(another purpose, so a ticket is not a session and a session is not a ticket).

Signatures say who issued a credential, not whether it is still wanted, so the database keeps
the credentials that ended early (``Storage.spend_credential``): a ticket is recorded when it
is used, so it works once; a session is recorded when its holder signs out, so a copy of the
cookie stops working too. The record lives in the database because every API process of it
must refuse the credential, after restarts as well. Nothing is written when a session starts:
sessions stay signed claims, checked by one small read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Response

from ..api.auth import AuthError
from ..storage import Storage

COOKIE = "waitpoint_session"
SESSION_SECONDS = 12 * 3600
LOGIN_TICKET_SECONDS = 24 * 3600

Purpose = Literal["session", "login"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


class Sessions:
    """Issue and check signed sessions and login tickets for one secret key.

    ``storage`` gives the engine's storage at the time of the check (it is opened after the
    app is made); without it, this object can only issue (``login_link``).
    """

    def __init__(self, secret_key: str, storage: Callable[[], Storage] | None = None) -> None:
        self._secret = secret_key.encode()
        self._key = hmac.new(self._secret, b"waitpoint-ui-session-v1", hashlib.sha256).digest()
        self._storage = storage

    def is_secret_key(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._secret)

    def issue(self, purpose: Purpose, seconds: int) -> str:
        claims = {"p": purpose, "exp": int(time.time()) + seconds, "n": secrets.token_urlsafe(16)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def claims(self, value: str | None, purpose: Purpose) -> Claims:
        """The claims of ``value`` if it is a signed, unexpired ``purpose`` credential; else
        raise a 401 saying why. Says nothing about whether it was spent: see ``verify``."""
        what = _what(purpose)
        if not value or value.count(".") != 1:
            raise AuthError(401, f"no valid {what}: sign in with the secret key")
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise AuthError(401, f"this {what} is not valid: sign in with the secret key")
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            raise AuthError(401, f"this {what} is not valid: sign in with the secret key") from None
        if not isinstance(claims, dict) or claims.get("p") != purpose:
            raise AuthError(401, f"this {what} is not valid: sign in with the secret key")
        nonce = claims.get("n")
        if not isinstance(nonce, str) or not nonce:
            raise AuthError(401, f"this {what} is not valid: sign in with the secret key")
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= time.time():
            raise AuthError(401, f"this {what} has expired: sign in again")
        return Claims(purpose, nonce, expires)

    async def verify(self, value: str | None, purpose: Purpose = "session") -> Claims:
        """``claims``, and a 401 as well when the credential was spent (signed out, used)."""
        claims = self.claims(value, purpose)
        if await self._require_storage().credential_spent(claims.key):
            raise AuthError(401, _spent_message(purpose))
        return claims

    async def redeem(self, ticket: str | None) -> None:
        """Use a login ticket up: the first call for a ticket returns, every later one (in any
        process of this database) raises a 401 saying the link was used."""
        claims = self.claims(ticket, "login")
        if not await self._require_storage().spend_credential(claims.key, claims.expires * 1000):
            raise AuthError(401, _spent_message("login"))

    async def revoke(self, value: str | None) -> None:
        """End the session ``value`` for good (signing out): copies of the cookie stop working.
        A cookie that is no valid session is left alone: there is nothing to end."""
        try:
            claims = self.claims(value, "session")
        except AuthError:
            return
        await self._require_storage().spend_credential(claims.key, claims.expires * 1000)

    def start(self, request: Request, response: Response) -> None:
        """Set the session cookie (``Secure`` when the page was served over HTTPS)."""
        response.set_cookie(
            COOKIE,
            self.issue("session", SESSION_SECONDS),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def end(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def _require_storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("these Sessions only issue credentials: they have no storage")
        return self._storage()


def _what(purpose: Purpose) -> str:
    return "sign-in link" if purpose == "login" else "session"


def _spent_message(purpose: Purpose) -> str:
    if purpose == "login":
        return (
            "this sign-in link was already used (a link signs in once): sign in with the secret key"
        )
    return "this session has ended (signed out): sign in again"


def login_link(base_url: str, secret_key: str, seconds: int = LOGIN_TICKET_SECONDS) -> str:
    """A one-click dashboard sign-in link for the terminal that started the server."""
    ticket = Sessions(secret_key).issue("login", seconds)
    return f"{base_url.rstrip('/')}/ui/login?t={ticket}"
