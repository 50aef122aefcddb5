"""The official Trigger.dev SDK (``@trigger.dev/sdk``, pinned in tests/sdk) against our server.

``tests/sdk/compat.mjs`` drives a real ``waitpoint dev`` on 127.0.0.1 through the SDK: create
(twice with one idempotency key), retrieve, list with filters and cursor paging, complete with
the secret key, with a public access token and through the callback URL, a cancelled token as
the SDK sees it, trigger a task, retrieve, cancel and list runs. It prints one JSON line per
step; the driver runs once per module and the tests read its steps. Every step must pass.

Needs ``node`` and ``npm``: skipped only where either is missing. ``npm ci`` installs the pinned
SDK into tests/sdk/node_modules the first time (network access to the npm registry).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_api_server import DevServer

SDK_DIR = Path(__file__).parent / "sdk"
NPM_CI_TIMEOUT = 300.0
DRIVER_TIMEOUT = 150.0
TASK_ID = "sdk-compat"

SDK_TASKS = '''
from engine import create_token, task, wait_for_token


@task("sdk-compat")
async def sdk_compat(payload: dict) -> dict:
    """Park on a token nobody completes, so the driver's cancel finds the run unfinished."""
    token = await create_token(timeout="1h", tags=["sdk-compat-run"])
    result = await wait_for_token(token)
    return {"payload": payload, "approval": result.output}
'''

# Every step compat.mjs reports; one missing means the driver no longer checks it.
REQUIRED_STEPS = [
    "createToken",
    "createToken-idempotent",
    "createToken-for-public-access",
    "createToken-for-callback",
    "retrieveToken-waiting",
    "retrieveToken-no-timeout",
    "listTokens-waiting-paged",
    "listTokens-idempotencyKey-filter",
    "completeToken-wrong-public-token",
    "public-token-cannot-retrieve",
    "completeToken-secret-key",
    "completeToken-public-access-token",
    "callback-bad-signature",
    "callback-post",
    "completeToken-again-keeps-data",
    "retrieveToken-completed-A",
    "retrieveToken-completed-B",
    "retrieveToken-completed-C",
    "listTokens-completed",
    "cancelToken-raw-http",
    "retrieveToken-cancelled-as-timed-out",
    "listTokens-with-a-cancelled-token",
    "completeToken-cancelled-410",
    "retrieveToken-unknown-404",
    "tasks.trigger",
    "runs.retrieve",
    "runs.cancel",
    "runs.cancel-again",
    "runs.list",
    "runs.list-every-final-status",
    "tasks.trigger-unknown-404",
    "summary",
]


pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + DRIVER_TIMEOUT + 60)


def _pinned_sdk_version() -> str:
    manifest = json.loads((SDK_DIR / "package.json").read_text())
    version: str = manifest["dependencies"]["@trigger.dev/sdk"]
    return version


def _installed_sdk_version() -> str | None:
    manifest = SDK_DIR / "node_modules" / "@trigger.dev" / "sdk" / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


@pytest.fixture(scope="module")
def sdk_installed() -> Path:
    """tests/sdk with the pinned SDK in node_modules (``npm ci`` when it is missing or stale)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not on PATH: the Trigger.dev SDK compatibility test needs it")
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    assert match and (int(match[1]), int(match[2])) >= (18, 20), (
        f"node {version} is too old for @trigger.dev/sdk: install Node >= 18.20"
    )
    if _installed_sdk_version() != _pinned_sdk_version():
        try:
            installed = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=SDK_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`npm ci` in {SDK_DIR} did not finish in {NPM_CI_TIMEOUT:.0f} s: {exc}")
        if installed.returncode != 0:
            pytest.fail(
                f"`npm ci` in {SDK_DIR} failed (exit {installed.returncode}):\n"
                f"{installed.stdout[-4000:]}\n{installed.stderr[-4000:]}"
            )
    assert _installed_sdk_version() == _pinned_sdk_version(), "npm ci did not install the pin"
    return SDK_DIR


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("sdk"), "sdk_tasks", SDK_TASKS)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def _driver_env(server: DevServer) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRIGGER_", "WAITPOINT_", "OTEL_"))
    }
    env.update(
        {
            "TRIGGER_API_URL": server.base_url,
            "TRIGGER_SECRET_KEY": server.secret_key,
            "WAITPOINT_TASK_ID": TASK_ID,
            "COMPAT_STEP_TIMEOUT_MS": "20000",
        }
    )
    return env


@dataclass
class DriverRun:
    returncode: int
    steps: dict[str, dict[str, Any]]
    report: str
    """Exit code, stdout (the JSON lines), stderr and the server's output, for failure messages."""


@pytest.fixture(scope="module")
def driver(sdk_installed: Path, sdk_server: DevServer) -> DriverRun:
    """One run of compat.mjs against the server; every test here reads its steps."""
    try:
        finished = subprocess.run(
            ["node", "compat.mjs"],
            cwd=sdk_installed,
            env=_driver_env(sdk_server),
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"compat.mjs did not finish in {DRIVER_TIMEOUT:.0f} s:\n{exc.stdout!r}")
    steps: dict[str, dict[str, Any]] = {}
    for line in finished.stdout.splitlines():
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and "step" in parsed:
            steps[parsed["step"]] = parsed
    report = (
        f"compat.mjs exit {finished.returncode}\n--- driver stdout (one JSON line per step)\n"
        f"{finished.stdout}\n--- driver stderr\n{finished.stderr[-4000:]}\n"
        f"--- server output\n{sdk_server.output()[-4000:]}"
    )
    return DriverRun(finished.returncode, steps, report)


def test_the_official_sdk_drives_our_server(driver: DriverRun, sdk_server: DevServer) -> None:
    missing = [name for name in REQUIRED_STEPS if name not in driver.steps]
    assert not missing, f"steps missing from the driver's report: {missing}\n{driver.report}"
    failed = {name for name, step in driver.steps.items() if step.get("ok") is not True}
    failed.discard("summary")
    assert not failed, f"SDK steps failed: {sorted(failed)}\n{driver.report}"
    assert driver.steps["summary"]["failed"] == len(failed), driver.report
    assert driver.returncode == (1 if failed else 0), driver.report
    steps = driver.steps
    assert steps["createToken-idempotent"]["id"] == steps["createToken"]["id"]

    # The audit trail: each SDK path recorded how the completion arrived.
    expected_via = {
        steps["createToken"]["id"]: "api",
        steps["createToken-for-public-access"]["id"]: "public-token",
        steps["createToken-for-callback"]["id"]: "callback",
    }
    with httpx.Client(
        base_url=sdk_server.base_url, headers=sdk_server.auth_headers, timeout=10.0
    ) as client:
        for token_id, via in expected_via.items():
            token = client.get(f"/api/v1/waitpoints/tokens/{token_id}")
            assert token.status_code == 200, token.text
            assert token.json()["completedVia"] == via, token.json()
        cancelled = client.get(f"/api/v1/waitpoints/tokens/{steps['cancelToken-raw-http']['id']}")
        assert cancelled.json()["status"] == "CANCELLED", cancelled.json()
        run = client.get(f"/api/v3/runs/{steps['tasks.trigger']['id']}")
        assert run.status_code == 200, run.text
        assert run.json()["status"] == "CANCELED", run.json()
