"""How a group wait ended (``storage.groups.group_outcome``), decided from times alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from engine.models import Token, WaitpointStatus
from engine.storage.groups import group_outcome

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def token(
    name: str,
    status: WaitpointStatus = WaitpointStatus.WAITING,
    closed: float | None = None,
    deadline: float | None = None,
) -> Token:
    return Token(
        id=name,
        status=status,
        url=f"http://x/{name}",
        created_at=T0,
        completed_at=None if closed is None else at(closed),
        expires_at=None if deadline is None else at(deadline),
        data=None if closed is None else f"data of {name}",
    )


def shown(snapshot: dict[str, Any] | None) -> dict[str, str]:
    assert snapshot is not None
    return {t["id"]: t["status"] for t in snapshot["tokens"]}


COMPLETED = WaitpointStatus.COMPLETED


def test_any_closes_at_the_first_token_and_shows_later_ones_still_waiting() -> None:
    a, b = token("a", COMPLETED, closed=5), token("b", COMPLETED, closed=3)
    outcome = group_outcome([a, b], "any", None, ms(60))
    assert outcome.done and not outcome.timed_out
    assert outcome.snapshot is not None and outcome.snapshot["first"] == "b"
    assert shown(outcome.snapshot) == {"a": "WAITING", "b": "COMPLETED"}


def test_all_waits_for_every_token() -> None:
    a, b = token("a", COMPLETED, closed=5), token("b")
    assert not group_outcome([a, b], "all", None, ms(60)).done


def test_a_token_closed_at_or_after_the_deadline_counts_as_not_answered() -> None:
    for closed in (10, 11):
        a = token("a", COMPLETED, closed=closed)
        outcome = group_outcome([a, token("b")], "any", at(10), ms(60))
        assert outcome.done and outcome.timed_out
        assert outcome.snapshot is not None and outcome.snapshot["first"] is None
        assert shown(outcome.snapshot) == {"a": "WAITING", "b": "WAITING"}


def test_the_deadline_closes_the_group_whether_or_not_its_timer_fired() -> None:
    waiting = [token("a"), token("b")]
    assert not group_outcome(waiting, "all", at(10), ms(9.999)).done
    outcome = group_outcome(waiting, "all", at(10), ms(10))
    assert outcome.done and outcome.timed_out


def test_a_timed_out_token_closed_at_its_own_deadline_not_when_a_timer_got_to_it() -> None:
    """Its timer fired late (at 30 s); the group saw it close at its deadline (5 s)."""
    a = token("a", WaitpointStatus.TIMED_OUT, closed=30, deadline=5)
    b = token("b", COMPLETED, closed=7)
    outcome = group_outcome([a, b], "any", None, ms(60))
    assert outcome.snapshot is not None and outcome.snapshot["first"] == "a"
    assert shown(outcome.snapshot) == {"a": "TIMED_OUT", "b": "WAITING"}


def test_all_with_a_deadline_shows_the_tokens_closed_before_it() -> None:
    a, b = token("a", COMPLETED, closed=4), token("b", COMPLETED, closed=12)
    outcome = group_outcome([a, b], "all", at(10), ms(60))
    assert outcome.done and outcome.timed_out
    assert shown(outcome.snapshot) == {"a": "COMPLETED", "b": "WAITING"}
