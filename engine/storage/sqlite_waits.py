"""SQLite operations that park a run: a token, a group of tokens, a sleep, child runs.

Every wait is the same transaction: fenced by the lease epoch, it either finds the
waitpoint(s) closed and journals the outcome (the run goes on), or inserts the blocking
edges, sets the run WAITING and releases its lease (the run suspends). The completion side is
``_requeue_blocked``, shared by tokens, timers and child runs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ..clock import from_ms
from ..durations import Deadline
from ..errors import TokenNotFoundError
from ..ids import new_token_id
from ..journal import child_key
from ..models import Run, RunStatus, Token
from .base import JournalWrite, NewRun
from .groups import group_outcome
from .records import child_result_json, run_from_row, token_from_row
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
            [row] = self._closed_when_due(conn, rows)
            return self._wait(conn, row, journal, elapsed_ms)

        return await self._write(op, notify=False)

    async def sleep_until(
        self, deadline: Deadline, journal: JournalWrite, elapsed_ms: int = 0
    ) -> bool:
        """Park the run until ``deadline`` by the database clock; True if that time has come.

        The DATETIME waitpoint is made once per (run, journal key), so a replay that reaches
        the same sleep waits on the same deadline instead of starting a new one.
        """

        def op(conn: Conn) -> bool:
            self._fence(conn, journal.run_id, journal.epoch)
            row = self._datetime_waitpoint(conn, journal, deadline)
            return self._wait(conn, row, journal, elapsed_ms) is not None

        return await self._write(op, notify=False)

    async def start_child(self, new: NewRun, journal: JournalWrite) -> Run:
        def op(conn: Conn) -> Run:
            depth = self._fence(conn, journal.run_id, journal.epoch)
            row = self._child(conn, new, journal.run_id, journal.key, depth)
            run = run_from_row(row)
            self._journal(conn, journal, run.model_dump(mode="json", by_alias=True))
            return run

        result = await self._write(op)
        self._notify()
        return result

    async def wait_for_children(
        self, news: list[NewRun], journal: JournalWrite, elapsed_ms: int = 0
    ) -> list[Token] | None:
        def op(conn: Conn) -> list[Token] | None:
            depth = self._fence(conn, journal.run_id, journal.epoch)
            waitpoints = []
            for index, new in enumerate(news):
                key = child_key(journal.key, index)
                # a replay follows the edge the first execution made to its child, whatever
                # became of the idempotency key that found it
                waitpoint = self._made_by(conn, journal.run_id, key)
                if waitpoint is None:
                    child = self._child(conn, new, journal.run_id, key, depth)
                    waitpoint = self._run_waitpoint(conn, journal.run_id, key, child)
                waitpoints.append(waitpoint)
            tokens = [token_from_row(row, self.signer) for row in waitpoints]
            waiting = [t.id for t in tokens if t.is_waiting]
            if waiting:
                self._block(conn, journal, dict.fromkeys(waiting, "all"), elapsed_ms)
                return None
            self._journal(conn, journal, [t.model_dump(mode="json", by_alias=True) for t in tokens])
            self._unblock(conn, journal.run_id, [t.id for t in tokens])
            return tokens

        result = await self._write(op)
        self._notify()  # new children are queued
        return result

    async def wait_on_group(
        self,
        token_ids: list[str],
        mode: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
    ) -> dict[str, Any] | None:
        def op(conn: Conn) -> dict[str, Any] | None:
            self._fence(conn, journal.run_id, journal.epoch)
            rows = conn.execute(
                "SELECT * FROM waitpoints WHERE kind = 'MANUAL'"
                " AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(token_ids),),
            ).fetchall()
            rows = self._closed_when_due(conn, rows)
            found = {row["id"]: token_from_row(row, self.signer) for row in rows}
            missing = [tid for tid in token_ids if tid not in found]
            if missing:
                raise TokenNotFoundError(f"no waitpoint token with id {missing[0]!r}")
            tokens = [found[tid] for tid in token_ids]
            ids = list(token_ids)
            modes = {t.id: mode for t in tokens if t.is_waiting}
            until = None
            if deadline is not None:
                timer = self._datetime_waitpoint(conn, journal, deadline)
                until = from_ms(timer["timeout_at"])
                ids.append(timer["id"])
                modes[timer["id"]] = "any"
            outcome = group_outcome(tokens, mode, until, self.now_ms())
            if outcome.snapshot is None:
                self._block(conn, journal, modes, elapsed_ms)
                return None
            self._journal(conn, journal, outcome.snapshot)
            self._unblock(conn, journal.run_id, ids)
            return outcome.snapshot

        return await self._write(op, notify=False)

    def _child(
        self, conn: Conn, new: NewRun, parent_id: str, key: str, parent_depth: int
    ) -> sqlite3.Row:
        """The child this parent made under ``key``: found again on replay, never made twice."""
        rows = conn.execute(
            "SELECT * FROM runs WHERE parent_run_id = ? AND parent_key = ?", (parent_id, key)
        ).fetchall()
        row = _first_or_none(rows)
        if row is not None:
            return row
        if new.idempotency_key is not None:  # a run triggered with this key before is the child
            rows = conn.execute(
                "SELECT * FROM runs WHERE task_id = ? AND idempotency_key = ?",
                (new.task_id, new.idempotency_key),
            ).fetchall()
            row = _first_or_none(rows)
            expires = None if row is None else row["idempotency_key_expires_at"]
            if row is not None and (expires is None or expires > self.now_ms()):
                return row
            if row is not None:
                conn.execute("UPDATE runs SET idempotency_key = NULL WHERE id = ?", (row["id"],))
        child = NewRun(**{**new.__dict__, "parent_run_id": parent_id})
        return self._insert_run(conn, child, parent_key=key, depth=parent_depth + 1)

    def _run_waitpoint(
        self, conn: Conn, parent_id: str, key: str, child: sqlite3.Row
    ) -> sqlite3.Row:
        """The RUN waitpoint that closes (with the child's result) when the child finishes.

        Made closed when the child already finished (one found by its idempotency key).
        """
        done = RunStatus(child["status"]).is_terminal
        return self._made_once(
            conn,
            parent_id,
            key,
            lambda: {
                "kind": "RUN",
                "status": "COMPLETED" if done else "WAITING",
                "child_run_id": child["id"],
                "completed_at": self.now_ms() if done else None,
                "data": child_result_json(child) if done else None,
            },
        )

    def _datetime_waitpoint(
        self, conn: Conn, journal: JournalWrite, deadline: Deadline
    ) -> sqlite3.Row:
        """The DATETIME waitpoint of this (run, journal key): made once, its deadline resolved
        then; found again (and closed if it is due) on replay."""

        def columns() -> dict[str, object]:
            now = self.now_ms()
            until = deadline.resolve(now)
            due = until <= now
            return {
                "kind": "DATETIME",
                "status": "COMPLETED" if due else "WAITING",
                "timeout_at": until,
                "completed_at": now if due else None,
            }

        [row] = self._closed_when_due(
            conn, [self._made_once(conn, journal.run_id, journal.key, columns)]
        )
        return row

    def _made_by(self, conn: Conn, run_id: str, key: str) -> sqlite3.Row | None:
        """The waitpoint a run's durable call made under ``key``, if it made one."""
        return _first_or_none(
            conn.execute(
                "SELECT * FROM waitpoints WHERE created_by_run = ? AND created_by_key = ?",
                (run_id, key),
            ).fetchall()
        )

    def _made_once(
        self, conn: Conn, run_id: str, key: str, columns: Callable[[], dict[str, object]]
    ) -> sqlite3.Row:
        """The waitpoint a run's durable call made under ``key``, made now if it is new.

        Found again on replay, so a call replayed after a crash waits on the same waitpoint;
        ``columns`` is computed only for a new one.
        """
        row = self._made_by(conn, run_id, key)
        if row is not None:
            return row
        values = {
            "id": new_token_id(),
            "created_at": self.now_ms(),
            "created_by_run": run_id,
            "created_by_key": key,
            **columns(),
        }
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        return _first(
            conn.execute(
                f"INSERT INTO waitpoints ({names}) VALUES ({marks}) RETURNING *", values
            ).fetchall()
        )
