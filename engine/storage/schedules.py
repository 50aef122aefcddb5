"""Schedules: cron schedules of tasks, and their ticks made into runs, each exactly once.

A schedule keeps the time of its next tick (``next_tick_at``). A worker fires the due
schedules of the tasks it serves (``fire_due_schedules``, from its timer loop) in one write
transaction: it takes them (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so workers firing at
once take different schedules and never wait on each other; SQLite: one writer at a time),
makes the runs of their due ticks and moves ``next_tick_at`` past now in the same
transaction. A worker that comes next finds the schedule not due. Each run's idempotency
key is the schedule's id and its tick's time (``sched_...:1767258000000``), looked up
before the run is made: a tick has one run even if something else made it first.

Ticks missed while no worker of the task was up (``next_tick_at`` long past) are caught up
on as the schedule says (``catch_up``): the last one only (the default), or each of them,
oldest first, at most ``CATCH_UP_LIMIT`` per schedule per transaction (the worker fires
again at once while some are left). A tick's run receives ``ScheduledPayload``'s fields
(Trigger.dev's names, camelCase) and the schedule's own payload under ``payload``.

A deactivated schedule forgets its next tick; activated again, it ticks from then on, and
the ticks in between are not caught up on (it was off, not down). A new expression or time
zone ticks from the moment it is set.

Lock order (PostgreSQL): a schedule's row is locked by its firing and by the changes made
to it from outside (one row each, by id); the firing then looks runs up by their key and
inserts new ones. Nothing that locks a run locks a schedule, so no cycle can form.
"""

from __future__ import annotations

import math
from typing import Any

from ..clock import from_ms, from_ms_or_none
from ..cron import Cron, iso_ms
from ..errors import ScheduleNotFoundError, ValidationError
from ..ids import new_schedule_id
from ..models import (
    CatchUp,
    CronGenerator,
    Schedule,
    SchedulePage,
    SchedulePagination,
    ScheduleType,
)
from .base import DeclaredSchedule, NewRun, NewSchedule, ScheduleChange, ScheduleFiring
from .records import RowLike, dump_json, load_json
from .runs import Runs
from .sql import Dialect, Op, Sql, alone, count, many, rows

DECLARED_KEY_PREFIX = "declared:"
"""The deduplication key of a task's declared schedule is this and the task's id; the
prefix is refused for schedules made at run time."""
FIRE_BATCH = 100
"""Schedules one firing transaction takes at most."""
CATCH_UP_LIMIT = 100
"""Missed ticks of one schedule that one firing makes runs for at most (``catch_up="all"``)."""

_COLUMNS = (
    "id, task_id, cron, timezone, payload, external_id, deduplication_key, declared, active,"
    " catch_up, next_tick_at, last_tick_at, created_at, updated_at"
)


class Schedules(Runs):
    """Schedules and the firing of their ticks."""

    async def create_schedule(self, new: NewSchedule) -> Schedule:
        key = new.deduplication_key
        if key is not None and key.startswith(DECLARED_KEY_PREFIX):
            raise ValidationError(
                f"deduplication_key {key!r}: keys starting with {DECLARED_KEY_PREFIX!r} are"
                " kept for the schedules tasks declare (@task(cron=...))"
            )
        payload = None if new.payload is None else dump_json(new.payload, "the payload")

        def op(now: int) -> Op[str]:
            next_tick = new.cron.next_after(now)
            fields = {
                "task_id": new.task_id,
                "cron": new.cron.expression,
                "timezone": new.cron.timezone,
                "payload": payload,
                "external_id": new.external_id,
                "catch_up": new.catch_up.value,
                "now": now,
            }
            if key is not None:
                found = yield rows(
                    "SELECT id, cron, timezone, active, next_tick_at FROM schedules"
                    f" WHERE deduplication_key = :key{self.q.for_update}",
                    key=key,
                )
                if found:  # Trigger.dev's deduplication: the schedule holding the key changes
                    row = found[0]
                    schedule_id, active = row["id"], bool(row["active"])
                    if (row["cron"], row["timezone"]) == (new.cron.expression, new.cron.timezone):
                        next_tick = row["next_tick_at"]  # as it was: a missed tick still due
                    yield count(
                        "UPDATE schedules SET task_id = :task_id, cron = :cron,"
                        " timezone = :timezone, payload = :payload, external_id = :external_id,"
                        " catch_up = :catch_up, next_tick_at = :next, updated_at = :now"
                        " WHERE id = :id",
                        id=schedule_id,
                        next=next_tick if active else None,
                        **fields,
                    )
                    yield from self._tell_tick(next_tick if active else None)
                    return str(schedule_id)
            schedule_id = new_schedule_id()
            yield count(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES (:id, :task_id, :cron, :timezone,"
                " :payload, :external_id, :key, :declared, :active, :catch_up, :next, NULL,"
                " :now, :now)",
                id=schedule_id,
                key=key,
                declared=False,
                active=True,
                next=next_tick,
                **fields,
            )
            yield from self._tell_tick(next_tick)
            return schedule_id

        return await self.get_schedule(await self._write(op))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        found = await self._read(
            rows(f"SELECT {_COLUMNS} FROM schedules WHERE id = :id", id=schedule_id)
        )
        if not found:
            raise _not_found(schedule_id)
        return schedule_from_row(found[0])

    async def list_schedules(self, task_id: str | None, page: int, per_page: int) -> SchedulePage:
        where = "WHERE task_id = :task_id" if task_id is not None else ""
        total = await self._read(
            rows(f"SELECT count(*) AS n FROM schedules {where}", task_id=task_id)
        )
        found = await self._read(
            rows(
                f"SELECT {_COLUMNS} FROM schedules {where}"
                " ORDER BY id DESC LIMIT :limit OFFSET :offset",
                task_id=task_id,
                limit=per_page,
                offset=(page - 1) * per_page,
            )
        )
        matched = int(total[0]["n"])
        return SchedulePage(
            data=[schedule_from_row(row) for row in found],
            pagination=SchedulePagination(
                current_page=page,
                total_pages=max(1, math.ceil(matched / per_page)),
                count=matched,
            ),
        )

    async def update_schedule(self, schedule_id: str, change: ScheduleChange) -> Schedule:
        payload = None if change.payload is None else dump_json(change.payload, "the payload")

        def op(now: int) -> Op[None]:
            row = yield from self._changeable(schedule_id)
            cron = Cron.of(change.cron or row["cron"], change.timezone or row["timezone"])
            moved = (cron.expression, cron.timezone) != (row["cron"], row["timezone"])
            next_tick = row["next_tick_at"]
            if moved and row["active"]:
                next_tick = cron.next_after(now)
            yield count(
                "UPDATE schedules SET task_id = :task_id, cron = :cron, timezone = :timezone,"
                " payload = :payload, external_id = :external_id, catch_up = :catch_up,"
                " next_tick_at = :next, updated_at = :now WHERE id = :id",
                id=schedule_id,
                task_id=change.task_id or row["task_id"],
                cron=cron.expression,
                timezone=cron.timezone,
                payload=row["payload"] if payload is None else payload,
                external_id=change.external_id or row["external_id"],
                catch_up=(change.catch_up or CatchUp(row["catch_up"])).value,
                next=next_tick,
                now=now,
            )
            if moved:
                yield from self._tell_tick(next_tick)

        await self._write(op)
        return await self.get_schedule(schedule_id)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Declared schedules too: one whose task no worker serves any more is deleted by
        no worker (only those serving a task keep its schedule), so it would stay listed."""

        def op(now: int) -> Op[None]:
            if not (yield alone(count("DELETE FROM schedules WHERE id = :id", id=schedule_id))):
                raise _not_found(schedule_id)

        await self._write(op, notify=False)

    async def set_schedule_active(self, schedule_id: str, active: bool) -> Schedule:
        def op(now: int) -> Op[None]:
            found = yield rows(
                f"SELECT cron, timezone, active FROM schedules WHERE id = :id{self.q.for_update}",
                id=schedule_id,
            )
            if not found:
                raise _not_found(schedule_id)
            row = found[0]
            if bool(row["active"]) == active:
                return
            next_tick = Cron(row["cron"], row["timezone"]).next_after(now) if active else None
            yield count(
                "UPDATE schedules SET active = :active, next_tick_at = :next, updated_at = :now"
                " WHERE id = :id",
                active=active,
                next=next_tick,
                now=now,
                id=schedule_id,
            )
            yield from self._tell_tick(next_tick)

        await self._write(op)
        return await self.get_schedule(schedule_id)

    async def declare_schedules(
        self, task_ids: list[str], declared: list[DeclaredSchedule]
    ) -> None:
        kept = {d.task_id for d in declared}
        undeclared = sorted(set(task_ids) - kept)

        def op(now: int) -> Op[None]:
            if undeclared:  # removed from the code: gone (its runs stay)
                yield count(
                    f"DELETE FROM schedules WHERE task_id {self.q.in_('tasks')}"
                    " AND declared = :declared",
                    tasks=undeclared,
                    declared=True,
                )
            if not declared:
                return
            same = "schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone"
            active = self.q.is_true("schedules.active")
            yield many(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES (:id, :task_id, :cron, :timezone,"
                " NULL, NULL, :key, :declared, :active, :catch_up, :next, NULL, :now, :now)"
                " ON CONFLICT (deduplication_key) WHERE deduplication_key IS NOT NULL"
                " DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone,"
                " catch_up = excluded.catch_up,"
                f" next_tick_at = CASE WHEN {same} THEN schedules.next_tick_at"
                f"  WHEN {active} THEN excluded.next_tick_at END,"
                f" updated_at = CASE WHEN {same} AND schedules.catch_up = excluded.catch_up"
                "  THEN schedules.updated_at ELSE excluded.updated_at END",
                [
                    {
                        "id": new_schedule_id(),
                        "task_id": d.task_id,
                        "cron": d.cron.expression,
                        "timezone": d.cron.timezone,
                        "key": f"{DECLARED_KEY_PREFIX}{d.task_id}",
                        "declared": True,
                        "active": True,
                        "catch_up": d.catch_up.value,
                        "next": d.cron.next_after(now),
                        "now": now,
                    }
                    for d in sorted(declared, key=lambda d: d.task_id)  # one lock order
                ],
            )
            ticks = [t for d in declared if (t := d.cron.next_after(now)) is not None]
            yield from self._tell_tick(min(ticks, default=None))

        await self._write(op)

    async def fire_due_schedules(self, task_ids: list[str], limit: int) -> ScheduleFiring:
        if not task_ids:
            return ScheduleFiring(runs=0, next_tick_ms=None)
        next_tick = await self._next_tick(task_ids)  # a read: most turns find nothing due
        if next_tick is None or next_tick > self.now_ms():
            return ScheduleFiring(runs=0, next_tick_ms=next_tick)
        q = self.q

        def op(now: int) -> Op[ScheduleFiring]:
            due = yield rows(
                "SELECT s.id, s.task_id, s.cron, s.timezone, s.payload, s.external_id,"
                " s.declared, s.catch_up, s.next_tick_at, s.last_tick_at, t.queue"
                " FROM schedules s LEFT JOIN tasks t ON t.id = s.task_id"
                f" WHERE {q.is_true('s.active')} AND s.next_tick_at <= :now"
                f" AND s.task_id {q.in_('tasks')}"
                f" ORDER BY s.next_tick_at, s.id LIMIT :limit{q.skip_locked('s')}",
                now=now,
                tasks=task_ids,
                limit=limit,
            )
            made, more = 0, len(due) == limit
            for row in due:
                runs, next_tick = yield from self._fire(row, now)
                made += runs
                more = more or (next_tick is not None and next_tick <= now)
            after = yield from self._next_tick_of(task_ids)
            return ScheduleFiring(runs=made, next_tick_ms=after, more_due=more)

        return await self._write(op, control=True)

    def _fire(self, row: RowLike, now: int) -> Op[tuple[int, int | None]]:
        """Make the runs of a due schedule's ticks (the last one, or all up to the limit) and
        move its next tick past them; returns how many runs were made, and its next tick
        (still due when more were missed than one firing catches up on)."""
        cron = Cron(row["cron"], row["timezone"])
        first = int(row["next_tick_at"])
        if CatchUp(row["catch_up"]) is CatchUp.ALL:
            ticks = cron.due(first, now, CATCH_UP_LIMIT)
        else:
            ticks = [cron.last_due(first, now)]
        previous = row["last_tick_at"]
        made = 0
        for tick in ticks:
            key = f"{row['id']}:{tick}"
            existing = yield from self._existing_by_key(
                "runs",
                "task_id = :task_id AND idempotency_key = :key",
                now,
                task_id=row["task_id"],
                key=key,
            )
            if existing is None:
                payload = scheduled_payload(row, cron, tick, previous)
                new = NewRun(row["task_id"], payload, idempotency_key=key, queue=row["queue"])
                yield from self._insert_run(new, now)
                made += 1
            previous = tick
        next_tick = cron.next_after(ticks[-1])
        yield count(
            "UPDATE schedules SET next_tick_at = :next, last_tick_at = :last WHERE id = :id",
            next=next_tick,
            last=ticks[-1],
            id=row["id"],
        )
        return made, next_tick

    async def _next_tick(self, task_ids: list[str]) -> int | None:
        """The earliest next tick of the active schedules of these tasks (a read)."""
        found = await self._read(self._earliest(task_ids), control=True)
        value = found[0]["t"] if found else None
        return None if value is None else int(value)

    def _next_tick_of(self, task_ids: list[str]) -> Op[int | None]:
        """``_next_tick`` inside a transaction (after its changes)."""
        found = yield self._earliest(task_ids)
        value = found[0]["t"] if found else None
        return None if value is None else int(value)

    def _earliest(self, task_ids: list[str]) -> Sql:
        return rows(earliest_tick(self.q), tasks=task_ids)

    def _changeable(self, schedule_id: str) -> Op[RowLike]:
        """The schedule's row, locked: ``ScheduleNotFoundError``, or a ``ValidationError``
        for a declared one (its task's code says what it is)."""
        found = yield rows(
            f"SELECT {_COLUMNS} FROM schedules WHERE id = :id{self.q.for_update}", id=schedule_id
        )
        if not found:
            raise _not_found(schedule_id)
        row: RowLike = found[0]
        if row["declared"]:
            raise ValidationError(
                f"schedule {schedule_id} is declared by task {row['task_id']!r}"
                " (@task(cron=...)): change it in the task's code; here it can only be"
                " activated, deactivated or deleted"
            )
        return row

    def _tell_tick(self, tick: int | None) -> Op[None]:
        """PostgreSQL: wake the timer loops that sleep past this new tick (no row trigger
        watches schedules); SQLite's commits wake every loop anyway."""
        if tick is not None:
            yield from self._tell(":payload", payload=f"t:{tick}")


def earliest_tick(q: Dialect) -> str:
    """The earliest next tick (``t``) of the active schedules of the tasks ``:tasks``."""
    return (
        "SELECT min(next_tick_at) AS t FROM schedules"
        f" WHERE {q.is_true('active')} AND task_id {q.in_('tasks')}"
    )


def schedule_from_row(row: RowLike) -> Schedule:
    cron = Cron(row["cron"], row["timezone"])
    next_tick = row["next_tick_at"] if row["active"] else None
    return Schedule(
        id=row["id"],
        task=row["task_id"],
        type=ScheduleType.DECLARATIVE if row["declared"] else ScheduleType.IMPERATIVE,
        active=bool(row["active"]),
        generator=CronGenerator(expression=cron.expression, description=cron.description),
        timezone=cron.timezone,
        deduplication_key=row["deduplication_key"],
        external_id=row["external_id"],
        next_run=from_ms_or_none(next_tick),
        last_run=from_ms_or_none(row["last_tick_at"]),
        upcoming=[from_ms(t) for t in cron.upcoming(next_tick)] if next_tick is not None else [],
        catch_up=CatchUp(row["catch_up"]),
        payload=load_json(row["payload"]),
        created_at=from_ms(row["created_at"]),
        updated_at=from_ms(row["updated_at"]),
    )


def scheduled_payload(row: RowLike, cron: Cron, tick: int, previous: int | None) -> Any:
    """The payload of a tick's run: ``ScheduledPayload``'s fields in Trigger.dev's names,
    times as JavaScript writes them (``2026-03-29T01:00:00.000Z``), the schedule's own
    payload under ``payload``; fields without a value are left out."""
    after = cron.next_after(tick)
    body: dict[str, Any] = {
        "type": (ScheduleType.DECLARATIVE if row["declared"] else ScheduleType.IMPERATIVE).value,
        "timestamp": iso_ms(tick),
        "timezone": cron.timezone,
        "scheduleId": row["id"],
        "upcoming": [] if after is None else [iso_ms(t) for t in cron.upcoming(after)],
    }
    if previous is not None:
        body["lastTimestamp"] = iso_ms(previous)
    if row["external_id"] is not None:
        body["externalId"] = row["external_id"]
    if row["payload"] is not None:
        body["payload"] = load_json(row["payload"])
    return body


def _not_found(schedule_id: str) -> ScheduleNotFoundError:
    return ScheduleNotFoundError(f"no schedule with id {schedule_id!r}")
