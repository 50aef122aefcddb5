"""How a wait on a group of tokens ended, decided the same way by every backend.

The outcome must not depend on when the run is replayed: a group whose tokens closed before
its deadline did not time out, even if the group's timer fired before a worker got back to
the run. So the answer compares times (when the group was satisfied, when its deadline was),
not the timer's current status alone.
"""

from __future__ import annotations

from datetime import datetime

from ..models import Token


def group_outcome(tokens: list[Token], mode: str, timer: Token | None) -> tuple[bool, bool]:
    """``(done, timed_out)`` for tokens waited on with ``mode`` "all" or "any"."""
    closed = [t.completed_at or t.created_at for t in tokens if not t.is_waiting]
    satisfied_at: datetime | None = None
    if mode == "all" and len(closed) == len(tokens):
        satisfied_at = max(closed, default=None)
    elif mode != "all" and closed:
        satisfied_at = min(closed)
    deadline = None if timer is None or timer.is_waiting else timer.expires_at
    timed_out = deadline is not None and (satisfied_at is None or satisfied_at > deadline)
    return satisfied_at is not None or timed_out, timed_out
