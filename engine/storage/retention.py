"""Retention: finished runs and closed tokens deleted once they are older than a duration.

With ``WAITPOINT_RETENTION`` every worker purges a batch now and then (``Worker``);
``waitpoint purge --older-than 30d`` (``Engine.purge``) purges once. A batch is one short
transaction, so SQLite's writer and PostgreSQL's row locks are held briefly. What goes:

- a finished run (a final status, finished before the cutoff) and every row keyed by its id:
  its journal, its events, its messages, its edges (``run_waits``), the waitpoints it made
  for its own waits (sleeps, group deadlines, receives, approvals and waits on child runs:
  every kind but a token, which only the run that made them waits on) and its approvals'
  approvers, votes and notices;
- a closed token (a MANUAL waitpoint closed before the cutoff) and its late completions.

What stays, however old, because someone may still read it:

- a finished run whose parent has not finished (the parent may read its child), one with a
  child that has not finished (the child names it as its parent), and one that an unfinished
  run waits on through a RUN waitpoint (a child found by its idempotency key has a second
  parent besides the one that made it);
- a token an unfinished run waits on (an edge to it), or one made by a run that has not
  finished (the run's journal holds its id: it may wait on it next).

A token made by a run is not deleted with the run: anyone holding its id may still complete
it, so it goes once it is closed and old, like any token. None of these conditions changes
as rows are deleted, so a count (``purgeable``) is what purging at that moment would delete.

PostgreSQL: a batch takes its runs and tokens with ``FOR UPDATE SKIP LOCKED``, so workers
purging at once take different rows and never wait on each other or on the transactions
holding a row (a run being retried, a token being completed); it locks runs before
waitpoints, as every transaction does (docs/architecture.md, "Lock order").
"""

from __future__ import annotations

from ..errors import ValidationError
from ..models import PurgeCount
from .core import StorageCore
from .sql import FINAL, Op, Sql, combined, count, rows

PURGE_BATCH = 500
"""Runs (and, separately, tokens) one purge transaction deletes at most, by default."""
MAX_PURGE_BATCH = 5_000
"""The most a caller may ask one transaction to delete (a longer one holds the writer)."""


class Retention(StorageCore):
    """Deleting what is older than the retention, in small batches."""

    @property
    def _old_runs(self) -> str:
        """The runs a purge deletes (``r``; ``:cutoff``), by the rules of the module docstring.
        Found by the ``runs_finished`` index, oldest first (``unindexed``: SQLite would take
        ``runs_status`` for the status, and sort every finished run to find the oldest)."""
        return (
            f"r.finished_at < :cutoff AND {self.q.unindexed('r.status')} IN {FINAL}"
            " AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_run_id"
            f"  AND p.status NOT IN {FINAL})"
            " AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.parent_run_id = r.id"
            f"  AND c.status NOT IN {FINAL})"
            " AND NOT EXISTS (SELECT 1 FROM waitpoints w JOIN runs a ON a.id = w.created_by_run"
            f"  WHERE w.child_run_id = r.id AND a.status NOT IN {FINAL})"
        )

    @property
    def _old_tokens(self) -> str:
        """The tokens a purge deletes (``w``; ``:cutoff``), by the ``waitpoints_closed``
        index (``status <> 'WAITING'`` is its condition, word for word)."""
        return (
            "w.status <> 'WAITING' AND w.completed_at < :cutoff"
            f" AND {self.q.unindexed('w.kind')} = 'MANUAL'"
            " AND NOT EXISTS (SELECT 1 FROM run_waits rw WHERE rw.waitpoint_id = w.id)"
            " AND NOT EXISTS (SELECT 1 FROM runs m WHERE m.id = w.created_by_run"
            f"  AND m.status NOT IN {FINAL})"
        )

    async def purge(self, older_than_ms: int, limit: int) -> PurgeCount:
        """Delete at most ``limit`` finished runs (with their rows) and ``limit`` closed tokens
        older than ``older_than_ms``, oldest first, in one transaction: fewer than ``limit``
        of both means nothing more was due when it ran."""
        _check(older_than_ms, limit)

        def op(now: int) -> Op[PurgeCount]:
            cutoff = now - older_than_ms
            found = yield self._oldest("runs r", self._old_runs, "r.finished_at", cutoff, limit)
            run_ids = [r["id"] for r in found]
            runs = (yield from self._delete_runs(run_ids)) if run_ids else 0
            found = yield self._oldest(
                "waitpoints w", self._old_tokens, "w.completed_at", cutoff, limit
            )
            token_ids = [r["id"] for r in found]
            tokens = (yield from self._delete_tokens(token_ids)) if token_ids else 0
            return PurgeCount(runs=runs, tokens=tokens)

        return await self._write(op, notify=False)

    async def purgeable(self, older_than_ms: int) -> PurgeCount:
        """How many runs and tokens ``purge`` would delete now, in all batches."""
        _check(older_than_ms, 1)
        found = await self._read(
            rows(
                f"SELECT (SELECT count(*) FROM runs r WHERE {self._old_runs}) AS runs,"
                f" (SELECT count(*) FROM waitpoints w WHERE {self._old_tokens}) AS tokens",
                cutoff=self.now_ms() - older_than_ms,
            )
        )
        return PurgeCount(runs=int(found[0]["runs"]), tokens=int(found[0]["tokens"]), dry_run=True)

    def _oldest(self, source: str, where: str, age: str, cutoff: int, limit: int) -> Sql:
        """The ids of the ``limit`` rows of ``source`` that ``where`` selects, oldest by the
        column ``age`` first (PostgreSQL: of those no other transaction holds, locked until
        the batch commits)."""
        return rows(
            f"SELECT id FROM {source} WHERE {where}"
            f" ORDER BY {age} LIMIT :limit{self.q.skip_locked()}",
            cutoff=cutoff,
            limit=limit,
        )

    def _delete_runs(self, ids: list[str]) -> Op[int]:
        """The runs and every row keyed by their ids; returns how many runs went."""
        q = self.q
        parts = {
            "journal": count(f"DELETE FROM journal WHERE run_id {q.in_('ids')}", ids=ids),
            "events": count(f"DELETE FROM run_events WHERE run_id {q.in_('ids')}", ids=ids),
            "messages": count(f"DELETE FROM run_messages WHERE run_id {q.in_('ids')}", ids=ids),
            "edges": count(f"DELETE FROM run_waits WHERE run_id {q.in_('ids')}", ids=ids),
            # an approval's rows go with the run that requested it (children before the
            # approval: SQLite runs these in turn)
            **{
                table: count(
                    f"DELETE FROM {table} WHERE approval_id IN"
                    f" (SELECT id FROM approvals WHERE run_id {q.in_('ids')})",
                    ids=ids,
                )
                for table in ("approval_votes", "approval_approvers", "approval_notices")
            },
            "approvals": count(f"DELETE FROM approvals WHERE run_id {q.in_('ids')}", ids=ids),
            # created_by_key: the waitpoints_made_by index holds only rows that have one (every
            # waitpoint a run's call made has)
            "made": count(
                f"DELETE FROM waitpoints WHERE created_by_run {q.in_('ids')}"
                " AND created_by_key IS NOT NULL AND kind <> 'MANUAL'",
                ids=ids,
            ),
            "gone": count(f"DELETE FROM runs WHERE id {q.in_('ids')}", ids=ids),
        }
        return (yield from self._all_of(parts))

    def _delete_tokens(self, ids: list[str]) -> Op[int]:
        """The tokens and their late completions; returns how many tokens went."""
        q = self.q
        parts = {
            "late": count(f"DELETE FROM late_completions WHERE token_id {q.in_('ids')}", ids=ids),
            "gone": count(f"DELETE FROM waitpoints WHERE id {q.in_('ids')}", ids=ids),
        }
        return (yield from self._all_of(parts))

    def _all_of(self, parts: dict[str, Sql]) -> Op[int]:
        """Independent deletes (none reads what another deletes), the last one ``gone``: one
        statement where a statement can write several tables, else one each. Returns how
        many rows ``gone`` deleted."""
        if self.q.writes_in_with:
            parts = {**parts, "gone": _returning_id(parts["gone"])}
            found = yield combined(parts, "SELECT count(*) AS n FROM gone")
            return int(found[0]["n"])
        deleted = 0
        for name, sql in parts.items():
            changed = yield sql
            if name == "gone":
                deleted = int(changed)
        return deleted


def _returning_id(sql: Sql) -> Sql:
    """``sql`` (a DELETE) returning the ids it deleted, for a ``WITH`` item to count."""
    return rows(f"{sql.text} RETURNING id", **sql.params)


def _check(older_than_ms: int, limit: int) -> None:
    """Refuse what would delete everything finished (no age), or nothing (no batch)."""
    if older_than_ms <= 0:
        raise ValidationError(f"the age to purge after must be positive, not {older_than_ms} ms")
    if not 1 <= limit <= MAX_PURGE_BATCH:
        raise ValidationError(f"a purge batch is 1 to {MAX_PURGE_BATCH} rows, not {limit}")
