"""How a wait on a group of tokens ended, decided the same way by every backend.

The outcome must not depend on when the run is replayed, nor on whether a worker was alive to
fire a timer at the right moment. So it is computed from times, never from what the timers
have done so far:

- a token closed when it was completed or cancelled, or at its own deadline if it timed out
  (a timed-out token's ``completed_at`` is when a timer got to it, which may be later);
- the group is satisfied at the first closed token (``any``) or the last (``all``);
- with a deadline, the group is satisfied only strictly before it (a token closed at the
  deadline's millisecond counts as late, as a completion at a token's own deadline is refused);
  at the deadline it closes as timed out, whether or not its timer has fired;
- the snapshot the run sees shows the tokens as they were when the group closed: a token that
  closed later shows as still WAITING (``None`` in ``GroupResult.results``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..clock import from_ms
from ..models import Token, WaitpointStatus


@dataclass(frozen=True)
class GroupOutcome:
    """``done`` once the group closed; then ``snapshot`` is what the run journals and sees."""

    done: bool
    timed_out: bool = False
    snapshot: dict[str, Any] | None = None


def group_outcome(
    tokens: list[Token], mode: str, deadline: datetime | None, now_ms: int
) -> GroupOutcome:
    """The outcome of waiting on ``tokens`` with ``mode`` "all" or "any" until ``deadline``."""
    closed = {t.id: at for t in tokens if (at := closed_at(t)) is not None}
    on_time = [at for at in closed.values() if deadline is None or at < deadline]
    satisfied_at: datetime | None = None
    if mode == "all" and len(on_time) == len(tokens):
        satisfied_at = max(on_time, default=None)
    elif mode != "all" and on_time:
        satisfied_at = min(on_time)
    if satisfied_at is not None:
        closing, timed_out = satisfied_at, False
    elif deadline is not None and deadline <= from_ms(now_ms):
        closing, timed_out = deadline, True
    else:
        return GroupOutcome(done=False)

    def seen(token: Token) -> bool:
        at = closed.get(token.id)
        return at is not None and (at < closing if timed_out else at <= closing)

    shown = [t if seen(t) else as_waiting(t) for t in tokens]
    first = min((t for t in shown if not t.is_waiting), key=_closed_or_max, default=None)
    snapshot = {
        "tokens": [t.model_dump(mode="json", by_alias=True) for t in shown],
        "timedOut": timed_out,
        "first": first.id if first is not None else None,
    }
    return GroupOutcome(done=True, timed_out=timed_out, snapshot=snapshot)


def closed_at(token: Token) -> datetime | None:
    """When the token closed as the contract sees it (None while it is still open)."""
    if token.is_waiting:
        return None
    if token.status is WaitpointStatus.TIMED_OUT and token.expires_at is not None:
        return min(token.expires_at, token.completed_at or token.expires_at)
    return token.completed_at or token.created_at


def as_waiting(token: Token) -> Token:
    """The token as it was before it closed."""
    return token.model_copy(
        update={
            "status": WaitpointStatus.WAITING,
            "data": None,
            "completed_at": None,
            "completed_via": None,
            "cancel_reason": None,
        }
    )


def _closed_or_max(token: Token) -> datetime:
    at = closed_at(token)
    assert at is not None  # only closed tokens are ranked
    return at
