"""``/docs`` on a real ``waitpoint serve`` loads nothing from another origin.

FastAPI's default page loads Swagger UI from cdn.jsdelivr.net and a favicon from
fastapi.tiangolo.com: every reader's browser tells them where the API runs, and runs their
script on the API's origin. Ours serves Swagger UI from the package. Checked twice: the page's
HTML names no other origin and every file it names is served here; and in Chromium, with the
server under a host name that is not loopback (Swagger UI treats localhost specially), every
request the page makes stays on the server's origin while it renders the operations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.security.chromium import BASE_ARGS, Console, chromium_path
from tests.security.conftest import ServeProcess

playwright_api = pytest.importorskip("playwright.sync_api")

DOCS_HOST = "docs.waitpoint.test"
REFERENCE = re.compile(r"""(?:src|href)="([^"]*)"|url: '([^']*)'""")


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as opened:
        yield opened


def test_the_docs_page_names_no_other_origin_and_its_files_are_served_here(
    client: httpx.Client,
) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"(?i)\b[a-z][a-z0-9+.-]*://|(?<![:\w])//[a-z0-9]", page.text), page.text
    references = [a or b for a, b in REFERENCE.findall(page.text)]
    assert "/openapi.json" in references, page.text
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), reference
        served = client.get(reference)
        assert served.status_code == 200, (reference, served.status_code)
        assert len(served.content) > 100, reference
    kinds = {r.rsplit(".", 1)[-1]: client.get(r).headers["content-type"] for r in references}
    assert kinds["js"].startswith("text/javascript") and kinds["css"].startswith("text/css")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "://" not in policy and "*" not in policy, policy


def test_only_the_docs_files_are_served_under_docs_assets(client: httpx.Client) -> None:
    for path in (
        "/docs/assets/redoc.standalone.js",
        "/docs/assets/__init__.py",
        "/docs/assets/..%2F__init__.py",
        "/docs/assets/%2E%2E%2Fcore.py",
    ):
        assert client.get(path).status_code == 404, path


def test_in_chromium_the_docs_page_loads_only_from_its_own_origin(server: ServeProcess) -> None:
    """Requests to any other origin are recorded and aborted (this machine reaches no CDN,
    and CI's may): the page must render from its own files alone."""
    executable = chromium_path()
    origin = f"http://{DOCS_HOST}:{server.port}"
    elsewhere: list[str] = []

    def keep_home(route: playwright_api.Route) -> None:
        url = route.request.url
        if url == origin or url.startswith(f"{origin}/") or url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=executable,
            args=[*BASE_ARGS, f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1"],
        )
        try:
            context = browser.new_context()
            context.set_default_timeout(15_000)
            context.route("**/*", keep_home)
            page = context.new_page()
            console = Console(page)
            page.goto(f"{origin}/docs")
            try:
                operation = page.get_by_text("Complete a waitpoint token", exact=True)
                playwright_api.expect(operation).to_be_visible()
                operation.click()  # expand one: its schema renders from the spec alone
                playwright_api.expect(page.get_by_text("Request body").first).to_be_visible()
                page.wait_for_load_state("networkidle")
            finally:  # whether or not it rendered, nothing may have come from elsewhere
                assert not elsewhere, f"/docs asked other origins for: {elsewhere}\n{console}"
        finally:
            browser.close()
    refused = [line for line in console.lines if "Content Security Policy" in line]
    assert not refused, "\n".join(refused)
