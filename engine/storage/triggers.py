"""Triggers: a run made or found by its idempotency key, debounced triggers, and many runs
made in one transaction (``create_runs``).

A debounced trigger (``NewRun.debounce``) looks for the DELAYED run of its task and key that
triggers may still join (``debounce_until`` is later than now): it pushes that run back to
``delay`` after itself and returns it, or makes one, due ``delay`` later. Looking and then
joining or making must not race with another trigger of the same key: SQLite has one writer
at a time; PostgreSQL takes a transaction-scoped advisory lock of the task and key first, in
a statement of its own (a READ COMMITTED statement sees what committed before it began, so
the look must start after the lock was granted, or two triggers could both make a run).

A run's ``debounce_until`` is the moment until which triggers join it: its due time, moved
with it, or the moment a trigger found that joining would push it past ``max_delay`` (it then
starts when due, and that trigger makes the next run). Once due, the timers make it QUEUED
and the next trigger makes a new run, whatever the lag of the timer loop.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import replace

from ..errors import ValidationError
from ..models import Run
from .base import NewRun
from .core import StorageCore
from .records import dump_json, run_from_row
from .sql import Op, Sql, alone, count, many, rows


class Triggers(StorageCore):
    """What makes runs from triggers (``Runs.create_run`` and ``create_runs``)."""

    async def create_runs(self, news: Sequence[NewRun]) -> list[Run]:
        """One write transaction for all of them: each as ``create_run`` would make or find
        it, in order (an item sees the runs the items before it made, by idempotency key or
        debounce key); the runs as they are once all were made. Items without either key are
        inserted together, one statement run for each (``many``), so a batch of 1,000 costs a
        few round trips on PostgreSQL, not 1,000. On PostgreSQL the debounce keys are locked
        first, in order, then the runs holding the items' idempotency keys, in id order (the
        lock order of ``core``), so two batches never wait on each other in a cycle."""
        for index, new in enumerate(news):  # refuse a bad payload before the transaction
            try:
                dump_json(new.payload, "the payload")
            except ValidationError as exc:
                raise ValidationError(f"item {index}: {exc}") from None
        keys = sorted({(n.task_id, n.debounce.key) for n in news if n.debounce is not None})
        keyed = sorted({(n.task_id, n.idempotency_key) for n in news if n.idempotency_key})

        def op(now: int) -> Op[list[Run]]:
            if self.q.row_locks:
                for task_id, key in keys:
                    yield self._debounce_lock(task_id, key)
                if keyed:
                    yield rows(
                        "SELECT id FROM runs WHERE (task_id, idempotency_key) IN"
                        " (SELECT * FROM unnest(:tasks::text[], :keys::text[]))"
                        " ORDER BY id FOR UPDATE",
                        tasks=[task_id for task_id, _ in keyed],
                        keys=[key for _, key in keyed],
                    )
            made: list[tuple[str, bool]] = []
            pending: list[Sql] = []
            for new in news:
                if new.idempotency_key is None and new.debounce is None:
                    insert = self._new_run(new, now)
                    pending.append(insert)
                    made.append((insert.params["id"], False))
                    continue
                yield from self._insert_runs(pending, now)  # in order: ids grow with items
                pending = []
                run = yield from self._trigger(new, now, locked=True)
                made.append((run.id, run.is_cached))
            yield from self._insert_runs(pending, now)
            found = yield rows(
                f"SELECT * FROM runs WHERE id {self.q.in_('ids')}",
                ids=sorted({run_id for run_id, _ in made}),
            )
            runs = {row["id"]: run_from_row(row) for row in found}
            return [runs[run_id].model_copy(update={"is_cached": c}) for run_id, c in made]

        return await self._write(op)

    def _insert_runs(self, inserts: list[Sql], now: int) -> Op[None]:
        """The INSERTs of ``_new_run`` (with their ``created`` events), run as few statements:
        one per text, each run once per run."""
        for text, group in itertools.groupby(inserts, key=lambda sql: sql.text):
            batch = [sql.params for sql in group]
            yield many(text, batch)
            if not self.q.writes_in_with:  # else each INSERT wrote its event too
                yield from self._event([p["id"] for p in batch], "created", now)

    def _trigger(
        self, new: NewRun, now: int, *, whole: bool = False, locked: bool = False
    ) -> Op[Run]:
        """The run a trigger makes, or the one it finds (``is_cached``): the live run with its
        idempotency key, else the DELAYED run its debounce key joins, else a new run.
        ``whole``: this is the whole operation (a plain trigger is then one statement on
        PostgreSQL); ``locked``: the debounce key is locked already (``create_runs``)."""
        if new.idempotency_key is not None:
            row = yield from self._existing_by_key(
                "runs",
                "task_id = :task_id AND idempotency_key = :key",
                now,
                task_id=new.task_id,
                key=new.idempotency_key,
            )
            if row is not None:
                return run_from_row(row).model_copy(update={"is_cached": True})
        if new.debounce is not None:
            return (yield from self._debounced(new, now, locked=locked))
        if whole and new.idempotency_key is None and self.q.writes_in_with:
            return run_from_row((yield alone(self._new_run(new, now)))[0])  # with its event
        return run_from_row((yield from self._insert_run(new, now)))

    def _debounced(self, new: NewRun, now: int, *, locked: bool) -> Op[Run]:
        """Join the DELAYED run of this task and debounce key, pushed back to ``delay`` after
        now (never earlier than it was due: an earlier trigger asked for its own delay), or
        make it. A join that would push it past ``max_delay`` after its first trigger leaves
        it due as it is, closed to joins, and makes a new run."""
        debounce = new.debounce
        assert debounce is not None
        if self.q.row_locks and not locked:
            yield self._debounce_lock(new.task_id, debounce.key)
        found = yield rows(
            "SELECT * FROM runs WHERE task_id = :task_id AND debounce_key = :key"
            " AND status = 'DELAYED' AND debounce_until > :now"
            f" ORDER BY id DESC LIMIT 1{self.q.for_update}",
            task_id=new.task_id,
            key=debounce.key,
            now=now,
        )
        due = now + debounce.delay_ms
        if found:
            row = found[0]
            cap = debounce.max_delay_ms
            if cap is None or due <= row["created_at"] + cap:
                return (yield from self._push(new, row["id"], max(due, row["available_at"]), now))
            yield count(
                "UPDATE runs SET debounce_until = :now WHERE id = :id", now=now, id=row["id"]
            )
        inserted = yield from self._insert_run(replace(new, delayed_until_ms=due), now)
        marked = yield rows(
            "UPDATE runs SET debounce_key = :key, debounce_until = available_at"
            " WHERE id = :id RETURNING *",
            key=debounce.key,
            id=inserted["id"],
        )
        return run_from_row(marked[0])

    def _push(self, new: NewRun, run_id: str, due: int, now: int) -> Op[Run]:
        """Move a debounced run's start (and its time to live with it) to ``due``; a trailing
        trigger's data replaces the run's. Later, never earlier: no timer loop sleeping to
        the old time needs waking (it wakes then, finds nothing due, and sleeps on)."""
        assert new.debounce is not None
        data = ""
        params = {}
        if new.debounce.trailing:
            data = (
                ", payload = :payload, tags = " + self.q.jsonb("tags") + ", metadata = :metadata,"
                " max_attempts = :max_attempts, max_duration_ms = :max_duration_ms"
            )
            params = {
                "payload": dump_json(new.payload, "the payload"),
                "tags": json.dumps(new.tags),
                "metadata": None
                if new.metadata is None
                else dump_json(new.metadata, "the metadata"),
                "max_attempts": new.max_attempts,
                "max_duration_ms": new.max_duration_ms,
            }
        pushed = yield rows(
            "UPDATE runs SET expires_at = expires_at + (:due - available_at),"
            " available_at = :due, delayed_until = :due, debounce_until = :due,"
            f" updated_at = :now{data} WHERE id = :id RETURNING *",
            due=due,
            now=now,
            id=run_id,
            **params,
        )
        return run_from_row(pushed[0]).model_copy(update={"is_cached": True})

    def _debounce_lock(self, task_id: str, key: str) -> Sql:
        """PostgreSQL: the transaction-scoped lock of a task's debounce key (taken before any
        run row, so it adds no cycle to the lock order)."""
        return rows(
            "SELECT pg_advisory_xact_lock(hashtext('waitpoint-debounce:' || :task_id"
            " || ':' || :key))",
            task_id=task_id,
            key=key,
        )
