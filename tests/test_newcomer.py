"""A newcomer's first hour, scripted: a fresh clone, ``make dev``, the README's commands.

Everything runs as a new user would run it: ``git clone`` of this checkout into a temporary
directory, ``make dev PORT=<free port>`` there (which makes its own ``.venv`` from PyPI), the
quick start's CLI commands from the README (read from it, so the two cannot drift) and its
callback ``curl``; a second ``make dev`` on the same port must give up at once with one line;
and the README's test example passes in a folder of its own (``test_readme_example``).
The clock from the clone to a server answering ``/healthz`` is printed (``pytest -s``).

Slow by nature (a virtual environment is built from the registry), so it is one test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .test_readme_example import run_readme_example

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SERVER_START_S = 600.0  # the first `make dev` installs the runtime dependencies from PyPI


def _quick_start_commands() -> list[str]:
    """The CLI commands of the README's quick start (its block of ``waitpoint ...`` lines)."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("waitpoint ")
    ]
    assert commands, "the README's quick start shows no waitpoint command"
    return commands


def _callback_curl() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    found = re.search(r"^curl -X POST \"<token url>\".*$", section, re.M)
    assert found, "the README's quick start shows no callback curl"
    return found.group(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[str]) -> None:
    """Stop a process group this test started (``make`` and the server it runs)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.fail("the newcomer test needs make and git, which the README assumes")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone (CI runs on one)")
    target = tmp_path / "waitpoint"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    yield target


def _newcomers_environment() -> dict[str, str]:
    """This process's environment as a user's shell would have it: no WAITPOINT_* settings,
    nothing of this checkout, and no outer make (``make test`` runs this suite)."""
    outer = ("WAITPOINT_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(outer)}
    env.pop("PYTHONPATH", None)  # the clone's own .venv, nothing of this checkout's
    env.pop("VIRTUAL_ENV", None)
    return env


def _make_dev(clone: Path, port: int, log: Path) -> subprocess.Popen[str]:
    env = _newcomers_environment()
    with log.open("w") as output:  # the child keeps its own copy of the file
        return subprocess.Popen(  # the interpreter this suite runs on: 3.11+, like a user's
            ["make", "dev", f"PORT={port}", f"PYTHON={sys.executable}"],
            cwd=clone,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def _wait_for_health(process: subprocess.Popen[str], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make dev exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /healthz on port {port} after {SERVER_START_S:.0f} s:\n{log.read_text()}")


def _cli(clone: Path, command: str) -> subprocess.CompletedProcess[str]:
    """A README command as the user types it, with the clone's .venv activated."""
    env = _newcomers_environment()
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(clone / ".venv")
    env["COLUMNS"] = "200"
    return subprocess.run(
        shlex.split(command), cwd=clone, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_newcomer_follows_the_readme_from_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "make-dev.log"
    began = time.monotonic()
    server = _make_dev(clone, port, log)
    try:
        _wait_for_health(server, port, log)
        print(f"\nfrom a fresh clone to a running server: {time.monotonic() - began:.1f} s")

        token_id = ""
        for command in _quick_start_commands():
            if "<token id>" in command:
                token_id = token_id or _waiting_token(clone, port)
                command = command.replace("<token id>", token_id)
            done = _cli(clone, command)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr

        # the callback curl, on another order's token: its URL names the port the server is on
        trigger = next(c for c in _quick_start_commands() if c.startswith("waitpoint trigger"))
        another = re.sub(r'"order_id": \d+', '"order_id": 4242', trigger)
        assert another != trigger, trigger  # one order's refund is asked for once
        assert _cli(clone, another).returncode == 0
        second_token = _waiting_token(clone, port)
        [waiting] = [t for t in _waiting_tokens(clone) if t["id"] == second_token]
        curl = shlex.split(_callback_curl().replace("<token url>", waiting["url"]))
        posted = subprocess.run([*curl, "--fail", "--silent", "--show-error"], timeout=30)
        assert posted.returncode == 0
        assert second_token not in {t["id"] for t in _waiting_tokens(clone)}  # completed
        link = _cli(clone, f"waitpoint tokens link {second_token}")
        assert link.returncode == 0, link.stderr
        assert f"http://127.0.0.1:{port}/" in link.stdout, link.stdout

        # a second `make dev` on the same port gives up at once, in one line
        second_log = tmp_path / "second-make-dev.log"
        started = time.monotonic()
        second = _make_dev(clone, port, second_log)
        try:
            second.wait(timeout=10 + 5)  # make's own start is in the 5 s
        except subprocess.TimeoutExpired:
            _stop(second)
            pytest.fail(f"a second make dev on a busy port kept running:\n{second_log.read_text()}")
        took = time.monotonic() - started
        output = second_log.read_text()
        assert second.returncode != 0, output
        assert took < 15, took
        # what waitpoint printed: not make's echo of the recipe, nor its closing "make: ***"
        recipe = f".venv/bin/waitpoint dev --port {port}"
        make = re.compile(r"make(\[\d+\])?: ")
        ours = [line for line in output.splitlines() if line != recipe and not make.match(line)]
        assert ours == [f"error: port {port} is in use: pass --port or stop the other process"], (
            output
        )
    finally:
        _stop(server)

    run_readme_example(tmp_path / "my-project")


def _waiting_tokens(clone: Path) -> list[dict[str, str]]:
    listed = _cli(clone, "waitpoint tokens list --status WAITING --json")
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, str]] = json.loads(listed.stdout)["data"]
    return found


def _waiting_token(clone: Path, port: int) -> str:
    """The token the quick start's run parked on (the README says ``<token id>``)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tokens = _waiting_tokens(clone)
        if tokens:
            assert tokens[0]["url"].startswith(f"http://127.0.0.1:{port}/"), tokens[0]["url"]
            return tokens[0]["id"]
        time.sleep(0.2)
    pytest.fail("the triggered run made no waiting token within 30 s")
