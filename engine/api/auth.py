"""Who may call the API: the secret key, or a public access token scoped to one object.

The secret key (``Authorization: Bearer <key>``) opens every route. A public access token is
an HS256 JWT signed with the secret key, as Trigger.dev issues them: it carries scopes such as
``write:waitpoints:<id>`` and is accepted only where such a scope is asked for (completing
that token), so a browser holding it can do that one thing and nothing else.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from .. import keys
from ..errors import AuthError
from ..settings import Settings
from ..signing import PublicTokens

__all__ = ["Auth", "Caller", "resolve_secret_key"]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: the secret key holder, or a public token with its scopes."""

    is_secret: bool
    scopes: frozenset[str] = field(default_factory=frozenset)

    def may(self, scope: str) -> bool:
        if self.is_secret:
            return True
        kind = scope.rsplit(":", 1)[0]
        return scope in self.scopes or kind in self.scopes


class Auth(PublicTokens):
    """Checks callers against ``secret_key``; issues and verifies public access tokens
    (``signing.PublicTokens``).

    ``previous_key`` (a key rotation's grace period) still verifies public access tokens, and
    so approval links, signed before the rotation; it is not accepted as the API key itself,
    so rotating after a leak locks the leaked key out of the API at once.
    """

    def caller(self, authorization: str | None) -> Caller:
        """Identify the caller from the ``Authorization`` header, or raise 401."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "Invalid API key: send Authorization: Bearer <secret key>")
        credential = authorization.removeprefix("Bearer ").strip().encode()
        if hmac.compare_digest(credential, self._key):
            return Caller(is_secret=True)
        if credential.count(b".") != 2:
            raise AuthError(401, "Invalid API key")
        return Caller(is_secret=False, scopes=frozenset(self.scopes_of(credential.decode())))

    def is_secret_key(self, credential: bytes) -> bool:
        """Whether ``credential`` is the secret key (compared in constant time)."""
        return hmac.compare_digest(credential, self._key)

    def require(self, caller: Caller, scope: str) -> None:
        """403 unless the caller may use ``scope`` (the secret key may use every scope)."""
        if not caller.may(scope):
            raise AuthError(403, f"this public access token does not grant {scope}")

    def require_secret(self, caller: Caller) -> None:
        if not caller.is_secret:
            raise AuthError(403, "this route needs the secret key, not a public access token")


def resolve_secret_key(settings: Settings) -> keys.SecretKey:
    """The configured key, or the one kept beside the database (made on first use).

    Its ``created`` is True only the first time, the one time the key is printed. A key
    shorter than 32 characters is a ConfigurationError (``engine.keys``).
    """
    key = keys.secret_key(settings, create=True)
    assert key is not None  # create=True always gives one
    return key
