"""Timers: delayed runs that fall due, runs whose time to live ran out, tokens and sleeps
whose deadline passed. Each worker's timer loop asks first whether anything is due
(``timer_outlook``, one read), fires it (``fire_due_timers``) and sleeps until the next one."""

from __future__ import annotations

from functools import cached_property

from .. import metrics
from ..faults import crash_point
from .approvals import NEXT_APPROVAL_DUE
from .base import TimerOutlook
from .core import StorageCore
from .schedules import earliest_tick
from .sql import Op, count, rows


class Timers(StorageCore):
    """What falls due by the clock."""

    async def fire_due_timers(self, limit: int) -> int:
        return await self._start_delayed_runs() + await self._time_out_tokens(limit)

    @cached_property
    def _deadlines(self) -> dict[str, tuple[str, str, str]]:
        """Each kind of deadline the timers fire, as ``(table, condition, column)``: the
        condition is that of the partial index holding exactly those rows, which the table
        names on SQLite (``Dialect.indexed_by``). A token's (or a sleep's) timeout, a
        delayed run's start, a queued or delayed run's time to live."""
        q = self.q
        return {
            "timeout": (
                "waitpoints",
                "status = 'WAITING' AND timeout_at IS NOT NULL",
                "timeout_at",
            ),
            "delayed": (q.indexed_by("runs", "runs_delayed"), "status = 'DELAYED'", "available_at"),
            "expiry": (
                q.indexed_by("runs", "runs_expiry"),
                "status IN ('QUEUED', 'DELAYED') AND expires_at IS NOT NULL",
                "expires_at",
            ),
        }

    def _earliest_deadline(self, kind: str) -> str:
        """The scalar subquery of the earliest deadline of ``kind`` (``_deadlines``)."""
        source, condition, column = self._deadlines[kind]
        return f"(SELECT min({column}) FROM {source} WHERE {condition})"

    async def _due(self, kind: str) -> bool:
        """Whether a deadline of ``kind`` has passed (a cheap read before any write)."""
        source, condition, column = self._deadlines[kind]
        return await self._any_due(source, f"{condition} AND {column} <= :now")

    async def next_timer_ms(self) -> int | None:
        each = " UNION ALL ".join(
            f"SELECT {self._earliest_deadline(kind)} AS t" for kind in self._deadlines
        )
        found = await self._read(rows(f"SELECT min(t) AS t FROM ({each}) AS due"), control=True)
        value = found[0]["t"] if found else None
        return None if value is None else int(value)

    async def timer_outlook(self, task_ids: list[str]) -> TimerOutlook:
        q = self.q
        now = self.now_ms()
        columns = {kind: self._earliest_deadline(kind) for kind in self._deadlines}
        columns["tick"] = f"({earliest_tick(q)})" if task_ids else "NULL"
        columns["approval"] = f"({NEXT_APPROVAL_DUE.text})"
        leases = f"SELECT min(lease_expires_at) FROM {q.indexed_by('runs', 'runs_leases')}"
        columns["lease"] = f"({leases} WHERE status = 'EXECUTING')"
        found = await self._read(
            rows(
                "SELECT " + ", ".join(f"{sql} AS {name}" for name, sql in columns.items()),
                **({"tasks": task_ids} if task_ids else {}),
            ),
            control=True,
        )
        row = found[0]
        moments = [int(row[c]) for c in columns if c != "lease" and row[c] is not None]
        lease = row["lease"]
        due = any(m <= now for m in moments) or (lease is not None and int(lease) < now)
        return TimerOutlook(due=due, next_ms=min(moments, default=None))

    async def _start_delayed_runs(self) -> int:
        """DELAYED runs whose time came become QUEUED; runs not started within ttl EXPIRE.

        With metrics on, the statements return when each run was due, for how late this
        fired it (``engine.metrics``); off, the queued runs are only counted, as before."""
        if not (await self._due("delayed") or await self._due("expiry")):
            return 0
        timed = metrics.on
        queue = (
            "UPDATE runs SET status = 'QUEUED', updated_at = :now"
            " WHERE status = 'DELAYED' AND available_at <= :now"
        )

        def op(now: int) -> Op[tuple[int, list[int], list[int]]]:
            expired = yield rows(
                "UPDATE runs SET status = 'EXPIRED', finished_at = :now, updated_at = :now"
                " WHERE status IN ('QUEUED', 'DELAYED') AND expires_at <= :now"
                f" RETURNING id{', expires_at' if timed else ''}",
                now=now,
            )
            expired_ids = [r["id"] for r in expired]
            yield from self._runs_finished(expired_ids, now, "expired")
            if not timed:
                queued = yield count(queue, now=now)
                return len(expired_ids) + int(queued), [], []
            started = yield rows(f"{queue} RETURNING available_at", now=now)
            late_runs = [now - int(r["available_at"]) for r in started]
            late_expiries = [now - int(r["expires_at"]) for r in expired]
            return len(expired_ids) + len(started), late_runs, late_expiries

        fired, late_runs, late_expiries = await self._write(op, control=True)
        if timed:
            metrics.fired("delayed_run", late_runs)
            metrics.fired("run_ttl", late_expiries)
        return fired

    async def _time_out_tokens(self, limit: int) -> int:
        if not await self._due("timeout"):
            return 0
        timed = metrics.on
        returning = " RETURNING id, timeout_at" if timed else " RETURNING id"

        def op(now: int) -> Op[list[int]]:
            yield from self.q.custom_plans()
            due = (
                "id IN (SELECT id FROM waitpoints WHERE status = 'WAITING'"
                f" AND timeout_at <= :now ORDER BY timeout_at LIMIT :limit{self.q.skip_locked()})"
            )
            closed = yield rows(self._time_out(due, returning), now=now, limit=limit)
            ids = [r["id"] for r in closed]
            if ids:
                yield from self._requeue_blocked(ids, now)
                crash_point("timers.before_commit")
            return [now - int(r["timeout_at"]) if timed else 0 for r in closed]

        late = await self._write(op, control=True)
        if timed:
            metrics.fired("waitpoint_deadline", late)
        return len(late)
