"""Plain SQL on a test database, past the storage layer: to read what it keeps on disk, or to
write what an older version of the engine would have written.

``?`` placeholders work on both backends (they become ``$1, $2, ...`` on PostgreSQL).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from typing import Any

from engine.storage.postgres import postgres_dsn
from engine.storage.sqlite import sqlite_path


async def sql(db_url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    """Run one statement in a transaction of its own; the rows it returns, as dicts."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(db_url))
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(statement, args).fetchall()
            conn.commit()
            return [dict(row) for row in rows]
        finally:
            conn.close()
    import asyncpg

    dsn, schema = postgres_dsn(db_url)
    numbers = itertools.count(1)
    statement = re.sub(r"\?", lambda _: f"${next(numbers)}", statement)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return [dict(row) for row in await conn.fetch(statement, *args)]
    finally:
        await conn.close()


def migrations_module(db_url: str) -> str:
    """The module whose ``MIGRATIONS`` the backend of ``db_url`` applies (to patch it)."""
    return "engine.storage.sqlite" if db_url.startswith("sqlite") else "engine.storage.postgres"
