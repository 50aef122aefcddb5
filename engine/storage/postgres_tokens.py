"""PostgreSQL operations on waitpoint tokens: create, close (first writer wins), time out."""

from __future__ import annotations

import json
from typing import Any

from ..callbacks import well_formed
from ..errors import StorageError, TokenNotFoundError, TokenNotWaitingError
from ..faults import crash_point
from ..ids import new_token_id
from ..models import (
    CompletionResult,
    CompletionSource,
    Page,
    Token,
    WaitpointStatus,
)
from .base import JournalWrite, NewToken, PageRequest, TokenFilter
from .postgres_base import TIME_OUT, Conn, Params, PostgresBase, affected, common_filters
from .records import (
    LATE_COMPLETIONS_KEPT,
    dump_json,
    load_json,
    matches_legacy_hash,
    token_from_row,
    with_late_completions,
)

SPENT_KEPT_MS = 86_400_000
"""How long past its expiry a spent credential is remembered (clock skew between processes)."""


class PostgresTokens(PostgresBase):
    """Waitpoint tokens, the runs blocked on them, replies kept for retried API requests,
    and the dashboard credentials used up before their time."""

    async def create_token(self, new: NewToken, journal: JournalWrite | None = None) -> Token:
        schema = None if new.data_schema is None else dump_json(new.data_schema)

        async def op(conn: Conn, now: int) -> Token:
            if journal is not None:
                await self._fence(conn, journal.run_id, journal.epoch)
            token = await self._existing_token(conn, new.idempotency_key, now)
            if token is None:
                row = await conn.fetchrow(
                    "INSERT INTO waitpoints (id, status, tags, idempotency_key,"
                    " idempotency_key_expires_at, ttl, timeout_at, created_at, data_schema,"
                    " created_by_run) VALUES ($1, 'WAITING', $2::jsonb, $3, $4, $5, $6, $7, $8,"
                    " $9) RETURNING *",
                    new_token_id(),
                    json.dumps(new.tags),
                    new.idempotency_key,
                    new.idempotency_key_expires_ms,
                    new.ttl,
                    new.timeout_ms,
                    now,
                    schema,
                    journal.run_id if journal else None,
                )
                if row is None:  # pragma: no cover - INSERT ... RETURNING returns the row
                    raise StorageError("the database returned no row for a new token")
                token = token_from_row(row, self.signer)
            if journal is not None:
                value = token.model_dump(mode="json", by_alias=True)
                await self._journal(conn, journal, value, now)
            return token

        return await self._write(op)

    async def _existing_token(self, conn: Conn, key: str | None, now: int) -> Token | None:
        """The live token created with this idempotency key; an expired key is let go."""
        if key is None:
            return None
        row = await conn.fetchrow(
            "SELECT * FROM waitpoints WHERE idempotency_key = $1 FOR UPDATE", key
        )
        if row is None:
            return None
        expires = row["idempotency_key_expires_at"]
        if expires is None or expires > now:
            return token_from_row(row, self.signer).model_copy(update={"is_cached": True})
        await conn.execute("UPDATE waitpoints SET idempotency_key = NULL WHERE id = $1", row["id"])
        return None

    async def get_token(self, token_id: str) -> Token:
        rows = await self._read(
            "SELECT * FROM waitpoints WHERE id = $1 AND kind = 'MANUAL'", token_id
        )
        if not rows:
            raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
        token = token_from_row(rows[0], self.signer)
        if token.is_waiting:
            return token
        late = await self._read(
            "SELECT l.via, l.attempted_at, w.late_completion_count FROM late_completions l"
            " JOIN waitpoints w ON w.id = l.token_id WHERE l.token_id = $1 ORDER BY l.n",
            token_id,
        )
        return with_late_completions(token, late)

    async def verify_callback(self, token_id: str, signature: str) -> bool:
        if self.signer.verify(token_id, signature):
            return True
        if not well_formed(signature):
            return False
        rows = await self._read(
            "SELECT legacy_signature_hash FROM waitpoints WHERE id = $1 AND kind = 'MANUAL'",
            token_id,
        )
        return bool(rows) and matches_legacy_hash(rows[0]["legacy_signature_hash"], signature)

    async def list_tokens(self, filter: TokenFilter, page: PageRequest) -> Page[Token]:
        params = Params()
        where = common_filters(
            params,
            [s.value for s in filter.status],
            filter.tags,
            filter.created_from_ms,
            filter.created_to_ms,
        )
        if filter.idempotency_key is not None:
            where.append(f"idempotency_key = {params(filter.idempotency_key)}")
        where.append("kind = 'MANUAL'")
        rows, next_cursor, previous_cursor = await self._page("waitpoints", where, params, page)
        tokens = [token_from_row(r, self.signer) for r in rows]
        return Page(data=tokens, next_cursor=next_cursor, previous_cursor=previous_cursor)

    async def complete_token(
        self, token_id: str, data: Any, source: CompletionSource
    ) -> CompletionResult:
        return await self._close_token(
            token_id, WaitpointStatus.COMPLETED, dump_json(data, "the completion data"), source
        )

    async def cancel_token(self, token_id: str, source: CompletionSource) -> CompletionResult:
        data = {"code": "WAITPOINT_CANCELLED", "message": f"Waitpoint {token_id} was cancelled"}
        return await self._close_token(token_id, WaitpointStatus.CANCELLED, dump_json(data), source)

    async def _close_token(
        self, token_id: str, status: WaitpointStatus, data: str, source: CompletionSource
    ) -> CompletionResult:
        """First writer wins: close a WAITING token and re-queue the runs it unblocks.

        A completion that finds the token timed out or cancelled is refused, and the attempt
        is recorded on the token (the refusal is raised after that record committed).
        """

        async def op(conn: Conn, now: int) -> CompletionResult | TokenNotWaitingError:
            # past its deadline a token is timed out here and now, whether or not a worker's
            # timer got to it yet: the outcome never depends on which processes are running
            timed_out = await conn.execute(
                TIME_OUT + " WHERE id = $2 AND kind = 'MANUAL' AND status = 'WAITING'"
                " AND timeout_at <= $1",
                now,
                token_id,
            )
            if affected(timed_out):
                await self._requeue_blocked(conn, [token_id], now)
            row = await conn.fetchrow(
                "UPDATE waitpoints SET status = $1, data = $2, completed_at = $3,"
                " completed_via = $4"
                " WHERE id = $5 AND kind = 'MANUAL' AND status = 'WAITING' RETURNING *",
                status.value,
                data,
                now,
                source.value,
                token_id,
            )
            if row is not None:
                await self._requeue_blocked(conn, [token_id], now)
                crash_point("complete.before_commit")
                return CompletionResult(applied=True, token=token_from_row(row, self.signer))
            row = await conn.fetchrow(
                "SELECT * FROM waitpoints WHERE id = $1 AND kind = 'MANUAL'", token_id
            )
            if row is None:
                raise TokenNotFoundError(f"no waitpoint token with id {token_id!r}")
            token = token_from_row(row, self.signer)
            if token.status is status:
                return CompletionResult(applied=False, token=token)
            if status is WaitpointStatus.COMPLETED:
                await self._record_late_completion(conn, token_id, source, now)
            return TokenNotWaitingError(token_id, token.status.value, token.completed_at)

        outcome = await self._write(op)
        if isinstance(outcome, TokenNotWaitingError):
            raise outcome
        return outcome

    async def _record_late_completion(
        self, conn: Conn, token_id: str, source: CompletionSource, now: int
    ) -> None:
        """Count the refused completion and keep it among the token's last few: a callback URL
        may be posted to any number of times, and the token must not grow with them. The
        count's UPDATE locks the token's row, so racing refusals number their rows in turn."""
        n = await conn.fetchval(
            "UPDATE waitpoints SET late_completion_count = late_completion_count + 1"
            " WHERE id = $1 RETURNING late_completion_count",
            token_id,
        )
        await conn.execute(
            "INSERT INTO late_completions (token_id, n, via, attempted_at) VALUES ($1, $2, $3, $4)",
            token_id,
            n,
            source.value,
            now,
        )
        await conn.execute(
            "DELETE FROM late_completions WHERE token_id = $1 AND n <= $2",
            token_id,
            n - LATE_COMPLETIONS_KEPT,
        )

    async def _time_out_tokens(self, limit: int) -> int:
        if not await self._read(
            "SELECT 1 FROM waitpoints WHERE status = 'WAITING' AND timeout_at <= $1 LIMIT 1",
            self.now_ms(),
            control=True,
        ):
            return 0

        async def op(conn: Conn, now: int) -> int:
            rows = await conn.fetch(
                TIME_OUT + " WHERE id IN (SELECT id FROM waitpoints WHERE status = 'WAITING'"
                "  AND timeout_at <= $1 ORDER BY timeout_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING id",
                now,
                limit,
            )
            ids = [r["id"] for r in rows]
            if ids:
                await self._requeue_blocked(conn, ids, now)
                crash_point("timers.before_commit")
            return len(ids)

        return await self._write(op, control=True)

    async def get_request_reply(self, key: str, route: str) -> Any:
        """The reply stored for a request idempotency key on this route, or None."""
        rows = await self._read(
            "SELECT reply FROM request_replies WHERE key = $1 AND route = $2", key, route
        )
        return load_json(rows[0]["reply"]) if rows else None

    async def save_request_reply(self, key: str, route: str, reply: Any) -> None:
        """Keep a reply for 24 hours so that a retried request gets the same answer."""
        text = dump_json(reply)

        async def op(conn: Conn, now: int) -> None:
            await conn.execute(
                "DELETE FROM request_replies WHERE created_at < $1", now - 86_400_000
            )
            await conn.execute(
                "INSERT INTO request_replies (key, route, reply, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                key,
                route,
                text,
                now,
            )

        await self._write(op, notify=False)

    async def spend_credential(self, key: str, expires_at_ms: int) -> bool:
        """Record that a dashboard credential is used up; False if it already was.

        One row per one-click sign-in link used and per session signed out, so that every
        process of this database refuses it, after restarts too. A row is dropped a day after
        the credential expires (it is refused for its age by then; the day covers clock skew).
        """

        async def op(conn: Conn, now: int) -> bool:
            await conn.execute(
                "DELETE FROM spent_credentials WHERE expires_at < $1", now - SPENT_KEPT_MS
            )
            inserted = await conn.fetchval(
                "INSERT INTO spent_credentials (key, expires_at) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                key,
                expires_at_ms,
            )
            return inserted is not None

        return await self._write(op, notify=False)

    async def credential_spent(self, key: str) -> bool:
        """Whether ``spend_credential`` recorded ``key``."""
        rows = await self._read("SELECT 1 FROM spent_credentials WHERE key = $1", key)
        return bool(rows)
