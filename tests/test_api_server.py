"""The REST API on a real uvicorn server: ``waitpoint dev`` as a subprocess on 127.0.0.1.

One run goes through the whole HTTP path a remote caller sees: trigger over the API, the
worker in the same process parks the run on a token, the token is found by listing and
completed through its signed callback URL (no API key), and the run finishes with the data.
Then SIGTERM stops the process cleanly, and neither the callback signature nor the secret key
ever reached its output (the callback URL is a capability).

``DevServer`` is shared with ``test_sdk_compat.py``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

SERVER_TASKS = '''
from engine import create_token, task, wait_for_token


@task("server-flow")
async def server_flow(payload: dict) -> dict:
    """Wait for an approval token tagged with the payload's tag; return what it was given."""
    token = await create_token(timeout="1h", tags=["server-flow", payload["tag"]])
    result = await wait_for_token(token)
    return {"payload": payload, "approval": result.output, "ok": result.ok}
'''

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def waitpoint_command() -> list[str]:
    """The installed console script next to this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("waitpoint")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from engine.cli import main; main()"]


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevServer:
    """``waitpoint dev`` (worker + API) in ``root`` on a free loopback port, output to files."""

    def __init__(self, root: Path, tasks_module: str, tasks_source: str) -> None:
        self.root = root
        self.tasks_module = tasks_module
        (root / f"{tasks_module}.py").write_text(tasks_source)
        self.secret_key = "wp_test_" + secrets.token_urlsafe(32)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database = f"sqlite:///{root}/engine.db"
        self.stdout_path = root / "server.stdout"
        self.stderr_path = root / "server.stderr"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
        self.env.update(
            {
                "WAITPOINT_SECRET_KEY": self.secret_key,
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret_key}"}

    def start(self) -> None:
        """Start the process and return once ``GET /healthz`` answers 200."""
        command = [
            *waitpoint_command(),
            "dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            self.database,
            "--tasks",
            self.tasks_module,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=self.env, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"waitpoint dev exited early:\n{self.output()}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"waitpoint dev did not answer /healthz:\n{self.output()}")
                time.sleep(0.1)

    def output(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (by PID) and wait; returns the exit code (fails if it does not stop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"waitpoint dev still ran {timeout:.0f} s after SIGTERM:\n{self.output()}"
            ) from None

    def kill(self) -> None:
        """Make sure the process is gone: SIGTERM, then SIGKILL (by PID), always reaped."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path, "server_tasks", SERVER_TASKS)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float) -> Any:
    """Call ``fetch`` until ``done(value)``; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        time.sleep(0.1)


def get_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/v3/runs/{run_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_run_parks_on_a_token_and_finishes_when_its_callback_url_is_posted(
    dev_server: DevServer,
) -> None:
    tag = f"server-{secrets.token_hex(4)}"
    approval = {"approved": True, "by": "server-test", "list": [1, "two", None]}
    with (
        httpx.Client(
            base_url=dev_server.base_url, headers=dev_server.auth_headers, timeout=10.0
        ) as client,
        httpx.Client(timeout=10.0) as anonymous,
    ):
        triggered = client.post(
            "/api/v1/tasks/server-flow/trigger", json={"payload": {"tag": tag, "n": 7}}
        )
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["id"]
        assert run_id.startswith("run_")
        assert triggered.json()["isCached"] is False

        waiting = poll(
            lambda: get_run(client, run_id), lambda r: r["status"] == "WAITING", "WAITING", 30
        )
        assert waiting["isWaiting"] is True
        assert waiting["taskIdentifier"] == "server-flow"

        listed = client.get(
            "/api/v1/waitpoints/tokens", params={"filter[status]": "WAITING", "filter[tags]": tag}
        )
        assert listed.status_code == 200, listed.text
        [token] = listed.json()["data"]
        assert token["status"] == "WAITING"
        assert tag in token["tags"]

        url = urlsplit(token["url"])
        assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", dev_server.port)
        prefix = f"/api/v1/waitpoints/tokens/{token['id']}/callback/"
        assert url.path.startswith(prefix), token["url"]
        signature = url.path.removeprefix(prefix)
        assert len(signature) == 64
        assert set(signature) <= set("0123456789abcdef")

        # The URL alone is the capability: no API key on this request.
        called = anonymous.post(token["url"], json=approval)
        assert called.status_code == 200, called.text
        assert called.json()["success"] is True

        done = poll(
            lambda: get_run(client, run_id), lambda r: r["status"] == "COMPLETED", "COMPLETED", 30
        )
        assert done["output"] == {"payload": {"tag": tag, "n": 7}, "approval": approval, "ok": True}
        assert done["isSuccess"] is True

        completed = client.get(f"/api/v1/waitpoints/tokens/{token['id']}")
        assert completed.status_code == 200, completed.text
        assert completed.json()["status"] == "COMPLETED"
        assert completed.json()["completedVia"] == "callback"

    assert dev_server.terminate() == 0, dev_server.output()
    output = dev_server.output()
    assert signature not in output, "the callback signature reached the process output"
    assert dev_server.secret_key not in output, "the secret key reached the process output"
