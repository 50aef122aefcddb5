"""Messages into a running run: ``engine.runs.send(run_id, topic, data)`` and, inside the
run, ``receive(topic)``.

A message is a row of ``run_messages``, numbered per run and topic in the order the sends
committed. A ``receive`` is a durable call with a MESSAGE waitpoint of its own (made once per
call, like a sleep's, so its timeout is fixed by the first execution): in one transaction,
fenced by the lease, it takes the oldest message of its topic not delivered yet, marks it
delivered and journals it, so each message is delivered exactly once and in order, however
the run crashes and replays. With none there, the run blocks on the waitpoint; a send
completes the waitpoints of that run and topic that are waiting and re-queues the run, whose
next attempt takes the message. A timeout closes the waitpoint as a timer does; a message
that arrives afterwards waits for the next ``receive``.

PostgreSQL: a send locks the run's row first, as the receive's fence does, so the two are
ordered: a send either commits before the receive looks (and is taken) or sees the run
blocked (and wakes it).
"""

from __future__ import annotations

from typing import Any

from ..durations import Deadline
from ..errors import RunStateError
from ..models import RunStatus
from .base import DataToCheck, JournalWrite
from .records import RowLike, dump_json, load_json
from .sql import Op, count, rows
from .waits import Waits


class Messages(Waits):
    """Sending to a run, and a run receiving."""

    async def send_message(
        self, run_id: str, topic: str, data: Any, checked: str | None = None
    ) -> int | DataToCheck:
        """Keep ``data`` for the run's next ``receive(topic)``; returns the message's number
        (1 for a topic's first). A run waiting on the topic is woken. A finished run is
        refused (``RunStateError``): nothing would ever receive it. Once a ``receive`` of
        the topic declared a schema (``schema=``), the data must match it: without the same
        schema as ``checked``, nothing is written and the schema comes back to check the
        data against (outside the transaction, as a typed token's completion is)."""
        text = dump_json(data, "the message data")

        def op(now: int) -> Op[int | DataToCheck]:
            run = yield from self._run_row(run_id, "status")
            status = RunStatus(run["status"])
            if status.is_terminal:
                raise RunStateError(
                    f"run {run_id} already finished ({status.value}): nothing would receive"
                    f" a message on {topic!r}"
                )
            declared = yield rows(
                "SELECT data_schema FROM waitpoints WHERE created_by_run = :id"
                " AND kind = 'MESSAGE' AND topic = :topic AND data_schema IS NOT NULL"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                id=run_id,
                topic=topic,
            )
            if declared and declared[0]["data_schema"] != checked:
                return DataToCheck(declared[0]["data_schema"])
            last = yield rows(
                "SELECT coalesce(max(n), 0) AS n FROM run_messages"
                " WHERE run_id = :id AND topic = :topic",
                id=run_id,
                topic=topic,
            )
            number = int(last[0]["n"]) + 1
            yield count(
                "INSERT INTO run_messages (run_id, topic, n, data, sent_at)"
                " VALUES (:id, :topic, :n, :data, :now)",
                id=run_id,
                topic=topic,
                n=number,
                data=text,
                now=now,
            )
            woken = yield rows(
                "UPDATE waitpoints SET status = 'COMPLETED', completed_at = :now"
                " WHERE created_by_run = :id AND kind = 'MESSAGE' AND topic = :topic"
                " AND status = 'WAITING' RETURNING id",
                id=run_id,
                topic=topic,
                now=now,
            )
            yield from self._event([run_id], "message_sent", now, {"topic": topic, "n": number})
            yield from self._requeue_blocked([row["id"] for row in woken], now)
            return number

        return await self._write(op)

    async def receive_message(
        self,
        topic: str,
        deadline: Deadline | None,
        journal: JournalWrite,
        elapsed_ms: int = 0,
        data_schema: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The oldest message on ``topic`` not delivered yet, delivered and journaled now; or
        ``{"timedOut": true}`` once the deadline passed; or None: the run blocks until a
        message or the deadline comes. A message already there when the receive is first made
        is delivered whatever the deadline (one already past takes a message if there is one).
        ``data_schema`` (the receive's ``schema=``) is kept on its waitpoint: later sends on
        the topic are checked against it."""
        schema_text = None if data_schema is None else dump_json(data_schema, "the schema")

        def op(now: int) -> Op[dict[str, Any] | None]:
            yield from self._fence(journal.run_id, journal.epoch)
            made = yield from self._message_waitpoint(
                journal.run_id, journal.key, topic, deadline, schema_text, now
            )
            [waitpoint] = yield from self._closed_when_due([made], now)
            if waitpoint["status"] == "TIMED_OUT":
                timed_out = {"topic": topic, "timedOut": True}
                yield from self._journal_and_unblock(
                    journal, timed_out, [waitpoint["id"]], now, "message"
                )
                return timed_out
            value = yield from self._take_message(journal.run_id, topic, now)
            if value is None:  # (a waitpoint a send completed, whose message another took: wait)
                yield count(
                    "UPDATE waitpoints SET status = 'WAITING', completed_at = NULL"
                    " WHERE id = :id AND status = 'COMPLETED'",
                    id=waitpoint["id"],
                )
                yield from self._block(journal, {waitpoint["id"]: "all"}, elapsed_ms, now)
                return None
            yield count(
                "UPDATE waitpoints SET status = 'COMPLETED', completed_at = :now"
                " WHERE id = :id AND status = 'WAITING'",
                now=now,
                id=waitpoint["id"],
            )
            yield from self._journal_and_unblock(journal, value, [waitpoint["id"]], now, "message")
            return value

        return await self._write(op, notify=False)

    def _message_waitpoint(
        self,
        run_id: str,
        key: str,
        topic: str,
        deadline: Deadline | None,
        schema_text: str | None,
        now: int,
    ) -> Op[RowLike]:
        """The MESSAGE waitpoint of a receive (or a group's ``receive_op``), made once per
        (run, key): made COMPLETED when a message already waits (sent before any deadline,
        it wins over one that is already due), else WAITING until a send completes it."""
        made = yield from self._made_by(run_id, key)
        if made is not None:
            return made
        found = yield rows(
            "SELECT 1 AS n FROM run_messages WHERE run_id = :id AND topic = :topic"
            " AND delivered_at IS NULL LIMIT 1",
            id=run_id,
            topic=topic,
        )
        columns: dict[str, object] = {
            "kind": "MESSAGE",
            "status": "COMPLETED" if found else "WAITING",
            "completed_at": now if found else None,
            "topic": topic,
            "timeout_at": None if deadline is None else deadline.resolve(now),
            "data_schema": schema_text,
        }
        return (yield from self._insert_waitpoint(run_id, key, now, columns))

    def _take_message(self, run_id: str, topic: str, now: int) -> Op[dict[str, Any] | None]:
        """The oldest message on ``topic`` not delivered yet, marked delivered now (the
        caller journals it in the same transaction); None if there is none."""
        found = yield rows(
            "SELECT n, data, sent_at FROM run_messages WHERE run_id = :id"
            " AND topic = :topic AND delivered_at IS NULL ORDER BY n LIMIT 1",
            id=run_id,
            topic=topic,
        )
        if not found:
            return None
        message = found[0]
        yield count(
            "UPDATE run_messages SET delivered_at = :now"
            " WHERE run_id = :id AND topic = :topic AND n = :n",
            now=now,
            id=run_id,
            topic=topic,
            n=message["n"],
        )
        return {
            "topic": topic,
            "n": message["n"],
            "data": load_json(message["data"]),
            "sentAt": message["sent_at"],
        }
