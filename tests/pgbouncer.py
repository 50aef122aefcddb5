"""PgBouncer in transaction mode in front of the test server, for the suites that must pass
through it (``db_url`` with ``pgbouncer``: the storage contract, the cluster and the crash
points).

One PgBouncer per test session, started here on a free port of 127.0.0.1 and stopped by its
PID at the end. Its pool is small (3 server connections), so that consecutive transactions of
one client really meet different server connections. Where Debian's ``pgbouncer`` is not
installed these tests skip and say so, unless ``WAITPOINT_REQUIRE_PGBOUNCER=1`` (set by
``.ci/run``, which installs it), which makes them fail instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from .postgres import SERVER_URL, fresh_schema_url

_server: tuple[subprocess.Popen[bytes], int] | None = None


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start() -> tuple[subprocess.Popen[bytes], int]:
    binary = _binary()
    if binary is None:
        reason = "PgBouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("WAITPOINT_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(f"WAITPOINT_REQUIRE_PGBOUNCER=1 but {reason}")
        pytest.skip(reason)
    server = urlsplit(SERVER_URL)
    user = server.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="wp-pgbouncer-"))
    port = _free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 500\n"
        f"unix_socket_dir =\nlogfile = {folder / 'pgbouncer.log'}\n"
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        for child in folder.iterdir():
            os.chown(child, owner.pw_uid, owner.pw_gid)
        command += ["-u", "postgres"]
    with (folder / "stderr.log").open("wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = (folder / "stderr.log").read_text(errors="replace").strip()
            pytest.fail(f"PgBouncer did not start: {error}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process, port
        time.sleep(0.05)
    process.kill()
    pytest.fail("PgBouncer did not listen within 10 s")


def stop() -> None:
    """Stop this session's PgBouncer, if one was started (by its PID)."""
    global _server
    if _server is not None:
        process, _ = _server
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        _server = None


@contextlib.contextmanager
def pooled_schema_url() -> Iterator[str]:
    """A fresh schema's URL through PgBouncer (``?pgbouncer=true``), with
    ``WAITPOINT_LISTEN_URL`` pointing past it for the engines (and processes) made meanwhile."""
    global _server
    with fresh_schema_url() as direct:
        if _server is None:
            _server = _start()
        parts = urlsplit(direct)
        host = f"{parts.username or 'postgres'}@127.0.0.1:{_server[1]}"
        url = urlunsplit(parts._replace(netloc=host)) + "&pgbouncer=true"
        previous = os.environ.get("WAITPOINT_LISTEN_URL")
        os.environ["WAITPOINT_LISTEN_URL"] = SERVER_URL
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("WAITPOINT_LISTEN_URL", None)
            else:
                os.environ["WAITPOINT_LISTEN_URL"] = previous


def listen_url_for(url: str) -> str | None:
    """Where a storage opened on ``url`` outside an Engine should LISTEN."""
    return os.environ.get("WAITPOINT_LISTEN_URL") if "pgbouncer=true" in url else None
