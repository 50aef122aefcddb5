"""Secrets at rest: what the engine leaves on disk and in the database.

The SQLite files and ``.waitpoint/`` are private to their owner whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine
from engine.api.auth import resolve_secret_key
from engine.settings import Settings


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Files made inside are made under ``mask`` (by every thread of this process)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_the_sqlite_files_and_their_new_folders_are_private_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    database = tmp_path / "made" / "here" / "engine.db"
    before = mode(tmp_path)
    with umask(mask):
        async with Engine(f"sqlite:///{database}") as engine:
            await engine.tokens.create()  # a write: the -wal and -shm files exist now
            files = {p.name: mode(p) for p in database.parent.iterdir()}
    assert files == {"engine.db": 0o600, "engine.db-wal": 0o600, "engine.db-shm": 0o600}
    assert mode(tmp_path / "made") == 0o700 and mode(tmp_path / "made" / "here") == 0o700
    assert mode(tmp_path) == before  # a folder that existed is left as it was


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_the_generated_key_file_and_its_folder_are_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask: int
) -> None:
    monkeypatch.chdir(tmp_path)
    with umask(mask):
        key, created = resolve_secret_key(Settings(secret_key=None))
    assert created and len(key) >= 32
    assert mode(tmp_path / ".waitpoint") == 0o700
    assert mode(tmp_path / ".waitpoint" / "secret_key") == 0o600
    assert resolve_secret_key(Settings(secret_key=None)) == (key, False)
    assert os.listdir(tmp_path / ".waitpoint") == ["secret_key"]  # no scratch file left


def test_processes_racing_to_generate_the_key_all_get_the_same_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def resolve() -> None:
        start.wait()
        results.append(resolve_secret_key(Settings(secret_key=None)))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({key for key, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
