"""Object ids: a prefix plus a ULID, so ids sort by creation time (cursor paging relies on it)."""

from __future__ import annotations

from ulid import ULID

RUN_PREFIX = "run_"
TOKEN_PREFIX = "waitpoint_"


def new_run_id() -> str:
    return RUN_PREFIX + str(ULID()).lower()


def new_token_id() -> str:
    return TOKEN_PREFIX + str(ULID()).lower()
