"""Rate limits: a token bucket per queue and key, stored in the database.

A queue's rate limit (``Queue(rate_limit=RateLimit(limit, period))``, registered on each of
its tasks as ``tasks.rate_limit`` and ``tasks.rate_period_ms``) is a bucket per (queue,
``rate_limit_key`` or ``''``) of at most ``limit`` tokens, refilled continuously at ``limit``
per period. Each run a claim takes costs one token, taken in the claim's own transaction
(``Runs._within_limits``), so the limit holds however many workers claim at once: on
PostgreSQL they take the queue's transaction-scoped advisory lock first (the one a
concurrency limit is counted under), and SQLite has one writer at a time.

A row of ``rate_buckets`` holds the tokens left at ``refilled_at``; the tokens now are
computed from it (``Rate.tokens``), never stored by a timer. A missing row is a full bucket:
a bucket starts full (a queue idle for a period may start ``limit`` runs at once, as
Trigger.dev's and GCRA's limits do), and a claim that meets a bucket full again deletes its
row, so the rows stay as many as the keys used within about a period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..clock import from_ms
from ..models import RateLimitWait
from .core import StorageCore
from .records import RowLike
from .sql import Op, many, rows


@dataclass(frozen=True)
class Rate:
    """A queue's rate limit: ``limit`` tokens at most, ``limit`` more per ``period_ms``."""

    limit: int
    period_ms: int

    def tokens(self, row: RowLike | None, now: int) -> float:
        """The tokens a bucket holds at ``now``, from its row (None: full). Rounded to a
        billionth: a refill that makes exactly one token must not fall short of it."""
        if row is None:
            return float(self.limit)
        elapsed = max(0, now - int(row["refilled_at"]))
        tokens = float(row["tokens"]) + elapsed * self.limit / self.period_ms
        return min(float(self.limit), round(tokens, 9))

    def next_token_at(self, tokens: float, now: int) -> int:
        """When a bucket holding ``tokens`` (fewer than one) at ``now`` holds one, in ms."""
        wait = round((1 - tokens) * self.period_ms / self.limit, 6)
        return now + max(1, math.ceil(wait))

    def stricter(self, other: Rate) -> Rate:
        """The limit that lets fewer runs start (tasks of one queue registered different
        limits: each worker keeps to the strictest its tasks name, as with concurrency)."""
        mine, theirs = self.limit * other.period_ms, other.limit * self.period_ms
        if mine != theirs:
            return self if mine < theirs else other
        return self if self.limit <= other.limit else other


def rates_of(found: Iterable[RowLike]) -> dict[str, Rate]:
    """Each queue's rate limit from rows of ``tasks`` (``queue``, ``rate_limit``,
    ``rate_period_ms``; rows without a limit are left out)."""
    rates: dict[str, Rate] = {}
    for row in found:
        if row["rate_limit"] is None or row["rate_period_ms"] is None:
            continue
        rate = Rate(int(row["rate_limit"]), int(row["rate_period_ms"]))
        known = rates.get(row["queue"])
        rates[row["queue"]] = rate if known is None else known.stricter(rate)
    return rates


@dataclass
class Buckets:
    """The buckets of a claim's rate-limited queues, read at ``now`` under their locks, and
    the tokens the claim takes from them (``take``) until it writes them back (``Rates._spend``)."""

    rates: Mapping[str, Rate]
    now: int
    tokens: dict[tuple[str, str], float] = field(default_factory=dict)
    """The tokens of each bucket that has a row (the others are full), as of ``at``."""
    at: dict[tuple[str, str], int] = field(default_factory=dict)
    """When each bucket that has a row holds ``tokens``: now, or the time of its row if that
    is later (a claim that read the clock before it got the queue's lock, after another
    claim that read it later: the time between is not refilled twice)."""
    taken: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def empty(self) -> list[tuple[str, str]]:
        """The buckets with less than one token: a claim leaves their runs out of its scan."""
        return sorted(pair for pair, tokens in self.tokens.items() if tokens < 1)

    def next_token_at(self) -> int | None:
        """When the first bucket that holds less than one token once this claim took its
        tokens gets one again (None: none is empty)."""
        moments = []
        for pair in {*self.tokens, *self.taken}:
            rate = self.rates[pair[0]]
            left = self.tokens.get(pair, float(rate.limit)) - self.taken.get(pair, 0)
            if left < 1:
                moments.append(rate.next_token_at(left, self.at.get(pair, self.now)))
        return min(moments, default=None)

    def take(self, queue: str, key: str | None) -> bool:
        """Take a token for a run of ``queue`` with ``key``; False if its bucket is empty
        (a queue without a rate limit always gives one)."""
        rate = self.rates.get(queue)
        if rate is None:
            return True
        pair = (queue, key or "")
        left = self.tokens.get(pair, float(rate.limit)) - self.taken.get(pair, 0)
        if left < 1:
            return False
        self.taken[pair] = self.taken.get(pair, 0) + 1
        return True


class Rates(StorageCore):
    """The rate limit buckets: read and spent by claims, read to say why a run waits."""

    _held: dict[str, int] | None = None
    """Each claimer's ``rate_limited_until``, from its last claim."""

    def _note_held(self, owner: str, buckets: Buckets | None) -> None:
        """Keep when the next token comes into a bucket the owner's claim found (or left)
        empty; a claim that met no rate limit, or none empty, forgets it."""
        until = None if buckets is None else buckets.next_token_at()
        if self._held is None:
            self._held = {}
        if until is None:
            self._held.pop(owner, None)
        else:
            self._held[owner] = until

    def rate_limited_until(self, owner: str) -> int | None:
        """When a token comes into a rate limit bucket that ``owner``'s last claim in this
        process found empty, or emptied (None: it met none). A worker whose claim came back
        short waits until then rather than a whole poll: a rate-limited queue goes on at its
        rate, and the worker does not claim in a loop meanwhile. Known from the claim's own
        transaction, so it costs no read, and it says what the claim saw: a token that came
        since does not make a worker sleep a poll it should not."""
        return None if self._held is None else self._held.get(owner)

    def _buckets(self, rates: Mapping[str, Rate], now: int) -> Op[Buckets]:
        """The buckets of these queues now (the caller holds the queues' locks)."""
        buckets = Buckets(rates, now)
        if not rates:
            return buckets
        found = yield rows(
            "SELECT queue, key, tokens, refilled_at FROM rate_buckets"
            f" WHERE queue {self.q.in_('queues')}",
            queues=sorted(rates),
        )
        for row in found:
            pair, at = (row["queue"], row["key"]), max(now, int(row["refilled_at"]))
            buckets.tokens[pair] = rates[row["queue"]].tokens(row, at)
            buckets.at[pair] = at
        return buckets

    def _spend(self, buckets: Buckets) -> Op[None]:
        """Write back the tokens the claim took (its candidates were locked, or SQLite's
        writer is alone: it leases every run it picked); delete the rows of the buckets it
        found full again, which a missing row means too."""
        spent = buckets.taken
        written = [
            {
                "queue": queue,
                "key": key,
                "tokens": buckets.tokens.get((queue, key), buckets.rates[queue].limit) - n,
                "at": buckets.at.get((queue, key), buckets.now),
            }
            for (queue, key), n in sorted(spent.items())
        ]
        if written:
            yield many(
                "INSERT INTO rate_buckets (queue, key, tokens, refilled_at)"
                " VALUES (:queue, :key, :tokens, :at) ON CONFLICT (queue, key)"
                " DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at",
                written,
            )
        full = [
            {"queue": queue, "key": key}
            for (queue, key), tokens in sorted(buckets.tokens.items())
            if tokens >= buckets.rates[queue].limit and not spent.get((queue, key))
        ]
        if full:
            yield many("DELETE FROM rate_buckets WHERE queue = :queue AND key = :key", full)

    async def rate_limit_wait(self, run_id: str) -> RateLimitWait | None:
        """Whether a QUEUED run that is due waits for its queue's rate limit: its bucket has
        less than one token now (then when it has one), or None (not QUEUED, not due, no rate
        limit, or a token is there for the next claim)."""
        now = self.now_ms()
        found = await self._read(
            rows(
                "SELECT r.queue, r.rate_limit_key, t.rate_limit, t.rate_period_ms,"
                " b.tokens, b.refilled_at FROM runs r JOIN tasks t ON t.id = r.task_id"
                " LEFT JOIN rate_buckets b ON b.queue = r.queue"
                " AND b.key = coalesce(r.rate_limit_key, '')"
                " WHERE r.id = :id AND r.status = 'QUEUED' AND r.available_at <= :now"
                " AND t.rate_limit IS NOT NULL",
                id=run_id,
                now=now,
            )
        )
        if not found:
            return None
        row = found[0]
        rate = Rate(int(row["rate_limit"]), int(row["rate_period_ms"]))
        tokens = rate.tokens(row if row["refilled_at"] is not None else None, now)
        if tokens >= 1:
            return None
        return RateLimitWait(
            queue=row["queue"],
            rate_limit_key=row["rate_limit_key"],
            limit=rate.limit,
            period_ms=rate.period_ms,
            next_token_at=from_ms(rate.next_token_at(tokens, now)),
        )
