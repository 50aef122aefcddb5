"""Dashboard sign-in without the secret key ever reaching the browser.

Whoever knows the secret key signs in once; the browser then holds a session the server
signed (HMAC-SHA256 under a key derived from the secret key), in an ``HttpOnly``,
``SameSite=Strict`` cookie: scripts cannot read it and other sites cannot make the browser
send it. The derived key differs from the one public access tokens are signed with, so a
session can never be replayed as an API credential, and changing the secret key signs every
session out.

The one-click link ``waitpoint dev`` prints carries a *login ticket* signed the same way
(another purpose, so a ticket is not a session and a session is not a ticket). The signing
is ``engine.signing.SignedCredentials``; this module adds the cookie and the spent checks.

Signatures say who issued a credential, not whether it is still wanted, so the database keeps
the credentials that ended early (``Storage.spend_credential``): a ticket is recorded when it
is used, so it works once; a session is recorded when its holder signs out, so a copy of the
cookie stops working too. The record lives in the database because every API process of it
must refuse the credential, after restarts as well. Nothing is written when a session starts:
sessions stay signed claims, checked by one small read.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Response

from ..errors import AuthError
from ..signing import SESSION_SECONDS, Claims, Purpose, SignedCredentials
from ..storage import Storage

__all__ = ["COOKIE", "Sessions"]

COOKIE = "waitpoint_session"


class Sessions(SignedCredentials):
    """Issue and check signed sessions and login tickets for one secret key.

    ``storage`` gives the engine's storage at the time of the check (it is opened after the
    app is made); without it, this object can only issue (``signing.login_link``).
    """

    def __init__(self, secret_key: str, storage: Callable[[], Storage] | None = None) -> None:
        super().__init__(secret_key)
        self._storage = storage

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

    def _require_storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("these Sessions only issue credentials: they have no storage")
        return self._storage()


def _spent_message(purpose: Purpose) -> str:
    if purpose == "login":
        return (
            "this sign-in link was already used (a link signs in once): sign in with the secret key"
        )
    return "this session has ended (signed out): sign in again"
