"""PostgreSQL storage, for workers and API processes on several machines sharing one database.

``postgresql://user@host:5432/db?schema=name`` selects it (the tables live in their own schema,
``waitpoint`` by default; other query parameters go to the server as settings). Migrations are
applied on open under an advisory lock, so processes starting at once are safe. The operations
live in ``postgres_runs``, ``postgres_tokens`` and ``postgres_waits``; this module opens,
migrates, listens and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from ..callbacks import CallbackSigner
from ..clock import Clock
from ..errors import ConfigurationError, StorageError, StorageUnavailableError
from ..keys import SigningSecrets, legacy_signature_hash

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ConfigurationError(
        "PostgreSQL support needs the asyncpg driver: pip install 'waitpoint[postgres]'"
    ) from exc

from .postgres_base import NOW_MS, translate
from .postgres_runs import PostgresRuns
from .postgres_schema import MIGRATIONS
from .postgres_tokens import PostgresTokens
from .postgres_waits import PostgresWaits
from .signing import SIGNING_CHECK, log_outcome, settle

log = structlog.get_logger("engine.storage")

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
_LISTENER_PROBE_SECONDS = 5.0  # how often the listener checks its connection and the clock
_POOL_SIZE = 10


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
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresStorage(PostgresRuns, PostgresTokens, PostgresWaits):
    """The backend for many workers on many machines."""

    def __init__(
        self,
        url: str,
        *,
        public_url: str,
        signing_secret: str,
        previous_signing_secret: str | None = None,
        clock: Clock | None = None,
        pool_size: int = _POOL_SIZE,
    ) -> None:
        self._dsn, self.schema = postgres_dsn(url)
        self._signing = SigningSecrets(signing_secret, previous_signing_secret)
        self.signing_key_matches = True
        self._pool_size = pool_size
        self.clock = clock
        self._pool = None
        self._control = None
        self._channel = f"waitpoint_{self.schema}"
        self._change = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._offset_ms = 0
        self.commits = 0
        self.signer = CallbackSigner(public_url, signing_secret, previous_signing_secret)

    async def open(self) -> None:
        # custom plans: a generic plan of the re-queue statement is quadratic in the tokens
        # closed at once (measured: 10,000 due tokens 3.2 s instead of 0.4 s)
        settings = {
            "search_path": self.schema,
            "application_name": "waitpoint",
            "plan_cache_mode": "force_custom_plan",
        }
        try:
            await self._migrate()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, server_settings=settings
            )
            self._control = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=2, server_settings=settings
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
            raise kind(f"cannot open PostgreSQL database: {exc}") from exc

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
        conn = await asyncpg.connect(self._dsn)
        try:
            current = await self._schema_version(conn)
            if current >= len(MIGRATIONS):  # the usual start: nothing to lock, nothing to create
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
            stored = await conn.fetchval("SELECT value FROM meta WHERE key = $1", SIGNING_CHECK)
            outcome, value = settle(stored, self._signing)
            if value is not None:
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    SIGNING_CHECK,
                    value,
                )
        log_outcome(outcome, schema=self.schema)
        self.signing_key_matches = outcome != "mismatch"

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
        """``now_ms`` follows the database's clock: keep the offset from this machine's."""
        before = time.time() * 1000
        if conn is not None:
            db_now = await conn.fetchval(f"SELECT {NOW_MS}")
        else:
            db_now = await self._require_pool().fetchval(f"SELECT {NOW_MS}")
        after = time.time() * 1000
        self._offset_ms = int(db_now - (before + after) / 2)

    async def fire_due_timers(self, limit: int) -> int:
        return await self._start_delayed_runs() + await self._time_out_tokens(limit)

    async def next_timer_ms(self) -> int | None:
        rows = await self._read(
            "SELECT least("
            " (SELECT min(timeout_at) FROM waitpoints"
            "   WHERE status = 'WAITING' AND timeout_at IS NOT NULL),"
            " (SELECT min(available_at) FROM runs WHERE status = 'DELAYED'),"
            " (SELECT min(expires_at) FROM runs"
            "   WHERE status IN ('QUEUED', 'DELAYED') AND expires_at IS NOT NULL)) AS t",
            control=True,
        )
        value = rows[0]["t"] if rows else None
        return None if value is None else int(value)

    def change_event(self) -> asyncio.Event:
        """An event set at the next commit that may have made work (here or in another process).

        Take it *before* looking for work, then wait on it. Other processes' commits arrive
        through LISTEN (started here, on first use); callers poll as well, so a listener that
        is down costs latency, never a run.
        """
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="waitpoint-pg-listen")
        return self._change

    async def wait_for_change(self, timeout: float) -> None:
        event = self.change_event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

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
        conn = await asyncpg.connect(self._dsn, server_settings=name)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, lambda *_: self._notify())
            self._notify()  # whatever was committed while nobody here was listening
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTENER_PROBE_SECONDS)
                if not lost.is_set():  # a silent network drop shows up here
                    await self._measure_clock(conn)
            log.warning("storage.listener_lost", channel=self._channel)
        finally:
            if not conn.is_closed():
                conn.terminate()


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


__all__ = ["PostgresStorage", "postgres_dsn"]
