"""Cross-origin access, only on the routes a browser is meant to call from another origin.

Trigger.dev's React hooks (``@trigger.dev/react-hooks``) call two of our routes from a
user's frontend, each with a public access token scoped to one object:

    POST /api/v1/waitpoints/tokens/{id}/complete   useWaitToken  (write:waitpoints:<id>)
    GET  /api/v3/runs/{id}                         useRun        (read:runs:<id>, which
                                                                  trigger returns)

Those two answer every origin (``Access-Control-Allow-Origin: *``), errors included, so a
hook can read why a call failed; only for their own method. No other route does: not the rest
of the API (the secret key belongs on a server, never in a page), not the browser UI under
``/ui`` (its cookie session must stay same-site; its own ``/ui/tokens/{id}/complete`` form
post is not the token route), not ``/docs``. The other hooks call routes this server does not
open to public tokens (trigger with a ``trigger:tasks`` token, Trigger.dev's realtime API), so
they get nothing here either.

The preflight names the headers it allows instead of answering ``*``: the Fetch standard says
the wildcard never covers ``Authorization``, which is how every hook sends its token. Firefox
and Safari already block such a request; Chromium does behind
``CorsNonWildcardRequestHeadersSupport``, the flag ``tests/security/test_react_hooks_cors.py``
runs the hooks under. The SDK also sends ``Content-Type``, ``trigger-version`` and a growing set
of ``x-trigger-*`` headers; the ones it sends today are listed, and any other ``x-trigger-*``
name a preflight asks for is allowed by name too, so a newer SDK keeps working. Credentials
(cookies) are never allowed cross-origin: ``*`` excludes them, and these routes read only the
``Authorization`` header.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ALLOWED_HEADERS", "PublicRoutesCORS", "cross_origin_method"]

_PUBLIC_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/api/v1/waitpoints/tokens/[^/]+/complete"), "POST"),
    (re.compile(r"/api/v3/runs/[^/]+"), "GET"),
)

ALLOWED_HEADERS: tuple[str, ...] = (
    "authorization",
    "content-type",
    "trigger-version",
    "x-trigger-api-version",
    "x-trigger-branch",
    "x-trigger-client",
    "x-trigger-realtime-streams-version",
    "x-trigger-request-idempotency-key",
    "x-trigger-source",
)
"""What ``@trigger.dev/core`` 4.8.3's ``ApiClient`` sends from a browser."""

_SDK_HEADER = re.compile(r"x-trigger-[a-z0-9-]{1,64}")
MAX_AGE_SECONDS = 7200  # Chromium's ceiling: a longer cache is cut to this anyway


def cross_origin_method(path: str) -> str | None:
    """The method another origin may use on ``path``, or None: no CORS there."""
    for pattern, method in _PUBLIC_ROUTES:
        if pattern.fullmatch(path):
            return method
    return None


def _allowed_headers(requested: str | None) -> str:
    names = list(ALLOWED_HEADERS)
    for name in (requested or "").split(","):
        name = name.strip().lower()
        if _SDK_HEADER.fullmatch(name) and name not in names:
            names.append(name)
    return ", ".join(names)


class PublicRoutesCORS:
    """Answers preflights of the public-token routes and marks all their answers readable
    by any origin; every other path passes through untouched.

    Outermost middleware, so the answers of the layers inside (a 413 for a body over the
    limit, a 408 for a slow one) carry the header as well.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = (
            cross_origin_method(str(scope.get("path", ""))) if scope["type"] == "http" else None
        )
        if method is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        wanted = headers["access-control-request-method"] if preflight else scope["method"]
        if wanted.upper() != method:  # another method, its 405 included, stays same-origin
            await self.app(scope, receive, send)
            return
        if preflight:
            await self._preflight(method, headers, send)
            return

        async def readable_anywhere(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"access-control-allow-origin"
                ]
                kept.append((b"access-control-allow-origin", b"*"))
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, readable_anywhere)

    @staticmethod
    async def _preflight(method: str, headers: Headers, send: Send) -> None:
        """204 naming the method and headers allowed; the body of the route is never run."""
        allowed = _allowed_headers(headers.get("access-control-request-headers"))
        answer = {
            "access-control-allow-origin": "*",
            "access-control-allow-methods": method,
            "access-control-allow-headers": allowed,
            "access-control-max-age": str(MAX_AGE_SECONDS),
            "vary": "Access-Control-Request-Headers",
        }
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(k.encode(), v.encode("latin-1")) for k, v in answer.items()],
            }
        )
        await send({"type": "http.response.body", "body": b""})
