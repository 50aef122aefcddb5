"""Duration text ("30s", "1h30m", "7d") and the deadlines timeouts turn into."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine import ValidationError
from engine.durations import (
    Deadline,
    duration_ms,
    format_duration,
    parse_duration,
    resolve_deadline,
    to_timedelta,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1hr", timedelta(hours=1)),
        ("1hr30m", timedelta(hours=1, minutes=30)),
        ("90m", timedelta(minutes=90)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("0h30m", timedelta(minutes=30)),
    ],
)
def test_parse_duration_reads_unit_parts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_ignores_surrounding_whitespace() -> None:
    assert parse_duration("  1h \n") == timedelta(hours=1)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "5x", "h", "1.5h", "-1h", "+1h", "1h 30m", "1 h", "1H", "30", "s30", "1h-30m"],
)
def test_parse_duration_refuses_malformed_text_naming_it(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
    assert "'1h30m'" in str(info.value)  # the message shows the expected notation


@pytest.mark.parametrize("text", ["0s", "0h0m", "0w"])
def test_parse_duration_refuses_zero_length(text: str) -> None:
    with pytest.raises(ValidationError, match="longer than zero") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["\u0663s", "\uff13\uff10s"])  # Arabic-Indic 3, fullwidth 30
def test_parse_duration_refuses_non_ascii_digits(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_duration(text)


def test_parse_duration_refuses_absurdly_long_duration_as_validation_error() -> None:
    with pytest.raises(ValidationError):
        parse_duration("99999999999w")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=5400), "1h30m"),
        (timedelta(seconds=30), "30s"),
        (timedelta(days=7), "1w"),
        (timedelta(days=9), "1w2d"),
        (timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5), "1w2d3h4m5s"),
        (timedelta(hours=2, seconds=1), "2h1s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration_renders_parse_notation(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize("text", ["30s", "1h30m", "7d", "2w", "90m", "1hr", "1w2d3h4m5s", "86399s"])
def test_format_then_parse_round_trips(text: str) -> None:
    delta = parse_duration(text)
    assert parse_duration(format_duration(delta)) == delta


def test_to_timedelta_refuses_zero_negative_and_other_types() -> None:
    assert to_timedelta(timedelta(minutes=1)) == timedelta(minutes=1)
    with pytest.raises(ValidationError, match="longer than zero"):
        to_timedelta(timedelta(0))
    with pytest.raises(ValidationError, match="longer than zero"):
        to_timedelta(timedelta(seconds=-1))
    with pytest.raises(ValidationError, match="expected a string"):
        to_timedelta(3600)  # type: ignore[arg-type]


def test_resolve_deadline_from_text_keeps_the_text_as_ttl() -> None:
    assert resolve_deadline("1h30m", NOW) == (NOW + timedelta(minutes=90), "1h30m")


def test_resolve_deadline_strips_whitespace_from_ttl_text() -> None:
    assert resolve_deadline(" 7d ", NOW) == (NOW + timedelta(days=7), "7d")


def test_resolve_deadline_from_timedelta_renders_ttl() -> None:
    assert resolve_deadline(timedelta(seconds=5400), NOW) == (NOW + timedelta(minutes=90), "1h30m")


def test_resolve_deadline_from_aware_datetime_has_no_ttl_and_is_utc() -> None:
    local = datetime(2025, 6, 1, 15, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    deadline, ttl = resolve_deadline(local, NOW)
    assert ttl is None
    assert deadline == local
    assert deadline.utcoffset() == timedelta(0)
    assert deadline.hour == 13


def test_resolve_deadline_refuses_naive_datetime() -> None:
    naive = datetime(2030, 1, 1, 0, 0, 0)
    with pytest.raises(ValidationError, match="no timezone") as info:
        resolve_deadline(naive, NOW)
    assert naive.isoformat() in str(info.value)


@pytest.mark.parametrize("offset", [timedelta(seconds=-1), timedelta(0)])
def test_resolve_deadline_refuses_past_or_present_datetime(offset: timedelta) -> None:
    with pytest.raises(ValidationError, match="in the past"):
        resolve_deadline(NOW + offset, NOW)


def test_resolve_deadline_refuses_bad_text_and_zero_timedelta() -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        resolve_deadline("soon", NOW)
    with pytest.raises(ValidationError, match="longer than zero"):
        resolve_deadline(timedelta(0), NOW)


def test_resolve_deadline_refuses_deadline_beyond_datetime_max_as_validation_error() -> None:
    with pytest.raises(ValidationError):
        resolve_deadline("500000w", NOW)


def test_resolve_deadline_ttl_for_subsecond_timedelta_is_readable_duration() -> None:
    deadline, ttl = resolve_deadline(timedelta(milliseconds=500), NOW)
    assert deadline == NOW + timedelta(milliseconds=500)
    assert ttl is not None
    parse_duration(ttl)  # "0s" is refused by the engine's own parser


def test_duration_ms_rounds_up_so_a_wait_never_ends_early() -> None:
    assert duration_ms(timedelta(microseconds=1)) == 1
    assert duration_ms(timedelta(microseconds=1500)) == 2
    assert duration_ms("1h") == 3_600_000


def test_a_sleep_may_be_zero_but_never_negative() -> None:
    assert duration_ms("0s", allow_zero=True) == 0
    assert duration_ms(timedelta(0), allow_zero=True) == 0
    with pytest.raises(ValidationError, match="zero or longer"):
        duration_ms(timedelta(seconds=-1), allow_zero=True)
    with pytest.raises(ValidationError, match="longer than zero"):
        duration_ms("0s")


def test_a_deadline_is_resolved_when_its_waitpoint_is_made() -> None:
    assert Deadline.of("10s").resolve(1_000) == 11_000
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    assert Deadline.of(moment).resolve(1_000) == int(moment.timestamp() * 1000)
    with pytest.raises(ValidationError, match="no timezone"):
        Deadline.of(datetime(2030, 1, 1))
