"""Who may call the API: the secret key, or a public access token scoped to one object.

The secret key (``Authorization: Bearer <key>``) opens every route. A public access token is
an HS256 JWT signed with the secret key, as Trigger.dev issues them: it carries scopes such as
``write:waitpoints:<id>`` and is accepted only where such a scope is asked for (completing
that token), so a browser holding it can do that one thing and nothing else.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from .. import keys
from ..settings import Settings

ISSUER = "https://id.trigger.dev"
AUDIENCE = "https://api.trigger.dev"
SUBJECT = "waitpoint"
PUBLIC_TOKEN_SECONDS = 24 * 3600


class AuthError(Exception):
    """Raised by ``Auth`` checks; the API turns it into 401 or 403 with this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


class Auth:
    """Checks callers against ``secret_key``.

    ``previous_key`` (a key rotation's grace period) still verifies public access tokens, and
    so approval links, signed before the rotation; it is not accepted as the API key itself,
    so rotating after a leak locks the leaked key out of the API at once.
    """

    def __init__(self, secret_key: str, previous_key: str | None = None) -> None:
        self._key = secret_key.encode()
        self._verifying = [self._key] + ([previous_key.encode()] if previous_key else [])

    def caller(self, authorization: str | None) -> Caller:
        """Identify the caller from the ``Authorization`` header, or raise 401."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "Invalid API key: send Authorization: Bearer <secret key>")
        credential = authorization.removeprefix("Bearer ").strip().encode()
        if hmac.compare_digest(credential, self._key):
            return Caller(is_secret=True)
        if credential.count(b".") != 2:
            raise AuthError(401, "Invalid API key")
        return Caller(is_secret=False, scopes=frozenset(self._verify(credential.decode())))

    def require(self, caller: Caller, scope: str) -> None:
        """403 unless the caller may use ``scope`` (the secret key may use every scope)."""
        if not caller.may(scope):
            raise AuthError(403, f"this public access token does not grant {scope}")

    def require_secret(self, caller: Caller) -> None:
        if not caller.is_secret:
            raise AuthError(403, "this route needs the secret key, not a public access token")

    def public_token(self, scopes: list[str], expires_in: int = PUBLIC_TOKEN_SECONDS) -> str:
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

    def _verify(self, token: str) -> list[str]:
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
        *earlier, last = self._verifying
        for key in earlier:
            with contextlib.suppress(jwt.InvalidSignatureError):
                return self._decode_with(token, key)
        return self._decode_with(token, last)

    @staticmethod
    def _decode_with(token: str, key: bytes) -> dict[str, Any]:
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
        yield


def resolve_secret_key(settings: Settings) -> keys.SecretKey:
    """The configured key, or the one kept beside the database (made on first use).

    Its ``created`` is True only the first time, the one time the key is printed. A key
    shorter than 32 characters is a ConfigurationError (``engine.keys``).
    """
    key = keys.secret_key(settings, create=True)
    assert key is not None  # create=True always gives one
    return key
