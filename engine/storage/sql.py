"""Statements written once for both databases, and the small dialect where they differ.

Every storage operation is a *sans-I/O generator* (the style of h11 and wsproto): it yields
``Sql`` statements and receives what each returned, and never touches a connection itself.
Two drivers run it: a synchronous one on SQLite's writer thread (``drive_sync``, inside the
group-commit transaction) and an asynchronous one on an asyncpg connection (``drive_async``).
So the logic of an operation (what it reads, what it decides, what it writes, which error it
raises) exists once, and each ``yield`` is one round trip on PostgreSQL, visible in the code.

Statement text uses ``:name`` parameters. A list value is an array: SQLite receives it as JSON
text for ``json_each``, PostgreSQL as an array. The ``Dialect`` supplies the few fragments
the two databases spell differently (``q.in_("ids")``, ``q.for_update``, ...), so a
statement reads the same for both where the SQL is the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any, Literal, TypeAlias, TypeVar

from ..errors import StorageError
from ..models import RunStatus
from .records import RowLike

T = TypeVar("T")

Want = Literal["rows", "count", "many"]


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement: its text, its named parameters, and what the operation wants back
    (``rows``: the rows; ``count``: how many rows it changed; ``many``: nothing, run once per
    parameter set in ``batch``)."""

    text: str
    params: Mapping[str, Any]
    want: Want = "rows"
    batch: Sequence[Mapping[str, Any]] = ()
    alone: bool = False
    """The operation's only statement (``alone``): PostgreSQL runs it as its own
    transaction, without the two round trips of ``BEGIN`` and ``COMMIT``."""


def rows(text: str, **params: Any) -> Sql:
    """A statement whose rows the operation reads (a SELECT, or a write with RETURNING)."""
    return Sql(text, params)


def count(text: str, **params: Any) -> Sql:
    """A write whose affected-row count the operation reads."""
    return Sql(text, params, "count")


def many(text: str, batch: Sequence[Mapping[str, Any]]) -> Sql:
    """One statement run once per parameter set."""
    return Sql(text, {}, "many", batch)


def combined(parts: Mapping[str, Sql], then: str, want: Want = "rows", **more: Any) -> Sql:
    """Several statements as one (PostgreSQL's writable ``WITH``; ``writes_in_with``): each
    part a named ``WITH`` item, ``then`` the statement after them. All parts see the database
    as it was when the statement began (not each other's writes), so only statements that do
    not read what another part writes may be combined. Their parameters must agree
    (``more``: parameters of ``then``, or of several parts)."""
    params: dict[str, Any] = {}
    for sql in [*parts.values(), Sql(then, more)]:
        for name, value in sql.params.items():
            if name in params and params[name] != value:
                raise ValueError(f"combined statements give :{name} two values")
            params[name] = value
    items = ", ".join(f"{name} AS ({sql.text})" for name, sql in parts.items())
    return Sql(f"WITH {items} {then}", params, want)


def alone(sql: Sql) -> Sql:
    """``sql`` is the whole operation: it is the first statement the operation yields and
    the last (a driver refuses an operation that goes on after it)."""
    return replace(sql, alone=True)


Op: TypeAlias = Generator[Sql, Any, T]
"""An operation: yields statements, receives each one's rows (or count), returns its result."""

FINAL = "(" + ", ".join(f"'{s.value}'" for s in RunStatus if s.is_terminal) + ")"
"""The terminal run statuses as an SQL list, from ``RunStatus``."""


@dataclass(frozen=True)
class Dialect:
    """What SQLite and PostgreSQL spell differently; everything else is written once."""

    name: str
    row_locks: bool
    """PostgreSQL: concurrent writers, so operations lock the rows they decide on. SQLite
    has one writer at a time (``BEGIN IMMEDIATE``): there is nothing to lock."""
    has_seq: bool
    """SQLite orders journal entries and events with a per-process counter (``seq``);
    PostgreSQL numbers them with a sequence."""
    remote: bool
    """PostgreSQL: every read is a round trip to a server, worth a cache; SQLite reads a
    local file."""
    writes_in_with: bool
    """PostgreSQL: a statement may write to several tables (``WITH ... AS (INSERT ...)``),
    one round trip where SQLite takes several statements."""
    server_functions: bool
    """PostgreSQL: an operation whose statements must each see what committed before it
    began (lock, then look) runs them in a function on the server (``ServerFunction``), one
    round trip; SQLite runs the same statements one by one, in-process."""

    def in_(self, param: str) -> str:
        """``<column> {q.in_("ids")}``: membership in a list parameter."""
        if self.name == "postgres":
            return f"= ANY(:{param}::text[])"
        return f"IN (SELECT value FROM json_each(:{param}))"

    def indexed_by(self, table: str, index: str) -> str:
        """``table``, read through ``index`` on SQLite: with no statistics its planner takes
        ``runs_status (status, id)`` for ``status = ... AND <column> < :now`` and walks every
        row of that status (every queued run, on each timer turn) where the partial index on
        the column finds the due ones at once. ``INDEXED BY`` fails the statement if the
        index cannot serve it, so a change that breaks this fails loudly. PostgreSQL's
        planner has statistics."""
        return f"{table} INDEXED BY {index}" if self.name == "sqlite" else table

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.row_locks else ""

    @property
    def for_share(self) -> str:
        return " FOR SHARE" if self.row_locks else ""

    def skip_locked(self, of: str = "") -> str:
        """Rows other claimers hold are passed over (``FOR UPDATE [OF t] SKIP LOCKED``)."""
        if not self.row_locks:
            return ""
        return f" FOR UPDATE{f' OF {of}' if of else ''} SKIP LOCKED"

    def locking(self, update: str, share: str) -> str:
        """Lock the rows of one table for update and of another for share, in one SELECT."""
        return f" FOR UPDATE OF {update} FOR SHARE OF {share}" if self.row_locks else ""

    def greatest(self, a: str, b: str) -> str:
        return f"greatest({a}, {b})" if self.name == "postgres" else f"max({a}, {b})"

    def json_object(self, *pairs: str) -> str:
        """A JSON object built in SQL, as text (the JSON columns are text on both)."""
        args = ", ".join(pairs)
        if self.name == "postgres":
            return f"json_build_object({args})::text"
        return f"json_object({args})"

    def as_json(self, column: str) -> str:
        """A JSON text column as a JSON value inside ``json_object``."""
        return f"{column}::json" if self.name == "postgres" else f"json({column})"

    def jsonb(self, param: str) -> str:
        """A parameter holding JSON text, for the ``tags`` columns (jsonb on PostgreSQL)."""
        return f"CAST(:{param} AS jsonb)" if self.name == "postgres" else f":{param}"

    def tags_overlap(self, param: str) -> str:
        """The row's ``tags`` share one with the list parameter."""
        if self.name == "postgres":
            return f"tags ?| :{param}::text[]"
        return (
            "EXISTS (SELECT 1 FROM json_each(tags) t"
            f" WHERE t.value IN (SELECT value FROM json_each(:{param})))"
        )

    def iso_time(self, ms: str) -> str:
        """Milliseconds since the epoch as ``2026-01-02T03:04:05.678Z``."""
        if self.name == "postgres":
            return (
                f"to_char(to_timestamp({ms} / 1000.0) AT TIME ZONE 'UTC',"
                ' \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
            )
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')"

    def not_in_pairs(self, queues: str, keys: str, queue: str, key: str) -> str:
        """``(queue, key)`` is none of the pairs given as two parallel list parameters (a
        key may be NULL, and then matches NULL)."""
        if self.name == "postgres":
            return (
                f"NOT EXISTS (SELECT 1 FROM unnest(:{queues}::text[], :{keys}::text[]) AS f(q, k)"
                f" WHERE f.q = {queue} AND f.k IS NOT DISTINCT FROM {key})"
            )
        return (
            f"NOT EXISTS (SELECT 1 FROM json_each(:{queues}) fq JOIN json_each(:{keys}) fk"
            f" ON fk.key = fq.key WHERE fq.value = {queue} AND fk.value IS {key})"
        )

    def custom_plans(self) -> Op[None]:
        """Statements that make the rest of the transaction plan each statement for its
        values (PostgreSQL: a generic plan of the re-queue of 10,000 tokens timed out at once
        is quadratic in them, 3.2 s instead of 0.4 s; for one token, planning every time
        costs a third more of the server's CPU per run, so only the timers ask)."""
        if self.name == "postgres":
            yield Sql("SET LOCAL plan_cache_mode = force_custom_plan", {})

    def is_true(self, column: str) -> str:
        """A boolean column is true, in the words of the partial indexes on it (SQLite's
        planner takes a partial index only for the very term of its ``WHERE``: ``= 1``)."""
        return column if self.name == "postgres" else f"{column} = 1"

    def unindexed(self, column: str) -> str:
        """``column`` in a form SQLite's planner uses no index for (a unary ``+``): where the
        rows are found by id, an index on a column of few values would scan instead."""
        return column if self.name == "postgres" else f"+{column}"

    @property
    def journal_order(self) -> str:
        """The order entries were journaled in (processes sharing a SQLite file each count
        their own ``seq``; the time orders them)."""
        return "seq" if self.name == "postgres" else "created_at, seq"


SQLITE = Dialect(
    "sqlite",
    row_locks=False,
    has_seq=True,
    remote=False,
    writes_in_with=False,
    server_functions=False,
)
POSTGRES = Dialect(
    "postgres",
    row_locks=True,
    has_seq=False,
    remote=True,
    writes_in_with=True,
    server_functions=True,
)


SCHEMA = "{schema}"
"""Where a ``ServerFunction``'s text names the engine's schema (its types, say); its tables
are qualified as every statement's are (``numbered``)."""


@dataclass(frozen=True)
class ServerFunction:
    """A PL/pgSQL function made of an operation's statements (``:name`` parameters become
    its arguments ``p_name``), created in the engine's schema when the storage opens.

    Its name carries a hash of its text, so a changed definition is a new function: engines
    of two versions on one database each call their own, and none needs a migration."""

    base: str
    params: tuple[tuple[str, str], ...]
    """The arguments in order: (parameter name, PostgreSQL type)."""
    returns: str
    body: str
    """``DECLARE ... BEGIN ... END``; ``SCHEMA`` where a type must name the schema."""

    @cached_property
    def name(self) -> str:
        """``waitpoint_<base>_<hash>``: computed once (every call of the function names it)."""
        text = repr((self.params, self.returns, self.body)).encode()
        return f"{FUNCTION_PREFIX}{self.base}_{hashlib.sha256(text).hexdigest()[:12]}"

    def create(self, schema: str) -> str:
        """The ``CREATE OR REPLACE FUNCTION`` statement, for ``schema``."""
        args = ", ".join(f"p_{name} {kind}" for name, kind in self.params)
        body = _TOKEN.sub(lambda m: f"p_{m.group(1)}" if m.group(1) else m.group(0), self.body)
        body = _in_schema(body, schema)
        quoted = f'"{schema}"'
        returns = self.returns.replace(SCHEMA, quoted)
        body = body.replace(SCHEMA, quoted)
        return (
            f"CREATE OR REPLACE FUNCTION {quoted}.{self.name}({args}) RETURNS {returns}"
            f" LANGUAGE plpgsql VOLATILE AS $function${body}$function$"
        )


# -- SQLite -------------------------------------------------------------------------------


_SEQUENCES = (list, tuple)  # a tuple of types: ``list | tuple`` would be built at every call


def sqlite_statement(sql: Sql) -> tuple[str, Mapping[str, Any]]:
    """``sql``'s text and parameters for sqlite3: a list as JSON text for ``json_each``, but a
    list of one value in ``q.in_`` as that value (``= :ids``): most lists hold one id, and
    neither the JSON nor ``json_each`` is then worth its cost."""
    params = sql.params
    lists = [k for k, v in params.items() if isinstance(v, _SEQUENCES)]
    if not lists:
        return sql.text, params
    singles = tuple(k for k in lists if len(params[k]) == 1)
    text, scalars = _singles(sql.text, singles) if singles else (sql.text, frozenset[str]())
    return text, sqlite_params({k: v[0] if k in scalars else v for k, v in params.items()})


@lru_cache(maxsize=4096)
def _singles(text: str, names: tuple[str, ...]) -> tuple[str, frozenset[str]]:
    """``text`` with ``IN (SELECT value FROM json_each(:name))`` as ``= :name`` for these
    names, where that is their only use; and the names so changed."""
    changed = set()
    for name in names:
        pattern = f" IN (SELECT value FROM json_each(:{name}))"
        if text.count(pattern) and text.count(pattern) == len(re.findall(f":{name}\\b", text)):
            text = text.replace(pattern, f" = :{name}")
            changed.add(name)
    return text, frozenset(changed)


def sqlite_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for sqlite3: a list as JSON text (``json_each``)."""
    return {k: json.dumps(list(v)) if isinstance(v, _SEQUENCES) else v for k, v in params.items()}


def drive_sync(conn: sqlite3.Connection, op: Op[T]) -> T:
    """Run ``op`` on a SQLite connection (the writer's, inside its transaction)."""
    reply: Any = None
    previous: Sql | None = None
    while True:
        try:
            sql = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if previous is not None:
            _check_alone(previous, sql)
        previous = sql
        reply = execute_sync(conn, sql)


def _check_alone(previous: Sql, sql: Sql) -> None:
    """``sql`` follows ``previous``: neither may be ``alone`` (a programming error, which
    the tests catch on either database)."""
    if previous.alone or sql.alone:
        raise StorageError(f"a statement marked alone is not the operation's only one: {sql.text}")


def execute_sync(conn: sqlite3.Connection, sql: Sql) -> Any:
    if sql.want == "many":
        conn.executemany(sql.text, [sqlite_params(p) for p in sql.batch])
        return None
    cursor = conn.execute(*sqlite_statement(sql))
    if sql.want == "count":
        return cursor.rowcount
    return cursor.fetchall()


# -- PostgreSQL ---------------------------------------------------------------------------

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|:([A-Za-z_]\w*)")


TABLES = (
    "approval_approvers",
    "approval_notices",
    "approval_votes",
    "approvals",
    "journal",
    "late_completions",
    "meta",
    "migrations",
    "rate_buckets",
    "request_replies",
    "run_events",
    "run_messages",
    "run_waits",
    "runs",
    "schedules",
    "spent_credentials",
    "tasks",
    "waitpoints",
    "workers",
)
_TABLE = re.compile(r"\b(FROM|JOIN|INTO|UPDATE)\s+(" + "|".join(TABLES) + r")\b(?![.(])")
FUNCTION_PREFIX = "waitpoint_"
_FUNCTION = re.compile(r"\bFROM\s+(" + FUNCTION_PREFIX + r"\w+)\(")


def _in_schema(text: str, schema: str) -> str:
    """``text`` with the engine's tables named in ``schema`` (``FROM "schema".runs``)."""
    return _TABLE.sub(lambda m: f'{m.group(1)} "{schema}".{m.group(2)}', text)


@lru_cache(maxsize=2048)
def numbered(text: str, schema: str | None = None) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters as ``$1, $2, ...`` (a repeated name reuses its number), and the
    names in number order. Quoted text and ``::`` casts are left alone. With ``schema``, the
    engine's tables are named in it (``FROM "schema".runs``): no connection depends on a
    ``search_path``, which a pooler in transaction mode would not keep (PgBouncer)."""
    if schema is not None:
        text = _in_schema(text, schema)
        text = _FUNCTION.sub(lambda m: f'FROM "{schema}".{m.group(1)}(', text)
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _TOKEN.sub(number, text), tuple(names)


def _pg_args(names: tuple[str, ...], params: Mapping[str, Any]) -> list[Any]:
    return [list(v) if isinstance(v := params[n], tuple) else v for n in names]


def first_statement(op: Op[T]) -> Sql | T:
    """Start ``op``: its first statement, or its result if it has none."""
    try:
        return next(op)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def drive_async(conn: Any, op: Op[T], first: Sql, schema: str | None = None) -> T:
    """Run ``op``, started with ``first_statement`` (which gave ``first``), on an asyncpg
    connection: inside the caller's transaction, or as its own if ``first`` is ``alone``."""
    sql = first
    while True:
        reply = await execute_async(conn, sql, schema)
        try:
            following = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        _check_alone(sql, following)
        sql = following


async def execute_async(conn: Any, sql: Sql, schema: str | None = None) -> Any:
    text, names = numbered(sql.text, schema)
    if sql.want == "many":
        await conn.executemany(text, [_pg_args(names, p) for p in sql.batch])
        return None
    args = _pg_args(names, sql.params)
    if sql.want == "count":
        status: str = await conn.execute(text, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    result: list[RowLike] = await conn.fetch(text, *args)
    return result
