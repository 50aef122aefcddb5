"""What the database holds now, in a few aggregate figures: ``engine.stats()``,
``waitpoint stats`` and the gauges of the API's ``GET /metrics``.

They are read from the database at each call, never kept in a process, so every API process
of one database reports the same numbers and any of them may be scraped. Four read-only
statements, each a ``GROUP BY`` or a count over an index but the first: counting runs by
task and status reads every run, so its cost grows with the runs kept (a retention,
``WAITPOINT_RETENTION``, bounds it). Nothing here takes a lock or writes.
"""

from __future__ import annotations

from ..clock import from_ms
from ..models import EXPIRING_SOON, QueueDepth, RunCount, RunStatus, StatsSnapshot
from .core import StorageCore
from .sql import Op, rows
from .workers import _LIVE

_SOON_MS = int(EXPIRING_SOON.total_seconds() * 1000)


class Stats(StorageCore):
    """Aggregate figures of runs, queues, tokens, approvals and workers."""

    async def stats(self) -> StatsSnapshot:
        # one statement at a time, each seeing what committed before it: figures to show,
        # not to decide on (the runs counted and the queues measured may differ by a commit)
        return await self._read_op(self._stats)

    def _stats(self, now: int) -> Op[StatsSnapshot]:
        counted = yield rows(
            "SELECT task_id, status, count(*) AS n FROM runs"
            " GROUP BY task_id, status ORDER BY task_id, status"
        )
        queued = yield rows(
            "SELECT task_id, queue, count(*) AS n,"
            " sum(CASE WHEN available_at <= :now THEN 1 ELSE 0 END) AS due,"
            " min(CASE WHEN available_at <= :now THEN available_at END) AS oldest"
            " FROM runs WHERE status = 'QUEUED' GROUP BY task_id, queue ORDER BY task_id, queue",
            now=now,
        )
        waiting = yield rows(
            "SELECT kind, count(*) AS n,"
            " sum(CASE WHEN timeout_at <= :soon THEN 1 ELSE 0 END) AS soon"
            " FROM waitpoints WHERE kind IN ('MANUAL', 'APPROVAL') AND status = 'WAITING'"
            " GROUP BY kind",
            soon=now + _SOON_MS,
        )
        workers = yield rows(f"SELECT count(*) AS n FROM workers WHERE {_LIVE}", now=now)
        kinds = {r["kind"]: r for r in waiting}
        tokens, approvals = kinds.get("MANUAL"), kinds.get("APPROVAL")
        return StatsSnapshot(
            at=from_ms(now),
            runs=[
                RunCount(task_id=r["task_id"], status=RunStatus(r["status"]), count=int(r["n"]))
                for r in counted
            ],
            queues=[
                QueueDepth(
                    task_id=r["task_id"],
                    queue=r["queue"],
                    depth=int(r["n"]),
                    due=int(r["due"] or 0),
                    oldest_age_seconds=(
                        0.0 if r["oldest"] is None else max(0, now - int(r["oldest"])) / 1000
                    ),
                )
                for r in queued
            ],
            tokens_waiting=int(tokens["n"]) if tokens else 0,
            tokens_expiring_soon=int(tokens["soon"] or 0) if tokens else 0,
            approvals_waiting=int(approvals["n"]) if approvals else 0,
            live_workers=int(workers[0]["n"]) if workers else 0,
        )
