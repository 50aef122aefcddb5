"""Trigger.dev's own React hooks (``@trigger.dev/react-hooks``, pinned in tests/react) in
Chromium, from a page on another origin, against a real ``waitpoint dev``.

The page (tests/react, built with vite) completes a token with ``useWaitToken`` and its public
access token, and follows a run with ``useRun`` and the run's public access token, as a
Trigger.dev user's frontend does. Chromium runs with the Fetch standard's rule that
``Access-Control-Allow-Headers: *`` does not cover ``Authorization`` (``STRICT_CORS``): a
server that answers the preflight with ``*`` gets every hook's call blocked there (and in
Firefox and Safari), so the preflight must name the headers. A control
test shows that this browser does enforce the rule, so the other tests cannot pass because
the flag did nothing.

Needs ``node`` (>= 20.19, for vite) and ``npm``: ``npm ci`` installs the pinned packages into
tests/react/node_modules the first time (npm registry), and vite builds the page into a
temporary directory on every run. Skipped, saying why, where node, npm or Chromium is missing;
under CI (``CI`` set) a missing tool fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from engine.api.auth import Auth
from tests.security.chromium import BASE_ARGS, STRICT_CORS, Console, chromium_path, static_site
from tests.test_api_server import DevServer, get_run, poll

playwright_api = pytest.importorskip("playwright.sync_api")
Browser = playwright_api.Browser
Page = playwright_api.Page

REACT_DIR = Path(__file__).resolve().parents[1] / "react"
NPM_CI_TIMEOUT = 300.0
BUILD_TIMEOUT = 180.0
HOOK_TIMEOUT = 20.0
PINNED = ("@trigger.dev/react-hooks", "react", "react-dom", "vite")

pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + BUILD_TIMEOUT + 120)

HOOK_TASKS = """
from engine import create_token, task, wait_for_token


@task("react-approval")
async def react_approval(payload: dict) -> dict:
    token = await create_token(timeout="1h", tags=[f"react:{payload['order']}"])
    result = await wait_for_token(token)
    return {"order": payload["order"], "decision": result.output}
"""


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"`{tool}` is not on PATH: the React hooks test builds its page with vite"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _pins() -> dict[str, str]:
    manifest = json.loads((REACT_DIR / "package.json").read_text())
    pins: dict[str, str] = {**manifest["dependencies"], **manifest["devDependencies"]}
    return {name: pins[name] for name in PINNED}


def _installed(name: str) -> str | None:
    manifest = REACT_DIR / "node_modules" / name / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


def _run(command: list[str], timeout: float, what: str) -> None:
    try:
        done = subprocess.run(
            command, cwd=REACT_DIR, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} in {REACT_DIR} did not finish in {timeout:.0f} s: {exc}")
    if done.returncode != 0:
        pytest.fail(
            f"{what} in {REACT_DIR} failed (exit {done.returncode}):\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )


@pytest.fixture(scope="module")
def react_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page built by vite from tests/react (``npm ci`` first when a pin is missing)."""
    _require("node")
    _require("npm")
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    assert match and (int(match[1]), int(match[2])) >= (20, 19), (
        f"node {version} is too old for vite 8: install Node >= 20.19"
    )
    if any(_installed(name) != pin for name, pin in _pins().items()):
        _run(["npm", "ci", "--no-audit", "--no-fund"], NPM_CI_TIMEOUT, "`npm ci`")
    assert {name: _installed(name) for name in PINNED} == _pins(), "npm ci missed a pin"
    out = tmp_path_factory.mktemp("react-dist")
    vite = str(REACT_DIR / "node_modules" / "vite" / "bin" / "vite.js")
    _run(["node", vite, "build", "--outDir", str(out), "--emptyOutDir"], BUILD_TIMEOUT, "vite")
    assert (out / "index.html").exists(), f"vite wrote no index.html into {out}"
    return out


@pytest.fixture(scope="module")
def site(react_page: Path) -> Iterator[str]:
    """The built page, served from its own loopback origin."""
    with static_site(react_page) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = DevServer(tmp_path_factory.mktemp("react"), "react_tasks", HOOK_TASKS)
    try:
        dev.start()
        yield dev
    finally:
        dev.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=executable, args=[*BASE_ARGS, STRICT_CORS]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def api(server: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.auth_headers, timeout=10) as client:
        yield client


def park(api: httpx.Client, order: int) -> tuple[str, str, str]:
    """Trigger a run that waits on a token; returns the run id, the run's public access token
    (the trigger answer's ``x-trigger-jwt``, as ``handle.publicAccessToken``) and the token id."""
    answer = api.post("/api/v1/tasks/react-approval/trigger", json={"payload": {"order": order}})
    assert answer.status_code == 200, answer.text
    run_id: str = answer.json()["id"]
    run_token = answer.headers["x-trigger-jwt"]
    poll(lambda: get_run(api, run_id), lambda r: r["status"] == "WAITING", "WAITING", 30)
    listed = api.get(
        "/api/v1/waitpoints/tokens",
        params={"filter[status]": "WAITING", "filter[tags]": f"react:{order}"},
    )
    [token] = listed.json()["data"]
    return run_id, run_token, token["id"]


def shown(page: Page, console: Console, test_id: str, text: str) -> None:
    """Wait until the element ``test_id`` reads ``text``. Fails at once, with the page and its
    console, when Chromium reports a CORS error (the SDK would retry a blocked request for
    about ten seconds before the hook gives up)."""
    deadline = time.monotonic() + HOOK_TIMEOUT
    found = page.get_by_test_id(test_id)
    while time.monotonic() < deadline and not console.cors_errors():
        if found.count() and found.inner_text() == text:
            return
        page.wait_for_timeout(100)
    raise AssertionError(
        f"the page did not show {test_id}={text!r}; CORS errors: {console.cors_errors()}\n"
        f"--- page\n{page.inner_text('body')}\n--- console\n{console}"
    )


def press(page: Page, console: Console, button: str) -> None:
    """Click ``button``; when the page never shows it (the bundle failed), say what the
    console said."""
    try:
        page.get_by_role("button", name=button).click()
    except playwright_api.Error as exc:
        raise AssertionError(f"no {button!r} button: {exc}\n--- console\n{console}") from None


def page_url(site: str, **params: str) -> str:
    return f"{site}/?{urlencode(params)}"


def test_use_wait_token_completes_a_token_from_another_origin(
    server: DevServer, api: httpx.Client, site: str, page: Page
) -> None:
    run_id, _, token_id = park(api, 1)
    public = Auth(server.secret_key).public_token([f"write:waitpoints:{token_id}"])
    console = Console(page)
    page.goto(page_url(site, api=server.base_url, token=token_id, tokenJwt=public))
    press(page, console, "Approve")

    shown(page, console, "completed", "completed")
    assert not console.cors_errors(), str(console)
    token = api.get(f"/api/v1/waitpoints/tokens/{token_id}").json()
    assert token["status"] == "COMPLETED", token
    assert token["completedVia"] == "public-token", token
    assert token["data"] == {"approved": True, "reviewer": "react-hooks"}
    done = poll(lambda: get_run(api, run_id), lambda r: r["status"] == "COMPLETED", "done", 30)
    assert done["output"]["decision"] == {"approved": True, "reviewer": "react-hooks"}


def test_use_run_follows_a_run_with_its_public_token_from_another_origin(
    server: DevServer, api: httpx.Client, site: str, page: Page
) -> None:
    run_id, run_token, token_id = park(api, 2)
    console = Console(page)
    page.goto(page_url(site, api=server.base_url, run=run_id, runJwt=run_token))
    shown(page, console, "run-status", "WAITING")

    answer = api.post(f"/api/v1/waitpoints/tokens/{token_id}/complete", json={"data": "ok"})
    assert answer.status_code == 200, answer.text
    shown(page, console, "run-status", "COMPLETED")
    assert not console.cors_errors(), str(console)


def test_use_run_reads_why_another_runs_token_is_refused(
    server: DevServer, api: httpx.Client, site: str, page: Page
) -> None:
    """The 403 carries ``Access-Control-Allow-Origin`` too: the hook shows the server's reason
    instead of a network error."""
    run_id, _, _ = park(api, 3)
    _, other_runs_token, _ = park(api, 4)
    console = Console(page)
    page.goto(page_url(site, api=server.base_url, run=run_id, runJwt=other_runs_token))
    error = page.get_by_test_id("run-error")
    error.wait_for()
    assert f"does not grant read:runs:{run_id}" in error.inner_text(), str(console)
    assert not console.cors_errors(), str(console)


class _WildcardPreflight(BaseHTTPRequestHandler):
    """What the complete route answered before: ``Access-Control-Allow-Headers: *``."""

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = b'{"success": true}'
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_this_chromium_blocks_authorization_under_a_wildcard(site: str, page: Page) -> None:
    """The control: with ``STRICT_CORS`` this browser refuses a request with ``Authorization``
    that a preflight allowed only with ``*``, so the tests above do test the rule."""
    wildcard = ThreadingHTTPServer(("127.0.0.1", 0), _WildcardPreflight)
    thread = threading.Thread(target=wildcard.serve_forever, daemon=True)
    thread.start()
    try:
        console = Console(page)
        page.goto(site)
        outcome = page.evaluate(
            """async (url) => {
                const headers = {"Content-Type": "application/json"};
                const send = (extra) => fetch(url, {method: "POST", body: "{}",
                    headers: {...headers, ...extra}}).then(r => r.status, e => String(e));
                return [await send({"x-trigger-client": "browser"}),
                        await send({"Authorization": "Bearer x"})];
            }""",
            f"http://127.0.0.1:{wildcard.server_address[1]}/complete",
        )
    finally:
        wildcard.shutdown()
        wildcard.server_close()
        thread.join(5)
    assert outcome[0] == 200, outcome  # `*` does cover other headers
    assert outcome[1] != 200, outcome  # but not Authorization
    assert any("authorization" in line.lower() for line in console.cors_errors()), str(console)
