"""PostgreSQL storage, for workers and API processes on several machines sharing one database.

``postgresql://user@host:5432/db?schema=name`` selects it (the tables live in their own schema,
``waitpoint`` by default; other query parameters go to the server as settings). Migrations are
applied on open under an advisory lock, so processes starting at once are safe. The operations
live in ``runs``, ``tokens`` and ``waits``, written once for both databases; this module opens,
migrates, listens and closes, and runs each operation (``sql.drive_async``) in one READ
COMMITTED transaction on a pooled connection, where ``now`` is the database's clock read at
the start of the transaction: leases and timers never depend on the clocks of the machines the
workers run on. A transaction that deadlocks or loses an idempotency-key race is retried from
the start. Committed writes that may have made work send one ``NOTIFY`` per transaction;
listeners treat it as a hint (callers poll too).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..clock import Clock
from ..errors import ConfigurationError, EngineError, StorageError, StorageUnavailableError
from ..faults import crash_point
from ..keys import SigningSecrets, legacy_signature_hash
from ..logs import get_logger

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ConfigurationError(
        "PostgreSQL support needs the asyncpg driver: pip install 'waitpoint[postgres]'"
    ) from exc

from .approvals import Approvals
from .group_waits import GroupWaits
from .postgres_schema import MIGRATIONS
from .records import RowLike
from .repairs import Repairs
from .retention import Retention
from .schedules import Schedules
from .signing import SIGNING_CHECK, log_outcome, settle
from .sql import POSTGRES, Op, ServerFunction, Sql, drive_async, execute_async, first_statement
from .stats import Stats
from .timers import Timers
from .tokens import Tokens
from .urls import display_url

T = TypeVar("T")

log = get_logger("engine.storage")

NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,  # two first-time creations with one key: one wins
)
_MAX_TRIES = 8
# the server cannot take us right now: nothing was done, so trying again (for a while) is safe
_UNREACHABLE = (
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    OSError,
)
_UNREACHABLE_SECONDS = 15.0


def translate(exc: BaseException) -> Exception:
    """Driver errors become ``StorageError``; the engine's own errors pass through."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, (*_UNREACHABLE, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
        return StorageUnavailableError(f"PostgreSQL unavailable: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"PostgreSQL error: {exc}")
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words: the server's message, or the system's for a
    connection that never reached one (``Connection refused``, not ``[Errno 111] Connect
    call failed ('127.0.0.1', 1)``)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc)


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
_LISTENER_PROBE_SECONDS = 5.0  # how often the listener checks its connection and the clock
_CLOCK_SECONDS = 10.0  # how old a measure of the database's clock a transaction may use
_CLOCK_DRIFT = 0.001  # how fast a kept reading of that clock is taken to go off (s per s)
_POOL_SIZE = 10
_IDLE_IN_TRANSACTION = "10s"
"""How long the server keeps a transaction of this engine open with no statement coming: a
worker cut off from the database in the middle of one (between its ``BEGIN`` and ``COMMIT``)
would otherwise keep the rows it locked until the server's TCP keepalive gave up on it (two
hours by default), and every rescue of an expired lease would wait behind those locks. No
engine transaction waits for anything but the database between its statements."""


def postgres_dsn(url: str) -> tuple[str, str]:
    """Split our URL into the driver's DSN and the schema (``?schema=``, default waitpoint)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else "waitpoint"
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"schema {schema!r} in the database URL must be letters, digits and _ (at most 41)"
        )
    ours = {"schema", "pgbouncer"}
    rest = urlencode([(key, value) for key, value in query if key not in ours])
    return urlunsplit(parts._replace(query=rest)), schema


def behind_pgbouncer(url: str) -> bool:
    """``?pgbouncer=true``: the URL leads to PgBouncer in transaction mode (or another pooler
    that hands a server connection to a client for one transaction only). The engine then
    prepares no named statement (the next transaction may meet another server connection)
    and sets nothing at connection start that PgBouncer refuses; LISTEN goes to
    ``listen_url``, past the pooler."""
    values = [v for k, v in parse_qsl(urlsplit(url).query) if k == "pgbouncer"]
    if not values:
        return False
    value = values[-1].lower()
    if value not in {"true", "false", "1", "0"}:
        raise ConfigurationError(f"pgbouncer={values[-1]!r} in the database URL: true or false")
    return value in {"true", "1"}


class PostgresStorage(Repairs, Tokens, GroupWaits, Approvals, Timers, Retention, Schedules, Stats):
    """The backend for many workers on many machines."""

    q = POSTGRES
    _pool: asyncpg.Pool[asyncpg.Record] | None
    _control: asyncpg.Pool[asyncpg.Record] | None
    """A small pool of its own for claims, leases and timers: they never queue behind the
    writes of a hundred running attempts (a renewal that waits too long loses the lease)."""

    def __init__(
        self,
        url: str,
        *,
        signing_secret: str,
        previous_signing_secret: str | None = None,
        clock: Clock | None = None,
        pool_size: int = _POOL_SIZE,
        listen_url: str | None = None,
    ) -> None:
        self._dsn, self.schema = postgres_dsn(url)
        self._pgbouncer = behind_pgbouncer(url)
        self._listen_dsn = postgres_dsn(listen_url)[0] if listen_url else self._dsn
        # PgBouncer (transaction mode): no named prepared statements, no startup settings
        # but the ones it tracks
        self._connect: dict[str, Any] = {"statement_cache_size": 0} if self._pgbouncer else {}
        self._signing = SigningSecrets(signing_secret, previous_signing_secret)
        self.signing_key_matches = True
        self._pool_size = pool_size
        self.clock = clock
        self._pool = None
        self._control = None
        self._channel = f"waitpoint_{self.schema}"
        self._init_waiters()
        self._listener: asyncio.Task[None] | None = None
        self._changes_wanted = False
        """Something here reads status changes: the listener takes their channel too."""
        self._listener_woken = asyncio.Event()
        self._db_ms_measured = 0
        self._clock_measured = -math.inf  # when the kept reading was taken (monotonic)
        self._clock_error = math.inf  # how far off the kept reading may be, in seconds
        self._clock_checked = -math.inf  # when the clock was last read, kept or not
        self.commits = 0

    async def open(self) -> None:
        # no search_path: statements name the schema of their tables (sql.numbered), which a
        # pooler cannot lose; the plans of prepared statements are PostgreSQL's choice (the
        # timers, which need custom plans, ask for them: Dialect.custom_plans)
        settings = {"application_name": "waitpoint"}
        named = {key for key, _ in parse_qsl(urlsplit(self._dsn).query)}
        if not self._pgbouncer and "idle_in_transaction_session_timeout" not in named:
            # (behind PgBouncer: its own idle_transaction_timeout, a startup setting it refuses)
            settings["idle_in_transaction_session_timeout"] = _IDLE_IN_TRANSACTION
        try:
            await self._migrate()
            # nothing to reset when a connection goes back to its pool: the engine leaves no
            # session state on one (no LISTEN, no session advisory lock, no SET, no cursor;
            # tests/test_postgres_backend.py checks), and asyncpg's reset was a round trip
            # after every transaction
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                server_settings=settings,
                reset=_nothing_to_reset,
                **self._connect,
            )
            self._control = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=2,
                server_settings=settings,
                reset=_nothing_to_reset,
                **self._connect,
            )
            await self._measure_clock()
            await self._settle_signing_check()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            await self.close()
            kind = (
                StorageUnavailableError
                if isinstance(translate(exc), StorageUnavailableError)
                else StorageError
            )
            where = display_url(self._dsn)
            raise kind(f"cannot open PostgreSQL database {where}: {_reason(exc)}") from exc

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for pool in (self._pool, self._control):
            if pool is not None:
                await pool.close()
        self._pool = self._control = None

    async def migrate(self) -> int:
        """Apply pending migrations (``open`` does this too); returns the schema version."""
        return await self._migrate()

    async def _migrate(self) -> int:
        """Create the schema and apply pending migrations, one process at a time."""
        conn = await asyncpg.connect(self._dsn, **self._connect)
        functions = [self.close_token_function]
        try:
            current = await self._schema_version(conn)
            missing = await self._missing_functions(conn, functions)
            if current >= len(MIGRATIONS) and not missing:  # the usual start: nothing to do
                return current
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('waitpoint-migrate:' || $1))",
                    self.schema,
                )
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(f'SET LOCAL search_path = "{self.schema}"')
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS migrations"
                    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                version = int(
                    await conn.fetchval("SELECT coalesce(max(version), 0) FROM migrations")
                )
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    await conn.execute(script)
                    if number == 4:
                        await _forget_signing_secret(conn)
                    await conn.execute("INSERT INTO migrations (version) VALUES ($1)", number)
                    log.info("storage.migrated", schema=self.schema, version=number)
                for function in functions:  # this engine's: made here once per definition
                    await conn.execute(function.create(self.schema))
                return max(version, len(MIGRATIONS))
        finally:
            await conn.close()

    async def _settle_signing_check(self) -> None:
        """Record which key signs this database's URLs (``signing.settle``);
        ``signing_key_matches`` is False when this process signs with another one."""
        async with self._require_pool().acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('waitpoint-signing-check:' || $1))",
                self.schema,
            )
            meta = f'"{self.schema}".meta'
            stored = await conn.fetchval(f"SELECT value FROM {meta} WHERE key = $1", SIGNING_CHECK)
            outcome, value = settle(stored, self._signing)
            if value is not None:
                await conn.execute(
                    f"INSERT INTO {meta} (key, value) VALUES ($1, $2)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    SIGNING_CHECK,
                    value,
                )
        log_outcome(outcome, schema=self.schema)
        self.signing_key_matches = outcome != "mismatch"

    async def _missing_functions(
        self, conn: asyncpg.Connection, functions: list[ServerFunction]
    ) -> list[str]:
        """The names of ``functions`` (``ServerFunction``) not yet in the schema."""
        names = [f.name for f in functions]
        found = await conn.fetch(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proname = ANY($2::text[])",
            self.schema,
            names,
        )
        return sorted(set(names) - {row["proname"] for row in found})

    async def _schema_version(self, conn: asyncpg.Connection) -> int:
        """How far migrations got (0 for a schema that does not exist yet)."""
        exists = await conn.fetchval(
            "SELECT to_regclass(quote_ident($1) || '.migrations') IS NOT NULL", self.schema
        )
        if not exists:
            return 0
        value = await conn.fetchval(
            f'SELECT coalesce(max(version), 0) FROM "{self.schema}".migrations'
        )
        return int(value)

    async def _measure_clock(self, conn: asyncpg.Connection | None = None) -> None:
        """Read the database's clock: ``now_ms`` counts on from it by this process's
        monotonic clock, which no change of this machine's wall clock moves.

        A reading is placed at the middle of its round trip, so it may be off by half the
        round trip. Over a slow link (a request held up for seconds, a lost packet sent again)
        that is seconds, and a ``now_ms`` that far ahead fires timers early (the partition
        harness caught it). So a new reading replaces the one kept only when it may be off by
        no more than the kept one, whose bound grows with its age by ``_CLOCK_DRIFT``.
        """
        before = time.monotonic()
        if conn is not None:
            db_now = await conn.fetchval(f"SELECT {NOW_MS}")
        else:
            db_now = await self._require_pool().fetchval(f"SELECT {NOW_MS}")
        after = time.monotonic()
        self._clock_checked = after
        error = (after - before) / 2
        if error <= self._clock_error + (after - self._clock_measured) * _CLOCK_DRIFT:
            self._clock_measured = (before + after) / 2
            self._clock_error = error
            self._db_ms_measured = int(db_now)

    def now_ms(self) -> int:
        """The database's clock: its last reading plus the time this process counted since."""
        if self.clock is not None:
            return self.clock.now_ms()
        return self._db_ms_measured + int((time.monotonic() - self._clock_measured) * 1000)

    def _require_pool(self, control: bool = False) -> asyncpg.Pool[asyncpg.Record]:
        pool = self._control if control else self._pool
        if pool is None:
            raise ConfigurationError("the storage is not open")
        return pool

    async def _transact(
        self, op: Callable[[int], Op[T]], *, notify: bool = True, control: bool = False
    ) -> T:
        """Run ``op`` in its own transaction; a cancelled caller does not abandon it half-way."""
        return await asyncio.shield(self._transaction(op, notify, control))

    async def _transaction(self, op: Callable[[int], Op[T]], notify: bool, control: bool) -> T:
        pool = self._require_pool(control)
        delay = 0.002
        tries = 0
        unreachable_since: float | None = None
        while True:
            tries += 1
            began = False
            try:
                async with pool.acquire() as conn:
                    now = await self._transaction_now(conn)
                    operation = op(now)
                    first = first_statement(operation)
                    if not isinstance(first, Sql):
                        result = first  # an operation that found nothing to do
                    elif first.alone:  # one statement: its own transaction
                        began = True
                        crash_point("commit.before")
                        result = await drive_async(conn, operation, first, self.schema)
                    else:
                        async with conn.transaction():
                            began = True
                            result = await drive_async(conn, operation, first, self.schema)
                            crash_point("commit.before")
            except _RETRYABLE as exc:
                if tries == _MAX_TRIES:
                    raise StorageError(f"PostgreSQL error after {tries} tries: {exc}") from exc
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.1)
                continue
            except _UNREACHABLE as exc:
                moment = time.monotonic()
                unreachable_since = unreachable_since or moment
                if began or moment - unreachable_since > _UNREACHABLE_SECONDS:
                    raise translate(exc) from exc
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
                continue
            except EngineError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise translate(exc) from exc
            crash_point("commit.after")
            self.commits += 1
            if notify:
                self._committed()
            return result

    def _committed(self) -> None:
        """After a commit that may have made work: this process's readers look again at
        once. The rows it changed told every listener what they changed (migration 6); while
        nobody here listens, this process's own claim and timer loops are woken too."""
        if self._following:
            self._changed()
        else:
            self._notify()

    async def _transaction_now(self, conn: Any) -> int:
        """The database's clock for this transaction, read at most ``_CLOCK_SECONDS`` ago (read
        again here when it is older: one round trip now and then instead of one per
        transaction)."""
        if self.clock is None and time.monotonic() - self._clock_checked > _CLOCK_SECONDS:
            await self._measure_clock(conn)
        return self.now_ms()

    async def _read(self, sql: Sql, *, control: bool = False) -> list[RowLike]:
        try:
            async with self._require_pool(control).acquire() as conn:
                found: list[RowLike] = await execute_async(conn, sql, self.schema)
                return found
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise translate(exc) from exc

    def _watch_other_processes(self) -> None:
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="waitpoint-pg-listen")

    def _watch_changes(self) -> None:
        if not self._changes_wanted:
            self._changes_wanted = True
            self._listener_woken.set()
        self._watch_other_processes()

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnect with back-off whenever it is lost."""
        delay = 0.05
        while True:
            try:
                await self._listen_until_lost()
                delay = 0.05
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("storage.listener_failed", channel=self._channel, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _listen_until_lost(self) -> None:
        # named, so that an operator (or a test) can find the listeners of one schema
        name = {"application_name": f"waitpoint-listen:{self.schema}"}
        conn = await asyncpg.connect(self._listen_dsn, server_settings=name, **self._connect)
        try:
            lost = False

            def on_lost(_conn: object) -> None:
                nonlocal lost
                lost = True
                self._listener_woken.set()

            conn.add_termination_listener(on_lost)
            await conn.add_listener(self._channel, self._notified)
            changes = False  # listening on the channel of status changes
            self._following = True
            self._forget_task_registry()  # registered while nobody here was listening
            self._notify()  # whatever was committed while nobody here was listening
            while not lost:
                self._listener_woken.clear()
                if self._changes_wanted and not changes:
                    await conn.add_listener(self._changes, self._notified)
                    changes = True
                    self._changed()  # what changed before: its readers look again
                    self._run_changed(None)
                try:
                    await asyncio.wait_for(self._listener_woken.wait(), _LISTENER_PROBE_SECONDS)
                except TimeoutError:  # a silent network drop shows up here
                    await self._measure_clock(conn)
            log.warning("storage.listener_lost", channel=self._channel)
        finally:
            self._following = False
            if not conn.is_closed():
                conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        """A notification of migration 6's triggers: what it says changed decides whom it
        wakes (a queued run, its task's claim loops; a deadline, the timer loops it comes
        before); every one wakes the readers of ``change_event``."""
        text = str(payload)
        kind, _, detail = text.partition(":")
        if kind.startswith("q") and kind[1:].isdigit():  # numbered: a hash of the run's id
            self._work_queued(detail, int(kind[1:]))
        elif kind == "q":  # from a schema before migration 8
            self._work_queued(detail)
        elif kind == "t" and detail.isdigit():
            self._deadline_set(int(detail))
        elif kind == "r":
            self._run_changed(detail)
        elif text == "tasks":
            self._forget_task_registry()
        elif text == "workers":
            self._serving = None
        elif text != "w":  # from an engine that notified without saying what
            self._notify()
            return
        self._changed()


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """The pools' ``reset``: see ``PostgresStorage.open``."""


async def _forget_signing_secret(conn: asyncpg.Connection) -> None:
    """Migration 4: keep a hash of each token's signature instead of the plaintext secret.

    Before it, the callback signing secret was a row of ``meta``: whoever could read the
    database could sign a URL for any token. URLs already handed out must keep working, so
    each token keeps the SHA-256 of the signature its URL carries (which verifies that URL
    and signs nothing else), and the secret is deleted. (Its dead row version stays in the
    table's pages until VACUUM reclaims them, as in any PostgreSQL delete.)
    """
    secret = await conn.fetchval("SELECT value FROM meta WHERE key = 'signing_secret'")
    if secret is None:
        return
    ids = [row["id"] for row in await conn.fetch("SELECT id FROM waitpoints WHERE kind = 'MANUAL'")]
    await conn.executemany(
        "UPDATE waitpoints SET legacy_signature_hash = $1 WHERE id = $2",
        [(legacy_signature_hash(secret, token_id), token_id) for token_id in ids],
    )
    await conn.execute("DELETE FROM meta WHERE key = 'signing_secret'")


__all__ = ["PostgresStorage", "behind_pgbouncer", "postgres_dsn"]
