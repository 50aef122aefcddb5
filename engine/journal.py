"""The journal's vocabulary: how a durable call is named, and how a step's error is kept.

Every durable call of a run is journaled under a key made of its kind, its name and how many
calls of that kind and name came before it in the run: ``step:charge#0``, ``create_token#1``,
``wait_for_token:waitpoint_abc#0``, ``trigger:send-email#2``. Keys by name, not by bare
position, so that an ``asyncio.gather`` of differently named steps replays in any order.
The key is built and read here and nowhere else.

A step's error is journaled as JSON (its class, message, stack, ``args`` and JSON attributes)
and rebuilt from it without calling ``__init__`` again, so the task sees the same exception on
its first execution and on every replay.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import json
import os
import re
import traceback
from dataclasses import dataclass
from typing import Any

from .errors import StepFailedError
from .models import RunError


@dataclass(frozen=True)
class CallKey:
    """A durable call's key, read back: ``step:charge#0`` is ``("step", "charge", 0)``."""

    kind: str
    name: str
    occurrence: int

    def __str__(self) -> str:
        base = f"{self.kind}:{self.name}" if self.name else self.kind
        return f"{base}#{self.occurrence}"

    @classmethod
    def parse(cls, key: str) -> CallKey:
        base, _, occurrence = key.rpartition("#")
        kind, _, name = base.partition(":")
        return cls(kind, name, int(occurrence) if occurrence.isdigit() else 0)


def call_base(kind: str, name: str = "") -> str:
    """What calls of one kind and name share: occurrences are counted per base."""
    return f"{kind}:{name}" if name else kind


def child_key(key: str, index: int) -> str:
    """The key under which a batch call (``key``) makes its ``index``-th child and waitpoint."""
    return f"{key}/{index}"


def error_of(exc: BaseException) -> RunError:
    """The JSON-able description of an exception kept on a run or a journaled step."""
    cls = type(exc)
    return RunError(
        name=f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__ != "builtins"
        else cls.__name__,
        message=str(exc),
        stack_trace="".join(traceback.format_exception(exc)),
    )


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def failure_site(stack_trace: str) -> str | None:
    """Where a stack trace failed in the user's code: ``tasks/refund.py:42 in refund``.

    The innermost frame outside the engine, the standard library and installed packages
    (failing that, outside the engine and the standard library: a task installed as a
    package); its path relative to the working directory when it lies below it. None when
    every frame is the engine's or the standard library's.
    """
    frames = [m.groups() for m in _FRAME.finditer(stack_trace) if not m[1].startswith("<")]
    engine_and_stdlib, installed = _library_dirs()
    for skipped in (engine_and_stdlib + installed, engine_and_stdlib):
        for path, line, function in reversed(frames):
            full = os.path.abspath(path)
            if not any(_below(full, folder) for folder in skipped):
                return f"{_shown(full)}:{line} in {function}"
    return None


@functools.cache
def _library_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The engine's and the standard library's folders, and the installed packages'."""
    import sysconfig  # late: only a failing run needs it

    paths = sysconfig.get_paths()
    own = [os.path.dirname(os.path.abspath(__file__))]
    stdlib = [paths[name] for name in ("stdlib", "platstdlib") if name in paths]
    installed = [paths[name] for name in ("purelib", "platlib") if name in paths]
    return tuple(map(os.path.abspath, own + stdlib)), tuple(map(os.path.abspath, installed))


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _shown(path: str) -> str:
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if _below(path, cwd) else path


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A step's error as JSON, with its args and attributes when they are JSON too.

    Both are kept so a replay rebuilds the same exception without calling its ``__init__``
    again (which may take other arguments than it passes on as ``args``).
    """
    value: dict[str, Any] = error_of(exc).model_dump(by_alias=True)
    try:
        value["args"] = json.loads(json.dumps(exc.args))
    except (TypeError, ValueError):
        return value
    attrs: dict[str, Any] = {}
    for name, attr in vars(exc).items():
        try:
            attrs[name] = json.loads(json.dumps(attr))
        except (TypeError, ValueError):
            continue
    value["attrs"] = attrs
    return value


def decode_error(value: Any) -> Exception:
    """The exception a step raised, rebuilt from the journal: same class, args, JSON attributes.

    Attributes that were not JSON are absent. A class that cannot be imported or rebuilt
    comes back as ``StepFailedError`` naming it.
    """
    name = str(value.get("name", "Exception")) if isinstance(value, dict) else "Exception"
    message = str(value.get("message", "")) if isinstance(value, dict) else str(value)
    args = value.get("args") if isinstance(value, dict) else None
    module, _, qualname = name.rpartition(".")
    try:
        owner: Any = importlib.import_module(module) if module else builtins
        cls = owner
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            attrs = value.get("attrs") if isinstance(value, dict) else None
            if isinstance(args, list) and isinstance(attrs, dict):
                return _restored(cls, args, attrs)
            return cls(*args) if isinstance(args, list) else cls(message)
    except Exception:  # cannot import or construct it: fall back to a generic error
        pass
    return StepFailedError(message, name)


def _restored(cls: type[Exception], args: list[Any], attrs: dict[str, Any]) -> Exception:
    """The exception with its journaled args and attributes, ``__init__`` not called again."""
    try:
        exc = cls.__new__(cls, *args)
        exc.args = tuple(args)
    except Exception:  # a ``__new__`` that wants other arguments
        exc = cls(*args)
    exc.__dict__.update(attrs)
    return exc
