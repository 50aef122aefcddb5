"""The engine's own statements, for the micro-benchmarks to time (and vary) outside the engine.

Every storage operation is a generator of ``Sql`` statements (``engine/storage/sql.py``) that
never touches a connection: the steps the operations share are in ``engine/storage/core.py``
(``StorageCore._requeue_blocked``, ``_time_out``, ...), the timers in ``timers.py``, the
tokens in ``tokens.py``. Stepping those generators here with made-up replies gives the very
statements the engine runs, for SQLite (``SQLITE``) or PostgreSQL (``POSTGRES``), without a
database. ``pg`` and ``lite`` turn one into the text and arguments a driver takes, as the
engine's drivers do, with the parameters a benchmark measures with in place of the made-up ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

from engine.storage.records import RowLike
from engine.storage.sql import POSTGRES, SQLITE, Dialect, Op, Sql, numbered, sqlite_params
from engine.storage.timers import Timers

__all__ = [
    "POSTGRES",
    "SQLITE",
    "Sql",
    "lite",
    "pg",
    "pg_names",
    "requeue",
    "time_out_due",
    "vary",
]


class _Core(Timers):
    """A storage with no connection: it only produces statements."""

    def __init__(self, q: Dialect) -> None:
        self.q = q
        self.written: list[Sql] = []

    def now_ms(self) -> int:
        return 0

    async def _read(self, sql: Sql, *, control: bool = False) -> list[RowLike]:
        return [{"due": 1}]  # "something is due": go on to the write

    async def _write(
        self, op: Callable[[int], Op[Any]], *, notify: bool = True, control: bool = False
    ) -> Any:
        self.written = drive(op(0), lambda sql: [] if sql.want == "rows" else 0)
        return 0


def drive(op: Generator[Sql, Any, Any], reply: Callable[[Sql], Any]) -> list[Sql]:
    """Step ``op`` to its end, answering each statement with ``reply(statement)``; the
    statements it yielded, in order."""
    seen: list[Sql] = []
    answer: Any = None
    while True:
        try:
            sql = op.send(answer)
        except StopIteration:
            return seen
        seen.append(sql)
        answer = reply(sql)


def requeue(q: Dialect) -> tuple[Sql | None, Sql]:
    """The re-queue of the runs that closed waitpoints unblock (``_requeue_blocked``): the
    statement locking the runs (PostgreSQL; None on SQLite) and the re-queue UPDATE. Its
    parameters: ``ids`` (the closed waitpoints), ``runs`` (the locked runs), ``now``."""
    found = drive(
        _Core(q)._requeue_blocked(["wait_x"], 0),
        lambda sql: [{"id": "run_x"}] if sql.want == "rows" else 0,
    )
    if len(found) == 2:
        return found[0], found[1]
    if len(found) == 1:
        return None, found[0]
    raise RuntimeError(f"_requeue_blocked yielded {len(found)} statements, not 1 or 2")


def time_out_due(q: Dialect) -> Sql:
    """The statement a worker's timer loop closes a batch of due waitpoints with
    (``Timers._time_out_tokens``), ``RETURNING id``; parameters ``now`` and ``limit``."""
    core = _Core(q)
    coro = core._time_out_tokens(1000)
    try:
        coro.send(None)  # nothing in _Core suspends: it runs to its end at once
    except StopIteration:
        pass
    else:  # pragma: no cover
        coro.close()
        raise RuntimeError("_time_out_tokens suspended")
    if not core.written:
        raise RuntimeError("_time_out_tokens wrote nothing")
    return core.written[0]


def vary(sql: Sql, old: str, new: str) -> Sql | None:
    """``sql`` with ``old`` in its text replaced by ``new``; None when ``old`` is not in it."""
    if old not in sql.text:
        return None
    return dataclasses.replace(sql, text=sql.text.replace(old, new))


def pg(sql: Sql, **params: Any) -> tuple[str, list[Any]]:
    """The text (``$n`` parameters) and positional arguments for asyncpg; ``params`` replace
    the statement's own."""
    text, names = numbered(sql.text)
    values = {**sql.params, **params}
    return text, [list(v) if isinstance(v := values[n], tuple) else v for n in names]


def pg_names(sql: Sql) -> tuple[str, ...]:
    """The parameter names in ``$n`` order."""
    return numbered(sql.text)[1]


def lite(sql: Sql, **params: Any) -> tuple[str, dict[str, Any]]:
    """The text and named parameters for sqlite3 (lists as JSON text); ``params`` replace the
    statement's own."""
    return sql.text, sqlite_params({**sql.params, **params})
