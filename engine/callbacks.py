"""Signed callback URLs: ``POST {public_url}/api/v1/waitpoints/tokens/{id}/callback/{sig}``.

The signature is HMAC-SHA256 of the token id under a signing secret, as 64 lowercase hex
characters. The signing secret is derived from the secret key (``engine.keys``), so the
database holds nothing that signs a URL. The URL is a capability: whoever holds it can
complete that one token, so it is never logged (log the token id instead).
"""

from __future__ import annotations

import hashlib
import hmac
import re

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
    grace period: URLs handed out before it keep working until the previous key is dropped)."""

    def __init__(self, public_url: str | None, secret: str, previous: str | None = None) -> None:
        self.public_url = public_url
        self._key = secret.encode()
        self._previous = previous.encode() if previous else None

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
