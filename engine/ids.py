"""Object ids: a prefix plus a ULID (48-bit milliseconds, 80 random bits, Crockford base32).

Ids sort by creation time, which cursor paging relies on. Within one process they are also
strictly increasing inside the same millisecond (the random part is incremented), so a list
shows objects created in a burst in the order they were created.
"""

from __future__ import annotations

import secrets
import threading
import time

RUN_PREFIX = "run_"
TOKEN_PREFIX = "waitpoint_"
SCHEDULE_PREFIX = "sched_"

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = (0, 0)


def new_ulid() -> str:
    """A lowercase ULID, strictly greater than the previous one made by this process."""
    global _last
    with _lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_random = _last
        if millis <= last_millis:
            millis, random = last_millis, last_random + 1
            if random >> _RANDOM_BITS:  # 2**80 ids in one millisecond: borrow the next one
                millis, random = millis + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            random = secrets.randbits(_RANDOM_BITS - 1)  # headroom for increments
        _last = (millis, random)
    value = (millis << _RANDOM_BITS) | random
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -5, -5))


def new_run_id() -> str:
    return RUN_PREFIX + new_ulid()


def new_token_id() -> str:
    return TOKEN_PREFIX + new_ulid()


def new_schedule_id() -> str:
    return SCHEDULE_PREFIX + new_ulid()
