"""Run and token ids: prefix + lowercase ULID, unique and sortable by creation time."""

from __future__ import annotations

import re
import time

from engine.ids import RUN_PREFIX, TOKEN_PREFIX, new_run_id, new_token_id

ULID_TEXT = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")  # Crockford base32, lowercase
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def millis_of(ulid: str) -> int:
    """The timestamp part of a ULID: its first 10 characters, 5 bits each."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_run_ids_start_with_run_and_a_lowercase_ulid() -> None:
    run_id = new_run_id()
    assert RUN_PREFIX == "run_"
    assert run_id.startswith("run_")
    assert ULID_TEXT.match(run_id.removeprefix("run_"))


def test_token_ids_start_with_waitpoint_and_a_lowercase_ulid() -> None:
    token_id = new_token_id()
    assert TOKEN_PREFIX == "waitpoint_"
    assert token_id.startswith("waitpoint_")
    assert ULID_TEXT.match(token_id.removeprefix("waitpoint_"))


def test_ids_carry_their_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    run_id, token_id = new_run_id(), new_token_id()
    after = time.time_ns() // 1_000_000
    for suffix in (run_id.removeprefix("run_"), token_id.removeprefix("waitpoint_")):
        assert before <= millis_of(suffix) <= after


def test_ids_are_unique_over_10k() -> None:
    assert len({new_run_id() for _ in range(10_000)}) == 10_000
    assert len({new_token_id() for _ in range(10_000)}) == 10_000


def test_ids_generated_2ms_apart_sort_by_creation() -> None:
    runs, tokens = [], []
    for _ in range(25):
        runs.append(new_run_id())
        tokens.append(new_token_id())
        time.sleep(0.002)
    assert runs == sorted(runs)
    assert tokens == sorted(tokens)
    assert len(set(runs)) == len(set(tokens)) == 25


def test_ids_made_in_one_burst_are_strictly_increasing() -> None:
    burst = [new_token_id() for _ in range(10_000)]
    assert burst == sorted(burst)
    assert len(set(burst)) == len(burst)
