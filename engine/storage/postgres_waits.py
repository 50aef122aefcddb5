"""PostgreSQL operations that park a run: a token, a group of tokens, a sleep, child runs.

The same transactions as ``sqlite_waits``, plus row locks: the run's row (the fence) and the
rows of the waitpoints it looks at (``FOR SHARE``), so that a completion committing at the
same moment either is seen here or sees the run blocked (``postgres_base``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..clock import from_ms
from ..durations import Deadline
from ..errors import StorageError, TokenNotFoundError
from ..ids import new_token_id
from ..journal import child_key
from ..models import Run, RunStatus, Token
from .base import JournalWrite, NewRun
from .groups import group_outcome
from .postgres_base import Conn, PostgresBase, Row
from .records import child_result_json, run_from_row, token_from_row


class PostgresWaits(PostgresBase):
    """Blocking a run on waitpoints."""

    async def wait_on_token(
        self, token_id: str, journal: JournalWrite, elapsed_ms: int = 0
    ) -> Token | None:
        async def op(conn: Conn, now: int) -> Token | None:
            await self._fence(conn, journal.run_id, journal.epoch)
            rows = await self._lock_waitpoints(conn, [token_id], "MANUAL")
            if not rows:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            [row] = await self._closed_when_due(conn, rows, now)
            return await self._wait(conn, row, journal, elapsed_ms, now)

        return await self._write(op, notify=False)

    async def sleep_until(
        self, deadline: Deadline, journal: JournalWrite, elapsed_ms: int = 0
    ) -> bool:
        """Park the run until ``deadline`` by the database clock; True if that time has come."""

        async def op(conn: Conn, now: int) -> bool:
            await self._fence(conn, journal.run_id, journal.epoch)
            row = await self._datetime_waitpoint(conn, journal, deadline, now)
            return await self._wait(conn, row, journal, elapsed_ms, now) is not None

        return await self._write(op, notify=False)

    async def start_child(self, new: NewRun, journal: JournalWrite) -> Run:
        async def op(conn: Conn, now: int) -> Run:
            depth = await self._fence(conn, journal.run_id, journal.epoch)
            row = await self._child(conn, new, journal.run_id, journal.key, depth, now)
            run = run_from_row(row)
            await self._journal(conn, journal, run.model_dump(mode="json", by_alias=True), now)
            return run

        return await self._write(op)

    async def wait_for_children(
        self, news: list[NewRun], journal: JournalWrite, elapsed_ms: int = 0
    ) -> list[Token] | None:
        async def op(conn: Conn, now: int) -> list[Token] | None:
            depth = await self._fence(conn, journal.run_id, journal.epoch)
            waitpoints = []
            for index, new in enumerate(news):
                key = child_key(journal.key, index)
                # a replay follows the edge the first execution made to its child, whatever
                # became of the idempotency key that found it
                waitpoint = await self._made_by(conn, journal.run_id, key)
                if waitpoint is None:
                    child = await self._child(conn, new, journal.run_id, key, depth, now)
                    waitpoint = await self._run_waitpoint(conn, journal.run_id, key, child, now)
                waitpoints.append(waitpoint)
            tokens = [token_from_row(row, self.signer) for row in waitpoints]
            waiting = [t.id for t in tokens if t.is_waiting]
            if waiting:
                await self._block(conn, journal, dict.fromkeys(waiting, "all"), elapsed_ms, now)
                return None
            values = [t.model_dump(mode="json", by_alias=True) for t in tokens]
            await self._journal(conn, journal, values, now)
            await self._unblock(conn, journal.run_id, [t.id for t in tokens])
            return tokens

        return await self._write(op)  # new children are queued: notify

    async def wait_on_group(
        self,
        token_ids: list[str],
        mode: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
    ) -> dict[str, Any] | None:
        async def op(conn: Conn, now: int) -> dict[str, Any] | None:
            await self._fence(conn, journal.run_id, journal.epoch)
            rows = await self._lock_waitpoints(conn, token_ids, "MANUAL")
            rows = await self._closed_when_due(conn, rows, now)
            found = {row["id"]: token_from_row(row, self.signer) for row in rows}
            missing = [tid for tid in token_ids if tid not in found]
            if missing:
                raise TokenNotFoundError(f"no waitpoint token with id {missing[0]!r}")
            tokens = [found[tid] for tid in token_ids]
            ids = list(token_ids)
            modes = {t.id: mode for t in tokens if t.is_waiting}
            until = None
            if deadline is not None:
                timer = await self._datetime_waitpoint(conn, journal, deadline, now)
                until = from_ms(timer["timeout_at"])
                ids.append(timer["id"])
                modes[timer["id"]] = "any"
            outcome = group_outcome(tokens, mode, until, now)
            if outcome.snapshot is None:
                await self._block(conn, journal, modes, elapsed_ms, now)
                return None
            await self._journal(conn, journal, outcome.snapshot, now)
            await self._unblock(conn, journal.run_id, ids)
            return outcome.snapshot

        return await self._write(op, notify=False)

    async def _child(
        self, conn: Conn, new: NewRun, parent_id: str, key: str, parent_depth: int, now: int
    ) -> Row:
        """The child this parent made under ``key``: found again on replay, never made twice."""
        row = await conn.fetchrow(
            "SELECT * FROM runs WHERE parent_run_id = $1 AND parent_key = $2", parent_id, key
        )
        if row is not None:
            return row
        if new.idempotency_key is not None:  # a run triggered with this key before is the child
            row = await conn.fetchrow(
                "SELECT * FROM runs WHERE task_id = $1 AND idempotency_key = $2 FOR UPDATE",
                new.task_id,
                new.idempotency_key,
            )
            expires = None if row is None else row["idempotency_key_expires_at"]
            if row is not None and (expires is None or expires > now):
                return row
            if row is not None:
                await conn.execute(
                    "UPDATE runs SET idempotency_key = NULL WHERE id = $1", row["id"]
                )
        child = NewRun(**{**new.__dict__, "parent_run_id": parent_id})
        return await self._insert_run(conn, child, now, parent_key=key, depth=parent_depth + 1)

    async def _run_waitpoint(
        self, conn: Conn, parent_id: str, key: str, child: Row, now: int
    ) -> Row:
        """The RUN waitpoint that closes (with the child's result) when the child finishes.

        Made closed when the child already finished (one found by its idempotency key).
        """
        done = RunStatus(child["status"]).is_terminal
        return await self._made_once(
            conn,
            parent_id,
            key,
            now,
            lambda: {
                "kind": "RUN",
                "status": "COMPLETED" if done else "WAITING",
                "child_run_id": child["id"],
                "completed_at": now if done else None,
                "data": child_result_json(child) if done else None,
            },
        )

    async def _datetime_waitpoint(
        self, conn: Conn, journal: JournalWrite, deadline: Deadline, now: int
    ) -> Row:
        """The DATETIME waitpoint of this (run, journal key): made once, its deadline resolved
        then; found again (and closed if it is due) on replay."""

        def columns() -> dict[str, object]:
            until = deadline.resolve(now)
            due = until <= now
            return {
                "kind": "DATETIME",
                "status": "COMPLETED" if due else "WAITING",
                "timeout_at": until,
                "completed_at": now if due else None,
            }

        row = await self._made_once(conn, journal.run_id, journal.key, now, columns)
        [row] = await self._closed_when_due(conn, [row], now)
        return row

    async def _made_by(self, conn: Conn, run_id: str, key: str) -> Row | None:
        """The waitpoint a run's durable call made under ``key`` (share-locked, like every
        waitpoint a run blocks on), if it made one."""
        row: Row | None = await conn.fetchrow(
            "SELECT * FROM waitpoints WHERE created_by_run = $1 AND created_by_key = $2 FOR SHARE",
            run_id,
            key,
        )
        return row

    async def _made_once(
        self,
        conn: Conn,
        run_id: str,
        key: str,
        now: int,
        columns: Callable[[], dict[str, object]],
    ) -> Row:
        """The waitpoint a run's durable call made under ``key``, made now if it is new.

        Found again on replay, so a call replayed after a crash waits on the same waitpoint;
        ``columns`` is computed only for a new one.
        """
        row = await self._made_by(conn, run_id, key)
        if row is not None:
            return row
        values = {
            "id": new_token_id(),
            "created_at": now,
            "created_by_run": run_id,
            "created_by_key": key,
            **columns(),
        }
        names = ", ".join(values)
        marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        row = await conn.fetchrow(
            f"INSERT INTO waitpoints ({names}) VALUES ({marks}) RETURNING *", *values.values()
        )
        if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise StorageError("the database returned no row for a new waitpoint")
        return row
