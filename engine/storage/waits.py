"""Operations that park a run: a token, a sleep, child runs (a group: ``group_waits.py``).

Every wait is the same transaction: fenced by the lease epoch, it either finds the
waitpoint(s) closed and journals the outcome (the run goes on), or inserts the blocking
edges and sets the run WAITING (the run suspends; its attempt releases the lease once it
unwound). On PostgreSQL it share-locks the waitpoints it looks at, so that a completion
committing at the same moment either is seen here or sees the run blocked (``core.py``). The
completion side is ``_requeue_blocked``, shared by tokens, timers and child runs.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import metrics
from ..clock import from_ms, from_ms_or_none
from ..durations import Deadline
from ..errors import StorageError, TokenNotFoundError
from ..faults import crash_point
from ..ids import new_token_id
from ..journal import CallKey, child_key
from ..models import Run, RunStatus, Token, WaitpointStatus, WaitTarget
from .base import JournalWrite, NewRun
from .core import StorageCore, lease_lost
from .records import RowLike, child_result_json, run_from_row, token_from_row
from .sql import Op, Sql, alone, combined, rows


class Waits(StorageCore):
    """Blocking a run on waitpoints."""

    async def describe_waitpoints(self, ids: list[str]) -> list[WaitTarget]:
        if not ids:
            return []
        found = await self._read(
            rows(
                "SELECT id, kind, status, created_at, timeout_at, child_run_id, created_by_key"
                f" FROM waitpoints WHERE id {self.q.in_('ids')} ORDER BY id",
                ids=list(ids),
            )
        )
        return [_wait_target(row) for row in found]

    async def wait_on_token(
        self,
        token_id: str,
        journal: JournalWrite,
        elapsed_ms: int = 0,
        closed: Token | None = None,
    ) -> Token | None:
        if closed is not None:  # the claim read it: the journal's write alone, no read
            await self._write(lambda now: self._journal_closed(closed, journal, now))
            return closed
        if self.q.writes_in_with:
            seen = await self._write(
                lambda now: self._park_if_waiting(token_id, journal, elapsed_ms, now),
                notify=False,
            )
            if seen is not None and seen["parked"]:
                return None
            if seen is not None and seen["status"] != "WAITING":
                token = token_from_row(seen)
                await self._write(lambda now: self._journal_closed(token, journal, now))
                return token
            # the token is missing, past its deadline or the lease lost: the general way,
            # which says which (and times the token out)

        def op(now: int) -> Op[Token | None]:
            found = yield from self._fenced_waitpoints(journal, [token_id], "MANUAL")
            if not found:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            [row] = yield from self._closed_when_due(found, now)
            return (yield from self._wait(row, journal, elapsed_ms, now))

        return await self._write(op, notify=False)

    def _park_if_waiting(
        self, token_id: str, journal: JournalWrite, elapsed_ms: int, now: int
    ) -> Op[RowLike | None]:
        """PostgreSQL, the usual wait in one statement: the fence and the token's lock, and
        if the token is WAITING (not past its deadline) the run blocked on it. Returns the
        token's row and whether the run ``parked``; None if the fence or the token failed
        (nothing was written then, nor when the token was closed)."""
        found = self._fenced_waitpoints_of(journal, [token_id], "MANUAL")
        still = rows(
            "SELECT id FROM found WHERE status = 'WAITING'"
            " AND (timeout_at IS NULL OR timeout_at > :now)",
            now=now,
        )
        detail = {"on": [token_id]}
        edges = "(SELECT id AS w, 'all' AS m FROM open) AS e"
        blocking = self._blocking(
            journal, elapsed_ms, now, detail, edges, "EXISTS (SELECT 1 FROM open)"
        )
        crash_point("suspend.before_commit")
        seen = yield alone(
            combined(
                {"found": found, "open": still, **blocking},
                "SELECT found.*, EXISTS (SELECT 1 FROM parked) AS parked FROM found",
            )
        )
        return seen[0] if seen else None

    def _journal_closed(self, token: Token, journal: JournalWrite, now: int) -> Op[None]:
        """A wait on a closed token (the claim, or ``_park_if_waiting``, found it so): its
        outcome journaled and the run's edge to it gone, while the epoch holds the run (one
        statement on PostgreSQL, two on SQLite)."""
        value = token.model_dump(mode="json", by_alias=True)
        crash_point("journal.before_commit")
        if not self.q.writes_in_with:
            if not (yield self._journal_entry(journal, value, now, where=self._fenced)):
                raise lease_lost(journal.run_id, journal.epoch)
            yield from self._unblocked(journal.run_id, [token.id], "token", now)
            return
        timed = metrics.on  # the edge's deletion says since when the run was parked
        entry = self._journal_entry(
            journal, value, now, where=self._fenced, returning=" RETURNING run_id"
        )
        gone = self._unblock(journal.run_id, [token.id])
        tail = " RETURNING created_at" if timed else ""
        gone = Sql(f"{gone.text} AND EXISTS (SELECT 1 FROM entry){tail}", gone.params, gone.want)
        parked = ", (SELECT min(created_at) FROM gone) AS parked" if timed else ""
        made = yield alone(
            combined({"entry": entry, "gone": gone}, f"SELECT count(*) AS n{parked} FROM entry")
        )
        if not made[0]["n"]:
            raise lease_lost(journal.run_id, journal.epoch)
        if timed:
            self._waited("token", made[0]["parked"], now)

    async def sleep_until(
        self, deadline: Deadline, journal: JournalWrite, elapsed_ms: int = 0
    ) -> bool:
        """Park the run until ``deadline`` by the database clock; True if that time has come.

        The DATETIME waitpoint is made once per (run, journal key), so a replay that reaches
        the same sleep waits on the same deadline instead of starting a new one.
        """

        def op(now: int) -> Op[bool]:
            yield from self._fence(journal.run_id, journal.epoch)
            row = yield from self._datetime_waitpoint(journal, deadline, now)
            return (yield from self._wait(row, journal, elapsed_ms, now)) is not None

        return await self._write(op, notify=False)

    async def start_child(self, new: NewRun, journal: JournalWrite) -> Run:
        def op(now: int) -> Op[Run]:
            depth = yield from self._fence(journal.run_id, journal.epoch)
            row = yield from self._child(new, journal.run_id, journal.key, depth, now)
            run = run_from_row(row)
            yield from self._journal(journal, run.model_dump(mode="json", by_alias=True), now)
            return run

        return await self._write(op)  # the child is queued: notify

    async def wait_for_children(
        self, news: list[NewRun], journal: JournalWrite, elapsed_ms: int = 0
    ) -> list[Token] | None:
        def op(now: int) -> Op[list[Token] | None]:
            depth = yield from self._fence(journal.run_id, journal.epoch)
            waitpoints = []
            for index, new in enumerate(news):
                key = child_key(journal.key, index)
                # a replay follows the edge the first execution made to its child, whatever
                # became of the idempotency key that found it
                waitpoint = yield from self._made_by(journal.run_id, key)
                if waitpoint is None:
                    child = yield from self._child(new, journal.run_id, key, depth, now)
                    waitpoint = yield from self._run_waitpoint(journal.run_id, key, child, now)
                waitpoints.append(waitpoint)
            tokens = [token_from_row(row) for row in waitpoints]
            waiting = [t.id for t in tokens if t.is_waiting]
            if waiting:
                yield from self._block(journal, dict.fromkeys(waiting, "all"), elapsed_ms, now)
                return None
            values = [t.model_dump(mode="json", by_alias=True) for t in tokens]
            yield from self._journal_and_unblock(
                journal, values, [t.id for t in tokens], now, "child_runs"
            )
            return tokens

        return await self._write(op)  # new children are queued: notify

    def _child(
        self, new: NewRun, parent_id: str, key: str, parent_depth: int, now: int
    ) -> Op[RowLike]:
        """The child this parent made under ``key``: found again on replay, never made twice."""
        found = yield rows(
            "SELECT * FROM runs WHERE parent_run_id = :parent AND parent_key = :key",
            parent=parent_id,
            key=key,
        )
        if found:
            row: RowLike = found[0]
            return row
        if new.idempotency_key is not None:  # a run triggered with this key before is the child
            existing = yield from self._existing_by_key(
                "runs",
                "task_id = :task_id AND idempotency_key = :key",
                now,
                task_id=new.task_id,
                key=new.idempotency_key,
            )
            if existing is not None:
                return existing  # type: ignore[no-any-return]
        child = NewRun(**{**new.__dict__, "parent_run_id": parent_id})
        return (yield from self._insert_run(child, now, parent_key=key, depth=parent_depth + 1))

    def _run_waitpoint(self, parent_id: str, key: str, child: RowLike, now: int) -> Op[RowLike]:
        """The RUN waitpoint that closes (with the child's result) when the child finishes.

        Made closed when the child already finished (one found by its idempotency key).
        """
        done = RunStatus(child["status"]).is_terminal
        return (
            yield from self._made_once(
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
        )

    def _datetime_waitpoint(
        self, journal: JournalWrite, deadline: Deadline, now: int
    ) -> Op[RowLike]:
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

        row = yield from self._made_once(journal.run_id, journal.key, now, columns)
        [row] = yield from self._closed_when_due([row], now)
        return row

    def _made_by(self, run_id: str, key: str) -> Op[RowLike | None]:
        """The waitpoint a run's durable call made under ``key`` (share-locked, like every
        waitpoint a run blocks on), if it made one."""
        found = yield rows(
            "SELECT * FROM waitpoints WHERE created_by_run = :run_id AND created_by_key = :key"
            f"{self.q.for_share}",
            run_id=run_id,
            key=key,
        )
        return found[0] if found else None

    def _made_once(
        self, run_id: str, key: str, now: int, columns: Callable[[], dict[str, object]]
    ) -> Op[RowLike]:
        """The waitpoint a run's durable call made under ``key``, made now if it is new.

        Found again on replay, so a call replayed after a crash waits on the same waitpoint;
        ``columns`` is computed only for a new one.
        """
        row = yield from self._made_by(run_id, key)
        if row is not None:
            return row
        return (yield from self._insert_waitpoint(run_id, key, now, columns()))

    def _insert_waitpoint(
        self, run_id: str, key: str, now: int, columns: dict[str, object]
    ) -> Op[RowLike]:
        """A new waitpoint made by a run's durable call under ``key``."""
        values = {
            "id": new_token_id(),
            "created_at": now,
            "created_by_run": run_id,
            "created_by_key": key,
            **columns,
        }
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        inserted = yield rows(
            f"INSERT INTO waitpoints ({names}) VALUES ({marks}) RETURNING *", **values
        )
        if not inserted:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise StorageError("the database returned no row for a new waitpoint")
        made: RowLike = inserted[0]
        return made


_TARGET_KINDS = {"MANUAL": "token", "RUN": "run", "MESSAGE": "message", "APPROVAL": "approval"}


def _wait_target(row: RowLike) -> WaitTarget:
    """A DATETIME waitpoint is a sleep's, or the deadline of the group that made it."""
    kind = _TARGET_KINDS.get(row["kind"])
    if kind is None:
        made_by = CallKey.parse(row["created_by_key"] or "")
        kind = "sleep" if made_by.kind == "sleep" else "deadline"
    return WaitTarget(
        id=row["id"],
        kind=kind,
        status=WaitpointStatus(row["status"]),
        created_at=from_ms(row["created_at"]),
        run_id=row["child_run_id"],
        until=from_ms_or_none(row["timeout_at"]),
    )
