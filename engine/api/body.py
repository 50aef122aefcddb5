"""Request bodies: a byte limit counted as the bytes arrive, a time limit on receiving them,
credentials checked before the first byte is read, and JSON checked before parsing.

``Content-Length`` can lie, and chunked bodies have none, so the limit is enforced on the
bytes actually received. JSON that is invalid or nested deeper than the limit is refused with
400 before any route sees it (deep nesting would otherwise exhaust Python's recursion limit
inside the parser and surface as a 500).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import CREDENTIAL_CHECKS
from .problems import Problem


class _Refused(Exception):
    """The body cannot be read to the end: answer ``status`` (if nothing was sent yet)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Gone(Exception):
    """The client went away before it had sent the whole body."""


class BodyLimitMiddleware:
    """Bound what reading a request body may cost: bytes, time, and a client that leaves.

    - 413 once the body passes ``max_bytes``, whatever its headers claimed (``Content-Length``
      can lie, chunked bodies have none), counted on the bytes actually received. A declared
      length over the limit is refused when the route first reads the body, not on arrival:
      routes check credentials first, so an anonymous caller gets 401 whatever it declared.
    - 408 and a closed connection once reading the body has taken ``timeout`` seconds in all,
      counted from the first read: a client that declares 1,000 bytes and sends one (or trickles
      them) cannot hold a connection and its file descriptor for ever.
    - A client that disconnects before its body is complete is dropped quietly: nothing is
      answered and nothing is logged (Starlette would raise ``ClientDisconnect`` into the route
      and uvicorn log a traceback for each).

    Only the body is bounded: once its last byte arrived, ``receive`` is passed through
    untouched (a streaming response listens on it for the disconnect for as long as it runs).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 20.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes)
        received = 0
        deadline: float | None = None
        complete = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, deadline, complete
            if complete or started:
                return await receive()
            if too_large:  # checked when the body is first read: after the credentials
                raise self._too_large()
            if deadline is None:
                deadline = anyio.current_time() + self.timeout
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise _Refused(
                    408, f"request body not received within {self.timeout:g} seconds"
                ) from None
            if message["type"] == "http.disconnect":
                raise _Gone
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _Refused as refused:
            if not started:
                await _answer_and_close(send, refused.status, refused.message)
        except _Gone:
            pass

    def _too_large(self) -> _Refused:
        return _Refused(413, f"request body too large: at most {self.max_bytes} bytes")


async def _answer_and_close(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The JSON value in ``raw``, or a 400 ``Problem`` saying why it is not acceptable."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise Problem(400, f"JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, f"request body is not valid JSON: {exc}") from None
    except ValueError:
        raise Problem(400, f"request body is not acceptable JSON: {too_many_digits()}") from None
    if _depth(value) > max_depth:
        raise Problem(400, f"JSON nested deeper than {max_depth} levels")
    return value


def too_many_digits() -> str:
    """Why ``json.loads`` raised a plain ValueError: an integer Python will not convert.

    Python refuses to turn text of more than ``sys.get_int_max_str_digits()`` (4,300) digits
    into an int, to keep the conversion from taking quadratic time; ``json.loads`` passes
    that ValueError on rather than a JSONDecodeError.
    """
    return f"a number has more than {sys.get_int_max_str_digits()} digits"


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


class JSONGuardRoute(APIRoute):
    """Check the caller's credentials, then that a non-empty body is acceptable JSON, before
    FastAPI reads the body for the route.

    FastAPI reads and parses the body before it solves dependencies, so a route's credential
    dependencies (``deps.CREDENTIAL_CHECKS``) are run first here, from the headers alone: a
    caller without them gets 401/403 and not one byte of the body is read. Routes that read
    their body themselves (the callback checks its signature first) opt out by declaring no
    body model.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        checks = _credential_checks(self.dependant)

        async def guarded(request: Request) -> Response:
            for check in checks:
                check(request)
            raw = await request.body()  # cached on the request; FastAPI reads it again
            if raw.strip() and request.method in {"POST", "PUT", "PATCH"}:
                parse_json(raw, request.app.state.settings.max_json_depth)
            return await handler(request)

        return guarded


def _credential_checks(dependant: Dependant) -> list[Callable[[Request], Any]]:
    """The header-only checks of every credential dependency of a route, outermost first."""
    found: list[Callable[[Request], Any]] = []
    stack = [dependant]
    while stack:
        node = stack.pop()
        check = CREDENTIAL_CHECKS.get(node.call) if node.call is not None else None
        if check is not None and check not in found:
            found.append(check)
        stack.extend(reversed(node.dependencies))
    return found
