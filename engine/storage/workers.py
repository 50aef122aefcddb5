"""The workers serving a database: one row each, with a heartbeat, for ``waitpoint workers``
and for saying why a run stays QUEUED ("no live worker serves task 'boom'").

A worker's row is written when it registers its tasks (``register_tasks``, the same
transaction) and its heartbeat with every lease renewal (``renew_leases``: the statement rides
in that transaction, so a heartbeat costs no round trip of its own while runs execute, and an
idle worker writes one small transaction per third of a lease). A worker that stops cleanly
marks its row stopped; a killed one falls silent and stops being live after ``LIVE_LEASES``
lease periods. Rows go a week after their last heartbeat.
"""

from __future__ import annotations

import time

from ..clock import from_ms, from_ms_or_none
from ..defaults import LIVE_LEASES
from ..models import TaskWorkers, WorkerInfo
from .base import NewWorker
from .core import StorageCore
from .records import RowLike, dump_json, load_json
from .sql import Op, Sql, alone, count, rows

GONE_KEPT_MS = 7 * 86_400_000
"""How long after its last heartbeat a worker's row is kept (for "last seen 3 days ago")."""

_LIVE = f"stopped_at IS NULL AND heartbeat_at > :now - {LIVE_LEASES} * lease_ms"
"""The live workers (``:now``: the database's time)."""

SERVING_SECONDS = 5.0
"""How long ``serving()`` keeps what it read while notifications come: a worker that fell
silent leaves the turns within this of its heartbeat's ageing out."""


class Workers(StorageCore):
    """The worker rows: recorded at start, beaten with lease renewals, read by the CLI."""

    def _record_worker(self, worker: NewWorker, now: int) -> Op[None]:
        """The worker's row (its first heartbeat); rows silent for a week go."""
        yield count("DELETE FROM workers WHERE heartbeat_at < :oldest", oldest=now - GONE_KEPT_MS)
        yield count(
            "INSERT INTO workers"
            " (id, tasks, versions, concurrency, lease_ms, started_at, heartbeat_at)"
            " VALUES (:id, :tasks, :versions, :concurrency, :lease_ms, :now, :now)"
            " ON CONFLICT (id) DO UPDATE SET tasks = excluded.tasks,"
            " versions = excluded.versions,"
            " concurrency = excluded.concurrency, lease_ms = excluded.lease_ms,"
            " heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
            id=worker.id,
            tasks=dump_json(sorted(worker.tasks)),
            versions=dump_json(dict(sorted(worker.versions.items()))) if worker.versions else None,
            concurrency=worker.concurrency,
            lease_ms=worker.lease_ms,
            now=now,
        )

    @staticmethod
    def _heartbeat(owner: str, now: int) -> Sql:
        """The worker's heartbeat (a statement of ``renew_leases``)."""
        return count(
            "UPDATE workers SET heartbeat_at = :now WHERE id = :owner AND stopped_at IS NULL",
            now=now,
            owner=owner,
        )

    async def stop_worker(self, worker_id: str) -> None:
        def op(now: int) -> Op[None]:
            yield alone(
                count(
                    "UPDATE workers SET stopped_at = :now, heartbeat_at = :now WHERE id = :id",
                    now=now,
                    id=worker_id,
                )
            )

        await self._write(op, notify=False)

    async def list_workers(self, *, include_gone: bool = False) -> list[WorkerInfo]:
        now = self.now_ms()
        where = "" if include_gone else f" WHERE {_LIVE}"
        found = await self._read(
            rows(
                f"SELECT *, CASE WHEN {_LIVE} THEN 1 ELSE 0 END AS live FROM workers{where}"
                " ORDER BY heartbeat_at DESC, id",
                now=now,
            )
        )
        if not found:
            return []
        held = await self._read(
            rows(
                "SELECT lease_owner, count(*) AS n FROM runs WHERE status = 'EXECUTING'"
                f" AND lease_owner {self.q.in_('ids')} GROUP BY lease_owner",
                ids=[r["id"] for r in found],
            )
        )
        running = {r["lease_owner"]: int(r["n"]) for r in held}
        return [_worker_from_row(r, running.get(r["id"], 0)) for r in found]

    async def task_workers(self, task_id: str) -> TaskWorkers:
        now = self.now_ms()
        found = await self._read(
            rows(
                "SELECT id, tasks, versions, heartbeat_at,"
                f" CASE WHEN {_LIVE} THEN 1 ELSE 0 END AS live"
                " FROM workers ORDER BY heartbeat_at DESC, id",
                now=now,
            )
        )
        serving = [r for r in found if task_id in load_json(r["tasks"])]
        # a worker registered the task then, at least (its row may be gone since, or the task
        # registered before workers had rows)
        registered = await self._read(
            rows("SELECT updated_at FROM tasks WHERE id = :id", id=task_id)
        )
        seen = [r["heartbeat_at"] for r in serving] + [r["updated_at"] for r in registered]
        live = [r for r in serving if r["live"]]
        versions = {r["id"]: _versions(r).get(task_id) for r in live}
        return TaskWorkers(
            task_id=task_id,
            live_workers=[r["id"] for r in live],
            last_seen_at=from_ms(max(seen)) if seen else None,
            checked_at=from_ms(now),
            live_versions={worker: v for worker, v in versions.items() if v is not None},
        )

    async def serving(self) -> dict[str, list[str]]:
        """Read again once ``SERVING_SECONDS`` old, or when a worker started or stopped
        (PostgreSQL tells: a 'workers' notification), so a worker may ask every second.
        Only PostgreSQL numbers its notifications: elsewhere there are no turns to take."""
        if not self.q.remote:
            return {}
        cached = self._serving
        if self._following and cached and time.monotonic() - cached[0] < SERVING_SECONDS:
            return cached[1]
        read_at = time.monotonic()
        found = await self._read(
            rows(f"SELECT id, tasks FROM workers WHERE {_LIVE} ORDER BY id", now=self.now_ms())
        )
        by_task: dict[str, list[str]] = {}
        for row in found:
            for task_id in load_json(row["tasks"]):
                by_task.setdefault(task_id, []).append(row["id"])
        self._serving = (read_at, by_task)
        return by_task


def _worker_from_row(row: RowLike, running: int) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        tasks=load_json(row["tasks"]),
        concurrency=row["concurrency"],
        running=running,
        lease_ms=row["lease_ms"],
        started_at=from_ms(row["started_at"]),
        heartbeat_at=from_ms(row["heartbeat_at"]),
        stopped_at=from_ms_or_none(row["stopped_at"]),
        live=bool(row["live"]),
        versions=_versions(row),
    )


def _versions(row: RowLike) -> dict[str, str]:
    """The versions a worker's row says it serves its tasks at (none: an empty dict; so in a
    row of a schema before SQLite's migration 7, PostgreSQL's 9)."""
    try:
        text = row["versions"]
    except (IndexError, KeyError):
        return {}
    found: dict[str, str] = load_json(text) or {}
    return found
