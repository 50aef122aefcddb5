"""The CLI in the environment a newcomer runs it in, as a subprocess (``python -m engine``).

A port in use, the address callback URLs carry, a working directory or database folder that
cannot be written, a full disk, a PostgreSQL server that refuses, and the secret key of a
database used from another directory: each either works or ends the command with exit code 1
and one ``error:`` line that names the path (or server) and the reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import Engine, Settings, keys, task
from engine.client import NO_PUBLIC_URL
from engine.client.local import verify_callback
from engine.settings import SECRET_KEY_FILE
from engine.signing import UNKNOWN_PUBLIC_URL

from .conftest import StartWorker
from .postgres import SERVER_URL, require_postgres
from .test_api_server import free_port

KEY = "cli-environment-tests-key-0123456789abcdef"

DEV_TASKS = '''
from engine import create_token, task


@task("dev-url")
async def dev_url(payload: None) -> str:
    """Hands out the URL of a token it makes, as a task that mails it to a reviewer would."""
    return (await create_token(timeout="1h")).url
'''

WORKER_TASKS = DEV_TASKS.replace("dev-url", "worker-url").replace("dev_url", "worker_url")


def environment(**more: str) -> dict[str, str]:
    """This process's environment without any WAITPOINT_ setting, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAITPOINT_")}
    env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **more})
    return env


def engine_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def cli(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` in ``cwd``; WAITPOINT_* only as given here."""
    return subprocess.run(
        engine_command(*args),
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line a command that failed printed (asserting it is the only one)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def sqlite_at(path: Path) -> str:
    return f"sqlite:///{path}"


# 1. a port in use ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["dev", "--tasks", "dev_tasks"], ["serve"]])
def test_a_port_in_use_ends_dev_and_serve_at_once_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "dev_tasks.py").write_text(DEV_TASKS)
    database = tmp_path / "data" / "engine.db"
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = cli(
            *command,
            "--port",
            str(port),
            "--database",
            sqlite_at(database),
            cwd=tmp_path,
            timeout=10,
        )
        took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr == f"error: port {port} is in use: pass --port or stop the other process\n"
    assert result.stdout == ""
    assert took < 10
    assert not database.parent.exists()  # bound before anything else: no database, no key


def test_make_dev_passes_its_port() -> None:
    """``make dev PORT=8031`` runs ``waitpoint dev --port 8031``; plain ``make dev`` keeps 8030."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).parent.parent

    def dry_run(*args: str) -> list[str]:
        """The words of the command ``make dev`` would run ``waitpoint dev`` with."""
        found = subprocess.run(
            ["make", "-n", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        [line] = [line for line in found.stdout.splitlines() if "waitpoint dev" in line]
        return line.split()

    assert dry_run("dev", "PORT=8031")[-3:] == ["dev", "--port", "8031"]
    assert dry_run("dev")[-1] == "dev"


# 2. callback and approval URLs follow the port the server listens on --------------------------


class Dev:
    """``python -m engine dev`` in ``root`` on ``database``, without WAITPOINT_SECRET_KEY."""

    def __init__(self, root: Path, database: str, port: int) -> None:
        self.root, self.database, self.port = root, database, port
        self.base_url = f"http://127.0.0.1:{port}"
        self.stderr = root / "dev.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "dev_tasks.py").write_text(DEV_TASKS)
        command = engine_command(
            "dev", "--port", str(self.port), "--database", self.database, "--tasks", "dev_tasks"
        )
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=environment(), stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.stderr.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, self.stderr.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    root = tmp_path / "server"
    root.mkdir()
    server = Dev(root, sqlite_at(tmp_path / "data" / "engine.db"), free_port())
    server.start()
    yield server
    server.stop()


def test_urls_follow_the_port_the_server_listens_on(dev: Dev, tmp_path: Path) -> None:
    """With ``dev --port P``: the CLI from another directory, a script's Engine() and workers
    (the server's and a separate one) all hand out URLs on P, which the server verifies; and
    the key ``dev`` made beside the database signs the CLI's approval links (issue 14, 12)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = dev.database
    on_port = f"http://127.0.0.1:{dev.port}/"

    made = cli("tokens", "create", "--json", "--database", db, cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["url"].startswith(f"{on_port}api/v1/waitpoints/tokens/{token['id']}/callback/")
    listed = cli("tokens", "list", "--json", "--database", db, cwd=elsewhere)
    assert listed.returncode == 0 and listed.stderr == ""
    urls = [t["url"] for t in json.loads(listed.stdout)["data"]]
    assert urls and all(url.startswith(on_port) for url in urls)

    link = cli("tokens", "link", token["id"], "--database", db, cwd=elsewhere)
    assert link.returncode == 0, link.stderr
    assert link.stdout.startswith(f"{on_port}ui/approve/{token['id']}?t=")
    # signed with the key `dev` made beside the database: the server opens the page
    assert httpx.get(link.stdout.strip(), timeout=10).status_code == 200
    key_file = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (elsewhere / ".waitpoint").exists()  # no key of its own made here
    secret = cli("signing-secret", "--database", db, cwd=elsewhere)
    assert secret.stdout.strip() == keys.derive_signing_secret(key_file.read_text().strip())
    assert f"keptin{key_file}" in re.sub(r"\s", "", dev.stderr.read_text())  # the banner says

    # the signed callback URL verifies against the server's key and completes the token
    answer = httpx.post(token["url"], json={"approved": True}, timeout=10)
    assert answer.status_code == 200 and answer.json()["applied"] is True

    script = (
        "import asyncio\nfrom engine import Engine\n"
        "async def main():\n"
        "    async with Engine() as engine:\n"
        "        print((await engine.tokens.create()).url)\n"
        "asyncio.run(main())\n"
    )
    from_script = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env=environment(WAITPOINT_DATABASE_URL=db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert from_script.returncode == 0, from_script.stderr
    assert from_script.stdout.startswith(on_port)

    ran = cli("trigger", "dev-url", "--wait", "--json", "--database", db, cwd=elsewhere)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["output"].startswith(on_port)  # `dev`'s own worker

    (elsewhere / "worker_tasks.py").write_text(WORKER_TASKS)
    worker = subprocess.Popen(
        engine_command("worker", "--tasks", "worker_tasks", "--database", db),
        cwd=elsewhere,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # until the worker registered its task
            ran = cli("trigger", "worker-url", "--wait", "--json", "--database", db, cwd=elsewhere)
            if ran.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["output"].startswith(on_port)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=15)


def test_without_a_recorded_address_a_process_says_so(tmp_path: Path) -> None:
    """No server ever ran on the database and no WAITPOINT_PUBLIC_URL: nothing is guessed."""
    db = sqlite_at(tmp_path / "data" / "engine.db")
    made = cli("tokens", "create", "--json", "--database", db, cwd=tmp_path)
    assert made.returncode == 0
    token = json.loads(made.stdout)
    assert token["url"].startswith(f"{UNKNOWN_PUBLIC_URL}/api/v1/waitpoints/tokens/{token['id']}")
    assert made.stderr.startswith(f"note: {NO_PUBLIC_URL}")
    assert one_error(cli("tokens", "link", token["id"], "--database", db, cwd=tmp_path)) == (
        NO_PUBLIC_URL
    )
    configured = {"WAITPOINT_PUBLIC_URL": "https://wp.example.com"}
    link = cli("tokens", "link", token["id"], "--database", db, cwd=tmp_path, **configured)
    assert link.returncode == 0 and link.stdout.startswith("https://wp.example.com/ui/approve/")
    listed = cli("tokens", "list", "--json", "--database", db, cwd=tmp_path, **configured)
    assert json.loads(listed.stdout)["data"][0]["url"].startswith("https://wp.example.com/api/")
    assert listed.stderr == ""


async def test_the_address_the_server_records_reaches_every_process_of_the_database(
    db_url: str,
) -> None:
    async with Engine(db_url) as first:
        token = await first.tokens.create()
        assert token.url.startswith(f"{UNKNOWN_PUBLIC_URL}/api/v1/waitpoints/tokens/{token.id}/")
        await first.storage.record_public_url("http://127.0.0.1:8160")
        async with Engine(db_url) as second:
            seen = await second.tokens.retrieve(token.id)
            assert seen.url.startswith(
                f"http://127.0.0.1:8160/api/v1/waitpoints/tokens/{token.id}/"
            )
            # the signature is the base's business of none: the URL of either base verifies
            for url in (token.url, seen.url):
                assert await verify_callback(
                    second.signer, second.storage, token.id, url.rsplit("/", 1)[1]
                )
        assert await first.storage.load_public_url() == "http://127.0.0.1:8160"
        configured = Settings(public_url="https://wp.example.com/base/")
        async with Engine(db_url, settings=configured) as third:
            url = (await third.tokens.retrieve(token.id)).url
            assert url.startswith("https://wp.example.com/base/api/v1/waitpoints/tokens/")
            assert await verify_callback(
                third.signer, third.storage, token.id, url.rsplit("/", 1)[1]
            )


@task("env-follow")
async def env_follow(payload: None) -> None:
    return None


async def test_a_worker_follows_a_server_that_starts_after_it(
    engine: Engine, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.worker.PUBLIC_URL_SECONDS", 0.05)
    await start_worker([env_follow])
    assert engine.signer.public_url is None
    async with Engine(engine.settings.database_url) as server:
        await server.storage.record_public_url("http://127.0.0.1:8161")
    for _ in range(200):
        if engine.signer.public_url is not None:
            break
        await asyncio.sleep(0.02)
    assert engine.signer.public_url == "http://127.0.0.1:8161"


# 3. one line for every bad environment ------------------------------------------------------


DATABASE_COMMANDS = [
    ["tokens", "list"],
    ["tokens", "create"],
    ["tokens", "get", "waitpoint_x"],
    ["tokens", "complete", "waitpoint_x"],
    ["tokens", "link", "waitpoint_x"],
    ["tokens", "cancel", "waitpoint_x"],
    ["tokens", "receipt", "waitpoint_x"],
    ["runs", "list"],
    ["runs", "get", "run_x"],
    ["runs", "timeline", "run_x"],
    ["runs", "cancel", "run_x"],
    ["runs", "pause", "run_x"],
    ["runs", "resume", "run_x"],
    ["runs", "retry", "run_x"],
    ["runs", "replay", "run_x"],
    ["runs", "fork", "run_x", "--from-step", "a"],
    ["runs", "migrate", "run_x", "--to", "v2"],
    ["purge", "--older-than", "30d"],
    ["stats"],
    ["tasks", "pause", "x"],
    ["tasks", "resume", "x"],
    ["tasks", "paused"],
    ["schedules", "create", "x", "--cron", "* * * * *"],
    ["schedules", "list"],
    ["schedules", "get", "sched_x"],
    ["schedules", "update", "sched_x"],
    ["schedules", "delete", "sched_x"],
    ["schedules", "activate", "sched_x"],
    ["schedules", "deactivate", "sched_x"],
    ["approvals", "list"],
    ["approvals", "get", "waitpoint_x"],
    ["approvals", "vote", "waitpoint_x", "--as", "a@b"],
    ["approvals", "links", "waitpoint_x"],
    ["approvals", "receipts", "waitpoint_x"],
    ["approvals", "inbox", "a@b"],
    ["trigger", "x"],
    ["migrate"],
    ["worker", "--tasks", "dev_tasks"],
    ["dev", "--tasks", "dev_tasks", "--port", "0"],
    ["serve", "--port", "0"],
]
"""Every command that opens a database (``--port 0``: replaced by a free port)."""


def _with_port(command: list[str]) -> list[str]:
    return [str(free_port()) if part == "0" else part for part in command]


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_every_command_on_a_database_under_a_file_says_so_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """A path whose folder is a file fails for root too (unlike modes, which root ignores)."""
    (tmp_path / "dev_tasks.py").write_text(DEV_TASKS)
    (tmp_path / "afile").write_text("not a folder")
    db = sqlite_at(tmp_path / "afile" / "engine.db")
    args = [*_with_port(command), "--database", db]
    keyed = one_error(cli(*args, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY))
    where = f"{tmp_path}/afile is a file, not a folder"
    assert keyed == f"cannot open the SQLite database {tmp_path}/afile/engine.db: {where}"
    unkeyed = one_error(cli(*_with_port(command), "--database", db, cwd=tmp_path))
    assert unkeyed == f"cannot read the secret key file {tmp_path}/afile/secret_key: {where}"


def test_a_working_directory_where_nothing_can_be_made_says_so_in_one_line() -> None:
    """``/sys`` refuses new folders, to root too: the default database and key cannot live
    there."""
    if not Path("/sys").is_dir() or _can_make_folder("/sys"):
        pytest.skip("no /sys that refuses new folders here")
    message = one_error(cli("tokens", "list", cwd=Path("/sys")))
    assert message.startswith("cannot create the secret key file /sys/.waitpoint/secret_key: ")
    message = one_error(cli("runs", "list", cwd=Path("/sys"), WAITPOINT_SECRET_KEY=KEY))
    assert message.startswith("cannot open the SQLite database /sys/.waitpoint/engine.db: ")


def test_a_working_directory_that_was_removed_says_so_in_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    command = " ".join(f"'{part}'" for part in engine_command("tokens", "list"))
    result = subprocess.run(
        ["sh", "-c", f'cd "$0" && rmdir "$0" && exec {command}', str(gone)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one_error(result) == "the working directory no longer exists: cd to one that does"


def _can_make_folder(parent: str) -> bool:
    try:
        os.mkdir(Path(parent) / ".waitpoint-probe")
    except OSError:
        return False
    os.rmdir(Path(parent) / ".waitpoint-probe")
    return True


READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0"'
"""Shell that makes the folder ``$0`` read-only in a mount namespace of its own (root can
write to any folder whatever its mode, not to a read-only mount)."""


@pytest.fixture(scope="module")
def namespaces() -> None:
    """Skip unless this process may make a mount namespace (``unshare -m``: root, Linux)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): read-only mounts and a small file system cannot be made")
    probe = Path(f"/tmp/waitpoint-ro-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        check = f'{READ_ONLY} && ! touch "$0/x" 2>/dev/null'
        found = subprocess.run(
            ["unshare", "-m", "sh", "-c", check, str(probe)], capture_output=True, timeout=30
        )
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if found.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here (unshare -m: {found.stderr!r})")


def in_namespace(
    setup: str, folder: Path, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` in ``cwd`` after the shell ``setup`` (``$0``: ``folder``)
    ran in a mount namespace of its own."""
    command = " ".join(f"'{part}'" for part in engine_command(*args))
    script = f'{setup} && cd "$1" && exec {command}'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(folder), str(cwd)],
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.usefixtures("namespaces")
def test_a_read_only_working_directory_says_so_in_one_line(tmp_path: Path) -> None:
    message = one_error(in_namespace(READ_ONLY, tmp_path, "tokens", "list", cwd=tmp_path))
    assert message == (
        f"cannot create the secret key file {tmp_path}/.waitpoint/secret_key: Read-only file"
        " system (set WAITPOINT_SECRET_KEY, or make the folder writable)"
    )
    keyed = in_namespace(
        READ_ONLY, tmp_path, "runs", "list", cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY
    )
    assert one_error(keyed) == (
        f"cannot open the SQLite database {tmp_path}/.waitpoint/engine.db: Read-only file system"
    )


@pytest.mark.usefixtures("namespaces")
def test_a_read_only_database_folder_says_so_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    db = sqlite_at(folder / "engine.db")
    message = one_error(
        in_namespace(READ_ONLY, folder, "tokens", "list", "--database", db, cwd=tmp_path)
    )
    assert message.startswith(f"cannot create the secret key file {folder}/secret_key: Read-only")
    for args in (["tokens", "list"], ["migrate"]):
        keyed = in_namespace(
            READ_ONLY, folder, *args, "--database", db, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY
        )
        assert one_error(keyed) == (
            f"cannot open the SQLite database {folder}/engine.db: Read-only file system"
        )
    # a database that exists in a folder that became read-only (SQLite cannot make its -shm)
    assert cli("migrate", "--database", db, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY).returncode == 0
    for name in ("engine.db-wal", "engine.db-shm"):
        (folder / name).unlink(missing_ok=True)
    keyed = in_namespace(
        READ_ONLY, folder, "runs", "list", "--database", db, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY
    )
    message = one_error(keyed)
    assert message.startswith(f"cannot open the SQLite database {folder}/engine.db: ")
    assert "Read-only file system" in message


@pytest.mark.usefixtures("namespaces")
def test_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    db = sqlite_at(folder / "engine.db")
    make = " ".join(f"'{p}'" for p in engine_command("tokens", "create", "--database", db))
    fill = f'dd if=/dev/zero of="$0/fill" bs=4096 2>/dev/null; {make} >/dev/null 2>&1'
    full = f'mount -t tmpfs -o size=400k tmpfs "$0" && {make} >/dev/null 2>&1 && ({fill}; true)'
    result = in_namespace(full, folder, "tokens", "create", "--database", db, cwd=tmp_path)
    assert one_error(result) == "SQLite error: database or disk is full"
    other = sqlite_at(folder / "other.db")
    result = in_namespace(full, folder, "runs", "list", "--database", other, cwd=tmp_path)
    assert one_error(result).startswith(f"cannot open the SQLite database {folder}/other.db: ")


def test_a_postgresql_server_nobody_listens_for_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("asyncpg")
    port = free_port()
    url = f"postgresql://app:secret@127.0.0.1:{port}/app"
    for command in (["tokens", "list"], ["migrate"], ["worker", "--tasks", "dev_tasks"]):
        (tmp_path / "dev_tasks.py").write_text(DEV_TASKS)
        result = cli(*command, "--database", url, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY)
        assert one_error(result) == (
            f"cannot open PostgreSQL database postgresql://app:***@127.0.0.1:{port}/app:"
            " Connection refused"
        )
    unknown = "postgresql://app@no-such-host.invalid/app"
    result = cli("runs", "list", "--database", unknown, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY)
    assert one_error(result).startswith(f"cannot open PostgreSQL database {unknown}: ")


@contextlib.contextmanager
def password_refusing_server() -> Iterator[int]:
    """A stand-in PostgreSQL server that asks for a password and refuses it (28P01), as a
    server with password authentication does; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def read(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def answer(conn: socket.socket) -> None:
        with conn:
            (length,) = struct.unpack("!i", read(conn, 4))
            body = read(conn, length - 4)
            if struct.unpack("!i", body[:4])[0] == 80877103:  # SSLRequest: no TLS here
                conn.sendall(b"N")
                (length,) = struct.unpack("!i", read(conn, 4))
                read(conn, length - 4)  # the startup message
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
            read(conn, 1)
            (length,) = struct.unpack("!i", read(conn, 4))
            read(conn, length - 4)
            fields = b"".join(
                code + text.encode() + b"\0"
                for code, text in [
                    (b"S", "FATAL"),
                    (b"V", "FATAL"),
                    (b"C", "28P01"),
                    (b"M", 'password authentication failed for user "app"'),
                ]
            )
            body = fields + b"\0"
            conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(5)
        listener.close()


def test_a_wrong_postgresql_password_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("asyncpg")
    with password_refusing_server() as port:
        url = f"postgresql://app:wrong@127.0.0.1:{port}/app"
        result = cli("tokens", "list", "--database", url, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY)
    assert one_error(result) == (
        f"cannot open PostgreSQL database postgresql://app:***@127.0.0.1:{port}/app:"
        ' password authentication failed for user "app"'
    )


def test_an_unknown_postgresql_user_or_database_says_so_in_one_line(tmp_path: Path) -> None:
    require_postgres()
    server = httpx.URL(SERVER_URL)
    where = f"{server.host}:{server.port or 5432}"
    for url, problem in [
        (f"postgresql://no_such_role_wp@{where}/postgres", 'role "no_such_role_wp" does not exist'),
        (
            f"postgresql://{server.username or 'postgres'}@{where}/no_such_database_wp",
            'database "no_such_database_wp" does not exist',
        ),
    ]:
        result = cli("tokens", "list", "--database", url, cwd=tmp_path, WAITPOINT_SECRET_KEY=KEY)
        assert one_error(result).endswith(problem)


# 12. the secret key lives with the database -------------------------------------------------


def test_the_generated_key_lives_beside_the_sqlite_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "data" / "engine.db"
    settings = Settings(secret_key=None, database_url=sqlite_at(db))
    made = keys.secret_key(settings, create=True)
    assert made is not None and made.created and made.origin == str(db.parent / "secret_key")
    assert stat.S_IMODE((db.parent / "secret_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert not (tmp_path / ".waitpoint").exists()
    monkeypatch.chdir(tmp_path / "data")  # from any other directory: the same key
    found = keys.secret_key(settings, create=False)
    assert found is not None and found.value == made.value and not found.created
    # the default database keeps it where it always was; PostgreSQL in the working directory
    assert keys.key_file(Settings(database_url="sqlite:///.waitpoint/engine.db")) == SECRET_KEY_FILE
    assert keys.key_file(Settings(database_url="postgresql://u@h/db")) == SECRET_KEY_FILE


def test_a_database_keyed_from_the_old_place_keeps_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the key moved beside the database, it was ``.waitpoint/secret_key`` of the
    directory the processes ran in: that key is still the database's, and moves beside it."""
    project = tmp_path / "project"
    (project / ".waitpoint").mkdir(parents=True)
    (project / ".waitpoint" / "secret_key").write_text(KEY + "\n")
    db = tmp_path / "data" / "engine.db"
    url = sqlite_at(db)

    async def made_before() -> str:  # the database as an earlier version left it
        async with Engine(url, settings=Settings(secret_key=KEY)) as engine:
            return (await engine.tokens.create()).url

    old_url = asyncio.run(made_before())
    monkeypatch.chdir(project)
    settings = Settings(secret_key=None, database_url=url)
    assert keys.secret_key(settings, create=False) == keys.SecretKey(KEY, str(SECRET_KEY_FILE))
    assert not (db.parent / "secret_key").exists()  # only a process that may create moves it

    async def opened_here() -> tuple[bool, str]:
        async with Engine(url, settings=Settings(secret_key=None)) as engine:
            token_id = old_url.split("/tokens/")[1].split("/")[0]
            signature = old_url.rsplit("/", 1)[1]
            assert await verify_callback(engine.signer, engine.storage, token_id, signature)
            return engine.storage.signing_key_matches, (await engine.tokens.create()).url

    matches, _ = asyncio.run(opened_here())
    assert matches
    assert (db.parent / "secret_key").read_text().strip() == KEY
    assert stat.S_IMODE((db.parent / "secret_key").stat().st_mode) == 0o600
    monkeypatch.chdir(tmp_path)  # from anywhere else now
    found = keys.secret_key(settings, create=True)
    assert (
        found is not None and found.value == KEY and found.origin == str(db.parent / "secret_key")
    )


def test_a_new_database_does_not_take_the_old_place_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".waitpoint").mkdir()
    (tmp_path / ".waitpoint" / "secret_key").write_text(KEY + "\n")
    monkeypatch.chdir(tmp_path)
    settings = Settings(secret_key=None, database_url=sqlite_at(tmp_path / "new" / "engine.db"))
    made = keys.secret_key(settings, create=True)
    assert made is not None and made.created and made.value != KEY


def test_a_short_or_unreadable_key_beside_the_database_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "engine.db"
    (tmp_path / "secret_key").write_text("short\n")
    message = one_error(cli("tokens", "list", "--database", sqlite_at(db), cwd=tmp_path))
    assert message.startswith(f"{tmp_path}/secret_key is 5 characters long")
    (tmp_path / "secret_key").unlink()
    (tmp_path / "secret_key").mkdir()  # unreadable, for root too
    message = one_error(cli("tokens", "list", "--database", sqlite_at(db), cwd=tmp_path))
    assert message == f"cannot read the secret key file {tmp_path}/secret_key: Is a directory"


def test_signing_secret_names_where_the_key_would_be(tmp_path: Path) -> None:
    db = tmp_path / "data" / "engine.db"
    message = one_error(cli("signing-secret", "--database", sqlite_at(db), cwd=tmp_path))
    assert re.fullmatch(
        r"no secret key: set WAITPOINT_SECRET_KEY, or start `waitpoint dev` on this database"
        rf" once \(it keeps its key in {re.escape(str(db.parent))}/secret_key\)",
        message,
    )
