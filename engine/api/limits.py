"""Wrong credentials are rate-limited per client address.

Guessing the secret key costs one request per guess wherever the server checks it: the API's
``Authorization: Bearer`` header (the key, or a public access token signed with it), the
dashboard's sign-in form and approval links. ``FailureLimiter`` gives each client address a
budget of ``per_minute`` wrong credentials that refills at that rate; an address that spent
it gets 429 with ``Retry-After`` for every credential it presents, *the right key included*,
without the credential being checked: were the right key still accepted, the answer to each
guess (429 or 200) would tell the right one apart, and the limit would slow nobody down.
Other addresses are not affected, and a browser already signed in keeps its session (a
session is not a guess).

The budget is kept in this process's memory: a failure costs no database write and the
limit holds whatever the database's state. Several API processes behind one address each
keep their own budget, so an attacker spread over ``n`` of them gets ``n`` times the rate.

The client address is the one uvicorn puts in the ASGI scope: the socket peer, unless
``WAITPOINT_TRUSTED_PROXIES`` names the reverse proxies whose ``X-Forwarded-For`` it may
believe (``services.api_server``). IPv6 clients are counted per /64 network, the block one
subscriber usually holds, so that an attacker cannot take a new budget per address.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ADDRESSES = 100_000
"""Addresses remembered at once; past this, the quietest are forgotten (bounded memory)."""


@dataclass
class _Bucket:
    tokens: float
    at: float


class FailureLimiter:
    """Per client address, a bucket of ``per_minute`` wrong credentials refilled at
    ``per_minute`` a minute: a burst of that many, then one every ``60 / per_minute`` s."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """How many addresses are remembered (at most ``max_addresses``)."""
        return len(self._buckets)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may present a credential again; None if it may now."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        tokens = self._refill(bucket)
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) * 60 / self.per_minute))

    def failed(self, address: str) -> None:
        """Count a wrong credential from ``address``."""
        bucket = self._buckets.pop(address, None)  # re-inserted last: the dict is oldest first
        tokens = float(self.per_minute) if bucket is None else self._refill(bucket)
        self._buckets[address] = _Bucket(tokens - 1, self.clock())
        if len(self._buckets) > self.max_addresses:
            self._forget()

    def _refill(self, bucket: _Bucket) -> float:
        elapsed = max(0.0, self.clock() - bucket.at)
        return min(float(self.per_minute), bucket.tokens + elapsed * self.per_minute / 60)

    def _forget(self) -> None:
        """Make room, dropping first the addresses whose budget is whole again, then those
        not limited (forgetting one only gives its budget back), oldest first; the limited
        ones only when nothing else is left, so a flood of new addresses frees nobody."""
        target = self.max_addresses * 9 // 10
        levels = {address: self._refill(bucket) for address, bucket in self._buckets.items()}
        for keep_below in (float(self.per_minute), 1.0, float("-inf")):
            for address, tokens in levels.items():
                if len(self._buckets) <= target:
                    return
                if tokens >= keep_below and address in self._buckets:
                    del self._buckets[address]


def client_address(host: str | None) -> str:
    """The key a client is counted under: its IP address (IPv6: its /64 network)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]  # a unix socket, or a proxy's odd X-Forwarded-For entry
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def scope_address(scope: Scope) -> str:
    client = scope.get("client")
    return client_address(client[0] if client else None)


def too_many_message(seconds: int) -> str:
    return f"too many wrong credentials from this address: try again in {seconds} s"


class CredentialLimitMiddleware:
    """Counts API requests whose ``Bearer`` credential is refused (401) against their
    address, and answers 429 to every ``Bearer`` request from an address over its limit,
    before the app (or its body) is reached.

    The dashboard (``/ui``) counts for itself (its pages answer in HTML); other
    ``Authorization`` schemes never sign anyone in, so they are no guesses (and a proxy that
    adds its own ``Basic`` credentials to every request does not trip the limit).
    """

    def __init__(self, app: ASGIApp, limiter: FailureLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _bearer_outside_ui(scope):
            await self.app(scope, receive, send)
            return
        address = scope_address(scope)
        wait = self.limiter.retry_after(address)
        if wait is not None:
            await _too_many(send, wait)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limiter.failed(address)
            await send(message)

        await self.app(scope, receive, counting)


def _bearer_outside_ui(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    if path == "/ui" or path.startswith("/ui/"):
        return False
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return value[:7].lower() == b"bearer " and bool(value[7:].strip())
    return False


async def _too_many(send: Send, seconds: int) -> None:
    body = json.dumps({"error": too_many_message(seconds)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(seconds).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
