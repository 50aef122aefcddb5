"""Signed callback URLs: ``POST {public_url}/api/v1/waitpoints/tokens/{id}/callback/{sig}``.

The signature is HMAC-SHA256 of the token id under a signing secret, as 64 lowercase hex
characters. The URL is a capability: whoever holds it can complete that one token, so it is
never logged (log the token id instead).
"""

from __future__ import annotations

import hashlib
import hmac
import re

_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


class CallbackSigner:
    def __init__(self, public_url: str, secret: str) -> None:
        self._base = public_url.rstrip("/")
        self._key = secret.encode()

    def signature(self, token_id: str) -> str:
        return hmac.new(self._key, token_id.encode(), hashlib.sha256).hexdigest()

    def url(self, token_id: str) -> str:
        return (
            f"{self._base}/api/v1/waitpoints/tokens/{token_id}/callback/{self.signature(token_id)}"
        )

    def verify(self, token_id: str, signature: str) -> bool:
        """Constant-time check, after refusing anything that is not 64 lowercase hex chars."""
        if not _SIGNATURE.match(signature):
            return False
        return hmac.compare_digest(self.signature(token_id), signature)
