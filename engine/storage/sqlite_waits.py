"""SQLite operations that park a run: waiting on a token, a durable sleep.

Every wait is the same transaction: fenced by the lease epoch, it either finds the
waitpoint(s) closed and journals the outcome (the run goes on), or inserts the blocking
edges, sets the run WAITING and releases its lease (the run suspends). The completion side is
``_requeue_blocked``, shared by tokens, timers and child runs.
"""

from __future__ import annotations

from ..errors import TokenNotFoundError
from ..ids import new_token_id
from ..models import Token
from .base import JournalWrite
from .sqlite_base import Conn, SQLiteBase, _first, _first_or_none


class SQLiteWaits(SQLiteBase):
    """Blocking a run on waitpoints."""

    async def wait_on_token(
        self, token_id: str, journal: JournalWrite, elapsed_ms: int = 0
    ) -> Token | None:
        def op(conn: Conn) -> Token | None:
            self._fence(conn, journal.run_id, journal.epoch)
            rows = conn.execute(
                "SELECT * FROM waitpoints WHERE id = ? AND kind = 'MANUAL'", (token_id,)
            ).fetchall()
            if not rows:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            return self._wait(conn, _first(rows), journal, elapsed_ms)

        return await self._write(op, notify=False)

    async def sleep_until(self, until_ms: int, journal: JournalWrite, elapsed_ms: int = 0) -> bool:
        """Park the run until ``until_ms`` by the database clock; True if that time has come.

        The DATETIME waitpoint is made once per (run, journal key), so a replay that reaches
        the same sleep waits on the same deadline instead of starting a new one.
        """

        def op(conn: Conn) -> bool:
            self._fence(conn, journal.run_id, journal.epoch)
            rows = conn.execute(
                "SELECT * FROM waitpoints WHERE created_by_run = ? AND created_by_key = ?",
                (journal.run_id, journal.key),
            ).fetchall()
            row = _first_or_none(rows)
            if row is None:
                now = self.now_ms()
                due = until_ms <= now
                rows = conn.execute(
                    "INSERT INTO waitpoints (id, kind, status, timeout_at, completed_at,"
                    " created_at, created_by_run, created_by_key)"
                    " VALUES (?, 'DATETIME', ?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        new_token_id(),
                        "COMPLETED" if due else "WAITING",
                        until_ms,
                        now if due else None,
                        now,
                        journal.run_id,
                        journal.key,
                    ),
                ).fetchall()
                row = _first(rows)
            return self._wait(conn, row, journal, elapsed_ms) is not None

        return await self._write(op, notify=False)
