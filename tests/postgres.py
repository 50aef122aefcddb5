"""The PostgreSQL server the tests use, and a fresh schema per test.

``WAITPOINT_TEST_POSTGRES_URL`` names the server (default: the local one at
postgresql://postgres@127.0.0.1:5432/test). Where it cannot be reached, PostgreSQL tests skip
and say why, unless ``WAITPOINT_REQUIRE_POSTGRES=1`` (set by ``.ci/run`` where PostgreSQL is
installed), which makes them fail instead: CI must not pass by skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import Iterator

import pytest

SERVER_URL = os.environ.get(
    "WAITPOINT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@functools.cache
def unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can (checked once)."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'waitpoint[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(SERVER_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {SERVER_URL} ({exc}); start it, or point"
            " WAITPOINT_TEST_POSTGRES_URL at a server"
        )
    return None


def require_postgres() -> None:
    """Skip (or fail, under WAITPOINT_REQUIRE_POSTGRES=1) when there is no server."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("WAITPOINT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"WAITPOINT_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def _with_schema(schema: str) -> str:
    separator = "&" if "?" in SERVER_URL else "?"
    return f"{SERVER_URL}{separator}schema={schema}"


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(SERVER_URL)
    try:
        # processes a test killed may still hold locks for a moment: wait for them, briefly
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_schema_url() -> Iterator[str]:
    """The server's URL with a new, empty schema; the schema is dropped on exit."""
    require_postgres()
    schema = f"wpt_{uuid.uuid4().hex[:16]}"
    try:
        yield _with_schema(schema)
    finally:
        asyncio.run(drop_schema(schema))
