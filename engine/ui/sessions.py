"""Dashboard sign-in without the secret key ever reaching the browser.

Whoever knows the secret key signs in once; the browser then holds a session the server
signed (HMAC-SHA256 under a key derived from the secret key), in an ``HttpOnly``,
``SameSite=Strict`` cookie: scripts cannot read it and other sites cannot make the browser
send it. The derived key differs from the one public access tokens are signed with, so a
session can never be replayed as an API credential, and changing the secret key signs every
session out.

The one-click link ``waitpoint dev`` prints carries a *login ticket* signed the same way
(another purpose, so a ticket is not a session and a session is not a ticket).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Literal

from fastapi import Request, Response

from ..api.auth import AuthError

COOKIE = "waitpoint_session"
SESSION_SECONDS = 12 * 3600
LOGIN_TICKET_SECONDS = 24 * 3600

Purpose = Literal["session", "login"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issue and check signed sessions and login tickets for one secret key."""

    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key.encode()
        self._key = hmac.new(self._secret, b"waitpoint-ui-session-v1", hashlib.sha256).digest()

    def is_secret_key(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._secret)

    def issue(self, purpose: Purpose, seconds: int) -> str:
        claims = {"p": purpose, "exp": int(time.time()) + seconds, "n": secrets.token_hex(8)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def check(self, value: str | None, purpose: Purpose) -> None:
        """Return if ``value`` is a live ``purpose`` credential; else raise a 401 saying why."""
        what = "sign-in link" if purpose == "login" else "session"
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
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= time.time():
            raise AuthError(401, f"this {what} has expired: sign in again")

    def is_signed_in(self, request: Request) -> bool:
        try:
            self.check(request.cookies.get(COOKIE), "session")
        except AuthError:
            return False
        return True

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


def login_link(base_url: str, secret_key: str, seconds: int = LOGIN_TICKET_SECONDS) -> str:
    """A one-click dashboard sign-in link for the terminal that started the server."""
    ticket = Sessions(secret_key).issue("login", seconds)
    return f"{base_url.rstrip('/')}/ui/login?t={ticket}"
