"""A wait on a group: tokens, messages and other runs' ends, ``all`` or ``any``, with a deadline.

One transaction, fenced by the lease epoch like every wait (``waits.py``): the tokens are
share-locked and each other member gets a waitpoint of its own, made once per (run, journal
key, position) so a replay waits on the same ones:

- a message member is a MESSAGE waitpoint of the topic, made COMPLETED if a message already
  waits for the run, else WAITING until a send completes it (``messages.py``);
- a run member is a RUN waitpoint on that run, closed with its result when it finishes (made
  closed if it already has).

How the group ended is decided by ``groups.group_outcome`` from times alone. Only then is a
message taken: the one of each message member the snapshot shows closed, delivered and
journaled in the same transaction, so a message is consumed exactly when the group closes
with it. A message member left WAITING is cancelled (a later send then waits for the next
``receive``); one a send closed after the group did keeps its message undelivered, for the
next ``receive`` of the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..clock import from_ms
from ..durations import Deadline
from ..errors import RunNotFoundError, StorageError, TokenNotFoundError
from ..journal import child_key
from ..models import WaitpointStatus
from .base import GroupMember, JournalWrite
from .groups import group_outcome
from .messages import Messages
from .records import RowLike, dump_json, token_from_row
from .sql import Op, count, rows


class GroupWaits(Messages):
    """Blocking a run on a group of waitpoints."""

    async def wait_on_group(
        self,
        members: Sequence[str | GroupMember],
        mode: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
    ) -> dict[str, Any] | None:
        token_ids = [m for m in members if isinstance(m, str)]

        def op(now: int) -> Op[dict[str, Any] | None]:
            if token_ids:
                found = yield from self._fenced_waitpoints(journal, token_ids, "MANUAL")
                found = yield from self._closed_when_due(found, now)
            else:
                yield from self._fence(journal.run_id, journal.epoch)
                found = []
            by_id = {row["id"]: row for row in found}
            missing = [tid for tid in token_ids if tid not in by_id]
            if missing:
                raise TokenNotFoundError(f"no waitpoint token with id {missing[0]!r}")
            waitpoints: list[RowLike] = []
            for index, member in enumerate(members):
                if isinstance(member, str):
                    waitpoints.append(by_id[member])
                else:
                    made = yield from self._member_waitpoint(journal, index, member, now)
                    waitpoints.append(made)
            tokens = [token_from_row(row) for row in waitpoints]
            ids = [t.id for t in tokens]
            modes = {t.id: mode for t in tokens if t.is_waiting}
            until = None
            if deadline is not None:
                timer = yield from self._datetime_waitpoint(journal, deadline, now)
                until = from_ms(timer["timeout_at"])
                ids.append(timer["id"])
                modes[timer["id"]] = "any"
            outcome = group_outcome(tokens, mode, until, now)
            if outcome.snapshot is None:
                yield from self._block(journal, modes, elapsed_ms, now)
                return None
            snapshot = outcome.snapshot
            if len(token_ids) < len(members):
                yield from self._settle_members(journal.run_id, members, snapshot, now)
            yield from self._journal_and_unblock(journal, snapshot, ids, now, "group")
            return snapshot

        return await self._write(op, notify=False)

    def _member_waitpoint(
        self, journal: JournalWrite, index: int, member: GroupMember, now: int
    ) -> Op[RowLike]:
        """The waitpoint of a group's message or run member, made once (see module doc)."""
        key = child_key(journal.key, index)
        if member.kind == "run":
            made = yield from self._made_by(journal.run_id, key)
            if made is not None:
                return made
            found = yield rows("SELECT * FROM runs WHERE id = :id", id=member.ref)
            if not found:
                raise RunNotFoundError(f"no run with id {member.ref!r} to wait for")
            return (yield from self._run_waitpoint(journal.run_id, key, found[0], now))
        schema = member.data_schema
        schema_text = None if schema is None else dump_json(schema, "the schema")
        return (
            yield from self._message_waitpoint(
                journal.run_id, key, member.ref, None, schema_text, now
            )
        )

    def _settle_members(
        self,
        run_id: str,
        members: Sequence[str | GroupMember],
        snapshot: dict[str, Any],
        now: int,
    ) -> Op[None]:
        """The group closed: each message member it closed with takes its message (into the
        snapshot), those still WAITING are cancelled; the snapshot says what each member is."""
        shown = snapshot["tokens"]
        for member, token in zip(members, shown, strict=True):
            if not isinstance(member, GroupMember) or member.kind != "message":
                continue
            if token["status"] != WaitpointStatus.WAITING:
                message = yield from self._take_message(run_id, member.ref, now)
                if message is None:  # pragma: no cover - a closed member has its message
                    raise StorageError(f"message waitpoint {token['id']} closed with no message")
                token["data"] = message
            yield count(
                "UPDATE waitpoints SET status = 'CANCELLED', completed_at = :now"
                " WHERE id = :id AND status = 'WAITING'",
                now=now,
                id=token["id"],
            )
        snapshot["kinds"] = [m.kind if isinstance(m, GroupMember) else "token" for m in members]
        snapshot["keys"] = [m.ref if isinstance(m, GroupMember) else m for m in members]
