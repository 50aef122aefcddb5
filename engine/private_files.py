"""Files that hold secrets or data, created readable by their owner only, whatever the umask.

The SQLite database (and the ``-wal``/``-shm`` files SQLite makes with its mode) holds
payloads, outputs and completion data; ``.waitpoint/secret_key`` holds the key that opens the
API. Both are made ``0600`` in folders made ``0700``: a permissive umask (``0o022`` is common,
``0o000`` happens in containers) must not make them readable by other users of the machine.
Files and folders that already exist are left as they are: they may be shared on purpose.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents as 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first
            continue
        os.chmod(path, 0o700)  # mkdir's mode went through the umask


def private_file(path: Path) -> bool:
    """Create an empty ``path`` as 0600 unless it exists; True if this call made it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # os.open's mode went through the umask
    finally:
        os.close(fd)
    return True


def write_once(path: Path, text: str) -> tuple[str, bool]:
    """Write ``text`` to a new ``path`` (0600, in 0700 folders made as needed), unless another
    process wrote it first: returns the file's text and whether this call wrote it.

    The text goes to a scratch file that is then linked into place, so nobody ever reads a
    half-written file, and of two processes racing exactly one wins.
    """
    private_dirs(path.parent)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(scratch, path)
        written = True
    except FileExistsError:
        written = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    return (text, True) if written else (path.read_text(), False)


def refusal(action: str, path: Path, exc: OSError) -> str:
    """One line for a file the engine could not make, read or open: ``cannot {action}
    {absolute path}: {reason}``, where the reason is the system's (``Read-only file system``,
    ``Permission denied``, ``No space left on device``), or names the file that stands where
    a folder on the way should be."""
    return f"cannot {action} {path.absolute()}: {_reason(path, exc)}"


def _reason(path: Path, exc: OSError) -> str:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return exc.strerror or str(exc)


def folder_problem(folder: Path) -> str | None:
    """Why no file can be made in ``folder`` (the system's words), or None when one can.

    Tried, not inferred from mode bits, which say nothing about a read-only mount and which
    root ignores."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return _reason(folder / "x", exc)


__all__ = ["folder_problem", "private_dirs", "private_file", "refusal", "write_once"]
