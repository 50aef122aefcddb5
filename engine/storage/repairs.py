"""Runs sent round again by hand: a failed run retried from its journal, a run replayed as a
new run, and a run forked from one of its durable calls.

Each is one write transaction, and each leaves a mark on the timeline of every run it
touches: ``retried`` on a retried run; ``replayed`` / ``forked`` on the original (with the new
run's id) and ``origin_run_id`` / ``origin`` on the new run, whose ``created`` event names the
original too.
"""

from __future__ import annotations

from typing import Any

from ..errors import RunStateError, ValidationError
from ..journal import CallKey
from ..models import Run, RunStatus
from .base import NewRun
from .records import RowLike, load_json, run_from_row
from .runs import Runs
from .sql import Op, count, many, rows


class Repairs(Runs):
    """Retry, replay and fork."""

    async def retry_finished_run(self, run_id: str) -> Run:
        """Queue a FAILED, CRASHED or TIMED_OUT run for a new attempt from its journal.

        Journaled calls replay; the step errors that failed its last attempt were marked to
        run again when it failed (``finish_run``'s ``rerun``), so the failing step runs again.
        The retry policy counts afresh from here (``attempt_base``), the run gets its whole
        ``max_duration`` again (``executing_ms``) and its crash count starts over; the lease
        epoch moves on, so nothing an old attempt still writes lands. A pause it kept after it
        finished ends: a retry by hand asks for it to run.
        """

        def op(now: int) -> Op[None]:
            row = yield from self._run_row(run_id, "status")
            status = RunStatus(row["status"])
            if not status.is_failure:  # nothing failed: ``replay`` makes a new run of any
                raise RunStateError(
                    f"run {run_id} is {status.value}: only a FAILED, CRASHED or TIMED_OUT run"
                    " can be retried (replay makes a new run of any run)"
                )
            yield from self._event([run_id], "retried", now, {"status": status.value})
            yield count(
                "UPDATE runs SET status = 'QUEUED', available_at = :now, updated_at = :now,"
                " finished_at = NULL, output = NULL, error = NULL, expires_at = NULL,"
                " attempt_base = attempt_count, attempt_count = attempt_count + 1,"
                " executing_ms = 0, recovery_count = 0, lease_epoch = lease_epoch + 1,"
                " lease_owner = NULL, lease_expires_at = NULL, paused_at = NULL WHERE id = :id",
                now=now,
                id=run_id,
            )

        await self._write(op)
        return await self.get_run(run_id)

    async def replay_run(
        self, run_id: str, payload: Any = None, *, new_payload: bool = False
    ) -> Run:
        """A new run of the same task with the original's payload (``payload`` if
        ``new_payload``), tags and trigger options, and an empty journal."""

        def op(now: int) -> Op[RowLike]:
            row = yield from self._run_row(run_id, "*")
            new = self._copy(row, "replay", payload if new_payload else load_json(row["payload"]))
            made = yield from self._insert_run(new, now)
            yield from self._event([run_id], "replayed", now, {"runId": made["id"]})
            return made

        return run_from_row(await self._write(op))

    async def fork_run(self, run_id: str, from_call: str) -> Run:
        """A new run of the same task and payload whose journal is the original's up to (not
        including) the first journaled call ``from_call`` names: from there on it runs anew.

        ``from_call`` is a step's name (``notify``: its first call) or a journal key
        (``step:notify#1``, ``wait_for_token:waitpoint_abc#0``). The new run keeps the
        original's version: its journal was written by that code.
        """

        def op(now: int) -> Op[RowLike]:
            row = yield from self._run_row(run_id, "*")
            journal = yield rows(
                "SELECT key, attempt FROM journal WHERE run_id = :id"
                f" ORDER BY {self.q.journal_order}",
                id=run_id,
            )
            keys = [entry["key"] for entry in journal]
            cut = _fork_point(run_id, from_call, keys)
            new = self._copy(row, "fork", load_json(row["payload"]))
            made = yield from self._insert_run(new, now)
            if cut:  # entry by entry: a key journaled again after the cut is not copied
                yield many(
                    "INSERT INTO journal (run_id, key, attempt, position, is_error, value,"
                    " duration_ms, seq, created_at, rerun) SELECT :new_id, key, attempt,"
                    " position, is_error, value, duration_ms, seq, created_at, rerun"
                    " FROM journal WHERE run_id = :id AND key = :key AND attempt = :at",
                    [
                        {"new_id": made["id"], "id": run_id, "key": e["key"], "at": e["attempt"]}
                        for e in journal[:cut]
                    ],
                )
            detail = {"runId": made["id"], "from": keys[cut]}
            yield from self._event([run_id], "forked", now, detail)
            return made

        return run_from_row(await self._write(op))

    @staticmethod
    def _copy(row: RowLike, origin: str, payload: Any) -> NewRun:
        """A new run of the task ``row`` ran, with its trigger options (not its idempotency
        key, delay or ttl: those were about the first trigger)."""
        return NewRun(
            task_id=row["task_id"],
            payload=payload,
            tags=load_json(row["tags"]) or [],
            max_attempts=row["max_attempts"],
            max_duration_ms=row["max_duration_ms"],
            queue=row["queue"],
            concurrency_key=row["concurrency_key"],
            priority=row["priority"],
            rate_limit_key=row["rate_limit_key"],
            origin_run_id=row["id"],
            origin=origin,
            version=row["version"] if origin == "fork" else None,
        )


def _fork_point(run_id: str, from_call: str, keys: list[str]) -> int:
    """How many of the journal's ``keys`` (in journal order) a fork from ``from_call`` keeps."""
    wanted = from_call.strip()
    if not wanted:
        raise ValidationError("from_step must name a step (or give a journal key)")
    for index, key in enumerate(keys):
        call = CallKey.parse(key)
        if key == wanted or (call.kind == "step" and call.name == wanted):
            return index
    steps = sorted({CallKey.parse(k).name for k in keys if CallKey.parse(k).kind == "step"})
    listing = ", ".join(steps) if steps else "none"
    raise ValidationError(
        f"run {run_id} journaled no call {wanted!r} to fork from (its steps: {listing})"
    )
