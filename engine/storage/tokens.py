"""Operations on waitpoint tokens: create, close (first writer wins), time out; and the small
records the API keeps: replies to retried requests, spent dashboard credentials."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from ..errors import TokenNotFoundError, TokenNotWaitingError
from ..faults import crash_point
from ..ids import new_token_id
from ..models import CompletionResult, CompletionSource, Page, Token, WaitpointStatus
from ..signing import well_formed
from .base import DataToCheck, JournalWrite, NewToken, PageRequest, TokenFilter
from .core import StorageCore, lease_lost
from .records import (
    LATE_COMPLETIONS_KEPT,
    RowLike,
    dump_json,
    load_json,
    matches_legacy_hash,
    token_from_row,
    with_late_completions,
)
from .sql import SCHEMA, Op, ServerFunction, Sql, alone, combined, count, rows

_DETAILS = ("title", "description", "context")
"""A token's columns that say what its reviewer is asked."""

_PARAMS = (
    ("id", "text"),
    ("status", "text"),
    ("data", "text"),
    ("via", "text"),
    ("schema", "text"),
    ("any_schema", "boolean"),
    ("now", "bigint"),
)
"""The arguments of ``close_token_function``: the parameters of the statements it runs."""
_ARGS = ", ".join(f":{name}" for name, _ in _PARAMS)

SPENT_KEPT_MS = 86_400_000
"""How long past its expiry a spent credential is remembered (clock skew between processes)."""


class Tokens(StorageCore):
    """Waitpoint tokens, the runs blocked on them, replies kept for retried API requests,
    and the dashboard credentials used up before their time."""

    async def create_token(self, new: NewToken, journal: JournalWrite | None = None) -> Token:
        schema = None if new.data_schema is None else dump_json(new.data_schema)
        context = None if new.context is None else dump_json(new.context, "the token's context")

        def op(now: int) -> Op[Token]:
            if new.idempotency_key is not None:
                if journal is not None:
                    yield from self._fence(journal.run_id, journal.epoch)
                row = yield from self._existing_by_key(
                    "waitpoints", "idempotency_key = :key", now, key=new.idempotency_key
                )
                if row is not None:
                    token = token_from_row(row).model_copy(update={"is_cached": True})
                    if journal is not None:
                        value = token.model_dump(mode="json", by_alias=True)
                        yield from self._journal(journal, value, now)
                    return token
            row = {  # the row the INSERT makes: the token (and its journal entry) is known first
                "id": new_token_id(),
                "status": "WAITING",
                "tags": json.dumps(new.tags),
                "idempotency_key": new.idempotency_key,
                "idempotency_key_expires_at": new.idempotency_key_expires_ms,
                "ttl": new.ttl,
                "timeout_at": new.timeout_ms,
                "created_at": now,
                "data_schema": schema,
                "created_by_run": journal.run_id if journal else None,
                "title": new.title,
                "description": new.description,
                "context": context,
                "completed_at": None,
                "data": None,
                "completed_via": None,
            }
            token = token_from_row(row)
            if journal is None:
                insert = self._insert_token(row)
                yield insert if new.idempotency_key is not None else alone(insert)
                return token
            value = token.model_dump(mode="json", by_alias=True)
            if new.idempotency_key is not None:  # fenced above
                yield self._insert_token(row)
                yield from self._journal(journal, value, now)
                return token
            # the fence in the token's INSERT: nothing is written if the lease moved on
            insert = self._insert_token(
                row, where=self._fenced, run_id=journal.run_id, epoch=journal.epoch
            )
            if not self.q.writes_in_with:
                if not (yield insert):
                    raise lease_lost(journal.run_id, journal.epoch)
                yield from self._journal(journal, value, now)
                return token
            # fence, token and journal entry: one statement
            parts = {
                "token": insert,
                "entry": self._journal_entry(journal, value, now, where="token"),
            }
            crash_point("journal.before_commit")
            made = yield alone(combined(parts, "SELECT count(*) AS n FROM token"))
            if not made[0]["n"]:
                raise lease_lost(journal.run_id, journal.epoch)
            return token

        return await self._write(op)

    def _insert_token(self, row: dict[str, Any], where: str | None = None, **params: Any) -> Sql:
        """The INSERT of a new token's ``row``; with ``where`` (a FROM clause) only if that
        finds a row (PostgreSQL: returning the token's id, for a ``WITH`` item)."""
        columns = (
            "id, status, tags, idempotency_key, idempotency_key_expires_at, ttl, timeout_at,"
            " created_at, data_schema, created_by_run"
        )
        # what the reviewer is shown, named only when the token has some of it (a token
        # without any is written as before migration 6/7)
        details = any(row[name] is not None for name in _DETAILS)
        if details:
            columns += ", " + ", ".join(_DETAILS)
        values = {name: row[name] for name in columns.split(", ")}
        if where is None:
            more = ", :title, :description, :context" if details else ""
            return count(
                f"INSERT INTO waitpoints ({columns}) VALUES (:id, :status,"
                f" {self.q.jsonb('tags')}, :token_key, :key_expires, :ttl, :timeout_at,"
                f" :created_at, :data_schema, :created_by_run{more})",
                **_token_params(values),
            )
        typed_more = (
            ", CAST(:title AS text), CAST(:description AS text), CAST(:context AS text)"
            if details
            else ""
        )
        returning = " RETURNING id" if self.q.writes_in_with else ""
        return count(  # typed: a SELECT's parameters take no type from the columns they fill
            f"INSERT INTO waitpoints ({columns}) SELECT CAST(:id AS text),"
            f" CAST(:status AS text), {self.q.jsonb('tags')}, CAST(:token_key AS text),"
            " CAST(:key_expires AS bigint), CAST(:ttl AS text), CAST(:timeout_at AS bigint),"
            " CAST(:created_at AS bigint), CAST(:data_schema AS text),"
            f" CAST(:created_by_run AS text){typed_more} FROM {where}{returning}",
            **_token_params(values),
            **params,
        )

    async def get_token(self, token_id: str) -> Token:
        found = await self._read(
            rows("SELECT * FROM waitpoints WHERE id = :id AND kind = 'MANUAL'", id=token_id)
        )
        if not found:
            raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
        token = token_from_row(found[0])
        if token.is_waiting:
            return token
        late = await self._read(
            rows(
                "SELECT l.via, l.attempted_at, w.late_completion_count FROM late_completions l"
                " JOIN waitpoints w ON w.id = l.token_id WHERE l.token_id = :id ORDER BY l.n",
                id=token_id,
            )
        )
        return with_late_completions(token, late)

    async def legacy_signature_matches(self, token_id: str, signature: str) -> bool:
        if not well_formed(signature):
            return False
        found = await self._read(
            rows(
                "SELECT legacy_signature_hash FROM waitpoints WHERE id = :id AND kind = 'MANUAL'",
                id=token_id,
            )
        )
        return bool(found) and matches_legacy_hash(found[0]["legacy_signature_hash"], signature)

    async def list_tokens(self, filter: TokenFilter, page: PageRequest) -> Page[Token]:
        where, params = self._filters(
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.idempotency_key is not None:
            where.append("idempotency_key = :key")
            params["key"] = filter.idempotency_key
        where.append("kind = 'MANUAL'")
        found, next_cursor, previous_cursor = await self._page("waitpoints", where, params, page)
        tokens = [token_from_row(r) for r in found]
        return Page(data=tokens, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def complete_token(
        self,
        token_id: str,
        data: Any,
        source: CompletionSource,
        checked: str | None = None,
        trace: str | None = None,
    ) -> CompletionResult | DataToCheck:
        text = dump_json(data, "the completion data")
        return await self._close_token(
            token_id,
            WaitpointStatus.COMPLETED,
            text,
            source,
            any_schema=False,
            schema=checked,
            trace=trace,
        )

    async def cancel_token(
        self, token_id: str, source: CompletionSource, reason: str | None = None
    ) -> CompletionResult:
        message = f"Waitpoint {token_id} was cancelled"
        data: dict[str, Any] = {"code": "WAITPOINT_CANCELLED", "message": message}
        if reason is not None:  # checked by the caller (``clean_reason``)
            data["message"] = f"{message}: {reason}"
            data["reason"] = reason
        outcome = await self._close_token(
            token_id, WaitpointStatus.CANCELLED, dump_json(data), source, any_schema=True
        )
        assert isinstance(outcome, CompletionResult)  # whatever its schema: nothing to check
        return outcome

    async def _close_token(
        self,
        token_id: str,
        status: WaitpointStatus,
        data: str,
        source: CompletionSource,
        *,
        any_schema: bool,
        schema: str | None = None,
        trace: str | None = None,
    ) -> CompletionResult | DataToCheck:
        """First writer wins: close a WAITING token and re-queue the runs it unblocks.

        Only a token whose data schema is ``schema`` (or any, with ``any_schema``) is closed;
        a WAITING one with another schema is returned to be checked first (``DataToCheck``).
        A completion that finds the token timed out or cancelled is refused, and the attempt
        is recorded on the token (the refusal is raised after that record committed).

        The close is one write (on PostgreSQL one call of ``close_token_function``: a single
        round trip); what a refusal needs (the token as it is, the record of a late
        completion) is read and written after it, which only the rare refusal pays for.
        """
        params = {
            "id": token_id,
            "status": status.value,
            "data": data,
            "via": source.value,
            "schema": schema,
            "any_schema": any_schema,
        }
        traced = {} if trace is None else {"trace": trace}

        def op(now: int) -> Op[list[RowLike]]:
            crash_point("complete.before_commit")
            closed: list[RowLike]
            if self.q.server_functions and not traced:
                call = f"SELECT * FROM {self.close_token_function.name}({_ARGS})"
                closed = yield alone(rows(call, now=now, **params))
                return closed
            closed = yield rows(self._closing(bool(traced)), now=now, **params, **traced)
            if closed:
                yield from self._requeue_blocked([token_id], now)
            return closed

        closed = await self._write(op)
        if closed and closed[0]["status"] == status.value:
            return CompletionResult(applied=True, token=token_from_row(closed[0]))
        # timed out just now, instead; or closed already, or unknown, or of another schema
        found = closed or await self._read(
            rows("SELECT * FROM waitpoints WHERE id = :id AND kind = 'MANUAL'", id=token_id)
        )
        if not found:
            raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
        if found[0]["status"] == "WAITING":  # its schema is not the one checked
            return DataToCheck(found[0]["data_schema"])
        token = token_from_row(found[0])
        if token.status is status:
            return CompletionResult(applied=False, token=token)
        if status is WaitpointStatus.COMPLETED:
            await self._write(lambda now: self._record_late_completion(token_id, source, now))
        raise TokenNotWaitingError(token_id, token.status.value, token.completed_at)

    def _closing(self, traced: bool = False) -> str:
        """The close of a WAITING token (``RETURNING *``): past its deadline a token is timed
        out here and now, whether or not a worker's timer got to it yet, so the outcome never
        depends on which processes are running. ``traced``: the ``traceparent`` it was
        completed in is kept too (``:trace``; tracing on, so never on a schema from before
        migration 10 that an older engine still writes to)."""
        due = "timeout_at <= :now"
        keep = f" completed_trace = CASE WHEN {due} THEN NULL ELSE :trace END," if traced else ""
        return (
            f"UPDATE waitpoints SET completed_at = :now,"
            f" status = CASE WHEN {due} THEN 'TIMED_OUT' ELSE :status END,"
            f" completed_via = CASE WHEN {due} THEN 'timeout' ELSE :via END,"
            f"{keep} data = CASE WHEN {due} THEN {self._timed_out_data} ELSE :data END"
            " WHERE id = :id AND kind = 'MANUAL' AND status = 'WAITING'"
            f" AND ({due} OR :any_schema OR data_schema = :schema"
            " OR (data_schema IS NULL AND :schema IS NULL)) RETURNING *"
        )

    @cached_property
    def close_token_function(self) -> ServerFunction:
        """``_close_token`` as one PostgreSQL function: the close, the lock of the runs it may
        unblock, their re-queue, each statement with a snapshot of its own (a VOLATILE
        function's statements see what committed before each began: the lock-then-look
        ``_requeue_blocked`` relies on), in one round trip instead of five. Its statements
        are the ones SQLite runs (``_closing``, ``_requeue_statements``)."""
        lock, requeue = self._requeue_statements()
        body = f"""
            DECLARE
                closed {SCHEMA}.waitpoints;
                p_ids text[] := ARRAY[p_id];
                p_runs text[];
            BEGIN
                {self._closing()} INTO closed;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                SELECT array_agg(id) INTO p_runs FROM ({lock}) AS locked;
                IF p_runs IS NOT NULL THEN
                    {requeue};
                END IF;
                RETURN NEXT closed;
            END"""
        return ServerFunction("close_token", _PARAMS, f"SETOF {SCHEMA}.waitpoints", body)

    def _record_late_completion(
        self, token_id: str, source: CompletionSource, now: int
    ) -> Op[None]:
        """Count the refused completion and keep it among the token's last few: a callback URL
        may be posted to any number of times, and the token must not grow with them. The
        count's UPDATE locks the token's row, so racing refusals number their rows in turn."""
        counted = yield rows(
            "UPDATE waitpoints SET late_completion_count = late_completion_count + 1"
            " WHERE id = :id RETURNING late_completion_count",
            id=token_id,
        )
        if not counted:  # deleted since it was read (retention): nothing left to record on
            return
        n = int(counted[0]["late_completion_count"])
        yield count(
            "INSERT INTO late_completions (token_id, n, via, attempted_at)"
            " VALUES (:id, :n, :via, :now)",
            id=token_id,
            n=n,
            via=source.value,
            now=now,
        )
        yield count(
            "DELETE FROM late_completions WHERE token_id = :id AND n <= :oldest",
            id=token_id,
            oldest=n - LATE_COMPLETIONS_KEPT,
        )

    async def get_request_reply(self, key: str, route: str) -> Any:
        """The reply stored for a request idempotency key on this route, or None."""
        found = await self._read(
            rows(
                "SELECT reply FROM request_replies WHERE key = :key AND route = :route",
                key=key,
                route=route,
            )
        )
        return load_json(found[0]["reply"]) if found else None

    async def save_request_reply(self, key: str, route: str, reply: Any) -> None:
        """Keep a reply for 24 hours so that a retried request gets the same answer."""
        text = dump_json(reply)

        def op(now: int) -> Op[None]:
            yield count(
                "DELETE FROM request_replies WHERE created_at < :oldest", oldest=now - 86_400_000
            )
            yield count(
                "INSERT INTO request_replies (key, route, reply, created_at)"
                " VALUES (:key, :route, :reply, :now) ON CONFLICT DO NOTHING",
                key=key,
                route=route,
                reply=text,
                now=now,
            )

        await self._write(op, notify=False)

    async def spend_credential(self, key: str, expires_at_ms: int) -> bool:
        """Record that a dashboard credential is used up; False if it already was.

        One row per one-click sign-in link used and per session signed out, so that every
        process of this database refuses it, after restarts too. A row is dropped a day after
        the credential expires (it is refused for its age by then; the day covers clock skew).
        """

        def op(now: int) -> Op[bool]:
            yield count(
                "DELETE FROM spent_credentials WHERE expires_at < :oldest",
                oldest=now - SPENT_KEPT_MS,
            )
            inserted = yield count(
                "INSERT INTO spent_credentials (key, expires_at) VALUES (:key, :expires)"
                " ON CONFLICT DO NOTHING",
                key=key,
                expires=expires_at_ms,
            )
            return bool(inserted == 1)

        return await self._write(op, notify=False)

    async def credential_spent(self, key: str) -> bool:
        """Whether ``spend_credential`` recorded ``key``."""
        found = await self._read(rows("SELECT 1 FROM spent_credentials WHERE key = :key", key=key))
        return bool(found)


def _token_params(values: dict[str, Any]) -> dict[str, Any]:
    """A token row's values under the parameter names ``_insert_token`` uses (``key`` is a
    journal entry's, in a statement that writes both)."""
    named = dict(values)
    named["token_key"] = named.pop("idempotency_key")
    named["key_expires"] = named.pop("idempotency_key_expires_at")
    return named
