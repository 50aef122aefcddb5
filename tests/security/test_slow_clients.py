"""Slow, unfinished and abandoned request bodies end, quietly, and the server keeps answering.

Every test here drives a real ``waitpoint serve`` on a free loopback port with raw sockets;
the module's server gives a body 2 seconds (``WAITPOINT_BODY_TIMEOUT_SECONDS``). Counts are
bounded and every client ends by itself: the server answers 408 and closes the connection.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from engine import Engine, Settings
from engine.services import api_server, listen
from tests.api.conftest import TOKENS

from .conftest import ServeProcess, read_response, status_of

Opening = Callable[[ServeProcess], tuple[str, dict[str, str]]]
"""A route that reads its body: its path and the headers it needs to get that far."""


def _create(server: ServeProcess) -> tuple[str, dict[str, str]]:
    return TOKENS, {**server.auth, "content-type": "application/json"}


def _complete(server: ServeProcess) -> tuple[str, dict[str, str]]:
    token = server.new_token()
    return f"{TOKENS}/{token['id']}/complete", {**server.auth, "content-type": "application/json"}


def _callback(server: ServeProcess) -> tuple[str, dict[str, str]]:
    return urlsplit(server.new_token()["url"]).path, {}


def _approval_form(server: ServeProcess) -> tuple[str, dict[str, str]]:
    token = server.new_token()
    with server.client() as client:
        link = urlsplit(client.post(f"{TOKENS}/{token['id']}/approval-link", json={}).json()["url"])
    form = {"content-type": "application/x-www-form-urlencoded", "origin": server.base_url}
    return f"{link.path}?{link.query}", form  # a browser posts the form with its Origin


ROUTES: dict[str, Opening] = {
    "create": _create,
    "complete": _complete,
    "callback": _callback,
    "approval-form": _approval_form,
}


def _head(path: str, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _closed_by_server(sock: socket.socket) -> bool:
    """The server closed the connection (EOF) rather than keeping it open."""
    sock.settimeout(10.0)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_body_that_never_arrives_gets_408_and_the_connection_is_closed(
    server: ServeProcess,
) -> None:
    """Every route that reads a body, with one byte of a declared 1000 and with an unfinished
    chunked body (the callback refuses chunked bodies before reading them), all at once."""
    cases = [(route, False) for route in sorted(ROUTES)]
    cases += [(route, True) for route in sorted(ROUTES) if route != "callback"]
    opened = []
    try:
        for route, chunked in cases:
            path, headers = ROUTES[route](server)
            sock = server.connect(timeout=15.0)
            opened.append(sock)
            sock.sendall(_head(path, headers, None if chunked else 1000))
            sock.sendall(b'5\r\n{"dat\r\n' if chunked else b"{")
        for (route, chunked), sock in zip(cases, opened, strict=True):
            case = f"{route}, {'chunked' if chunked else 'content-length'}"
            response = read_response(sock)
            assert status_of(response) == 408, (case, response[:300])
            assert b"not received within 2 seconds" in response, case
            assert _closed_by_server(sock), case
    finally:
        for sock in opened:
            sock.close()


def test_a_client_that_trickles_its_body_is_cut_off_by_the_total_time_limit(
    server: ServeProcess,
) -> None:
    path, headers = _create(server)
    started = time.monotonic()
    with server.connect(timeout=15.0) as sock:
        sock.sendall(_head(path, headers, 100))
        sock.settimeout(0.25)
        response = b""
        for _ in range(200):  # a byte every 0.25 s: 50 s for the whole body, were it allowed
            try:
                sock.sendall(b" ")
                response += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if b"\r\n\r\n" in response:
                break
    assert status_of(response) == 408, response[:300]
    assert time.monotonic() - started < 30.0


def test_fifty_slow_clients_end_by_themselves_and_healthz_keeps_answering(
    server: ServeProcess,
) -> None:
    path, headers = _create(server)
    clients = [server.connect(timeout=15.0) for _ in range(50)]
    try:
        for sock in clients:
            sock.sendall(_head(path, headers, 1000) + b"{")
        for _ in range(3):
            assert server.healthy(timeout=5.0), "the server stopped answering /healthz"
        statuses = [status_of(read_response(sock)) for sock in clients]
        assert statuses == [408] * 50
        assert all(_closed_by_server(sock) for sock in clients)
    finally:
        for sock in clients:
            sock.close()
    assert server.healthy(timeout=5.0)


def test_clients_that_leave_mid_body_are_dropped_without_a_trace_in_the_log(
    server: ServeProcess,
) -> None:
    before = server.stderr()
    for route in sorted(ROUTES):
        for _ in range(5):
            path, headers = ROUTES[route](server)
            with server.connect() as sock:
                sock.sendall(_head(path, headers, 1000) + b'{"data": "half')
                time.sleep(0.05)  # the route is reading by now
    for _ in range(3):
        assert server.healthy(timeout=5.0)
    time.sleep(0.5)  # what the server would log about the 20 clients is written by now
    written = server.stderr()[len(before) :]
    assert "Traceback" not in written, written[:3000]
    assert "Exception in ASGI application" not in written
    assert len(written.splitlines()) <= 20, written[:3000]  # at most the tokens' own lines


def test_a_callback_with_content_length_and_chunked_encoding_is_411_and_changes_nothing(
    server: ServeProcess,
) -> None:
    token = server.new_token()
    path = urlsplit(token["url"]).path
    body = b'{"a":1}'
    with server.connect() as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        response = read_response(sock)
    assert status_of(response) == 411, response[:300]
    with server.client() as client:
        assert client.get(f"{TOKENS}/{token['id']}").json()["status"] == "WAITING"


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ServeProcess]:
    """A server that serves 8 connections at once and gives a body 3 seconds."""
    process = ServeProcess(
        tmp_path, WAITPOINT_MAX_CONNECTIONS="8", WAITPOINT_BODY_TIMEOUT_SECONDS="3"
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_past_its_connection_limit_the_server_answers_503_until_slow_clients_end(
    small_server: ServeProcess,
) -> None:
    """uvicorn counts open connections: with 7 slow ones held, the 8th is the one too many."""
    path, headers = _create(small_server)
    held = [small_server.connect(timeout=15.0) for _ in range(7)]
    try:
        for sock in held:
            sock.sendall(_head(path, headers, 1000) + b"{")
        with httpx.Client(base_url=small_server.base_url, timeout=5.0) as client:
            assert client.get("/healthz").status_code == 503
        assert [status_of(read_response(sock)) for sock in held] == [408] * 7
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10.0
    while not small_server.healthy(timeout=2.0):
        assert time.monotonic() < deadline, "the server did not recover after the slow clients"
        time.sleep(0.1)


def test_uvicorn_gets_the_connection_limit_and_backlog_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/never-opened.db",
        secret_key="k" * 40,
        max_connections=42,
        backlog=77,
    )
    with listen("127.0.0.1", 0) as listener:
        server, _ = api_server(Engine(settings=settings), listener)
    assert server.config.limit_concurrency == 42
    assert server.config.backlog == 77
    defaults = Settings()
    assert (defaults.max_connections, defaults.backlog) == (500, 1024)
    assert 10 <= defaults.body_timeout_seconds <= 30


def test_the_connection_limit_stays_under_the_open_file_limit() -> None:
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200));"
        "from engine.services import connection_limit; print(connection_limit(500))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "136"  # 200 less 64 kept for the rest


def test_a_live_update_stream_outlasts_the_body_time_limit(server: ServeProcess) -> None:
    """The limit is on receiving a body: a stream (no body) runs past it and keeps sending."""
    tag = "outlasts-the-limit"
    with (
        server.client(timeout=15.0) as client,
        client.stream("GET", f"{TOKENS}/stream", params={"filter[tags]": tag}) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: tokens"
        time.sleep(3.0)  # longer than the server's 2-second body limit
        created = server.new_token(tags=[tag])
        for line in lines:
            if line.startswith("data:") and created["id"] in line:
                break
        else:
            pytest.fail("the stream ended before it showed the new token")
