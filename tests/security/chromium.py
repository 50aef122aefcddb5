"""What the browser hardening tests share: Debian's Chromium under Playwright, a static site on
a second loopback origin, and a console recorder.

CORS is enforced by the browser alone, so these checks need one: an HTTP client would accept
any answer. Chromium is launched from /usr/bin/chromium (``npx playwright install`` cannot
download a browser here); ``.ci/run`` installs the package where it is missing, so under CI a
missing browser fails instead of skipping.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
STRICT_CORS = "--enable-features=CorsNonWildcardRequestHeadersSupport"
"""The Fetch standard's rule that ``Access-Control-Allow-Headers: *`` does not cover
``Authorization``. Chromium implements it behind this feature and has not turned it on by
default yet; Firefox and Safari already enforce it."""


def chromium_path() -> str:
    """/usr/bin/chromium, or skip (fail under CI, where .ci/run installs it) saying why."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test's stderr."""


@contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a port of its own: another origin than the API's);
    yields its base URL. The server thread is stopped on exit."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Console:
    """Every console message and uncaught page error of a Playwright page, as text."""

    def __init__(self, page: Any) -> None:
        self.lines: list[str] = []
        page.on("console", lambda message: self.lines.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.lines.append(f"pageerror: {error}"))

    def cors_errors(self) -> list[str]:
        """The lines in which Chromium reports a request blocked by CORS."""
        return [line for line in self.lines if "CORS" in line or "Access-Control" in line]

    def __str__(self) -> str:
        return "\n".join(self.lines) or "(the console is empty)"
