"""What the hardening tests share: ``waitpoint serve`` on a free loopback port, raw sockets,
and a listener that records whether anything connected to it.

The server runs as a subprocess (``ServeProcess``) with its output in files, so tests can read
what it logged; it is stopped by PID (SIGTERM, then SIGKILL) whatever the test did.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.test_api_server import free_port, waitpoint_command

TOKENS = "/api/v1/waitpoints/tokens"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServeProcess:
    """``waitpoint serve`` on 127.0.0.1, on a SQLite file in ``root``, with ``env`` on top."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.secret_key = "wp_test_" + secrets.token_urlsafe(32)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = root / "server.stderr"
        self.stdout_path = root / "server.stdout"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
        self.env.update(
            {
                "WAITPOINT_SECRET_KEY": self.secret_key,
                "WAITPOINT_DATABASE_URL": f"sqlite:///{root}/engine.db",
                "WAITPOINT_PUBLIC_URL": self.base_url,
                "WAITPOINT_SQLITE_SYNCHRONOUS": "NORMAL",
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
                **env,
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret_key}"}

    def start(self) -> None:
        command = [*waitpoint_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=self.env, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"waitpoint serve exited early:\n{self.output()}")
            if self.healthy(timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"waitpoint serve did not answer:\n{self.output()}")
            time.sleep(0.1)

    def healthy(self, timeout: float) -> bool:
        """``GET /healthz`` answered 200 within ``timeout`` seconds, on a new connection."""
        try:
            with httpx.Client(base_url=self.base_url, timeout=timeout) as client:
                return client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.auth, timeout=timeout)

    def new_token(self, **body: Any) -> dict[str, Any]:
        with self.client() as client:
            answer = client.post(TOKENS, json=body)
        assert answer.status_code == 200, answer.text
        token: dict[str, Any] = answer.json()
        return token

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One ``waitpoint serve`` per test module, with a 2-second body time limit."""
    process = ServeProcess(tmp_path_factory.mktemp("serve"), WAITPOINT_BODY_TIMEOUT_SECONDS="2")
    try:
        process.start()
        yield process
    finally:
        process.stop()


def read_response(sock: socket.socket) -> bytes:
    """One response: its head and the ``Content-Length`` bytes of body that follow (or all
    that comes until the server closes the connection or is silent for the socket timeout).
    """
    data = b""
    while True:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if separator:
            length = _content_length(head)
            if length is not None and len(rest) >= length:
                return data
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response (0 when nothing came back)."""
    if not response.startswith(b"HTTP/1.1 "):
        return 0
    return int(response[9:12])


class Listener:
    """A TCP listener on 127.0.0.1 that counts connections and keeps what they sent.

    Stands in for a schema host: a test asserts that nothing ever connected to it.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/schema.json"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.received.append(conn.recv(65536))
                    body = b'{"type": "string"}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                except OSError:
                    self.received.append(b"")

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
