"""Which key signs a database's callback URLs: a check value both backends keep in ``meta``.

The signing secret lives outside the database (derived from the secret key), so nothing stops
two processes of one database from signing with different keys, say a worker started without
``WAITPOINT_SECRET_KEY`` that generated a key of its own: the URLs it hands out would then be
refused by the API server. The database keeps a check value of the secret (an HMAC of a fixed
label under it: it reveals nothing about the secret) so that such a process notices, and says
so, at start.
"""

from __future__ import annotations

from typing import Literal

from ..keys import SigningSecrets, signing_check
from ..logs import get_logger

SIGNING_CHECK = "signing_key_check"
"""The ``meta`` key of the check value."""

Outcome = Literal["same", "recorded", "rotated", "mismatch"]

log = get_logger("engine.storage")


def settle(stored: str | None, signing: SigningSecrets) -> tuple[Outcome, str | None]:
    """What opening the database with ``signing`` does to the ``stored`` check value: the
    outcome, and the value to store (None: leave it as it is).

    The first process records its own; a process whose *previous* key is the recorded one
    (a key rotation) moves it on to its current key; any other key is a mismatch, which does
    not stop the process (refusing to start would also stop the processes of a rotation
    that are on the old key) but is logged as a warning.
    """
    current = signing_check(signing.current)
    if stored == current:
        return "same", None
    if stored is None:
        return "recorded", current
    if signing.previous is not None and stored == signing_check(signing.previous):
        return "rotated", current
    return "mismatch", None


def log_outcome(outcome: Outcome, **where: str) -> None:
    if outcome == "rotated":
        log.info("storage.signing_key_rotated", **where)
    elif outcome == "mismatch":
        log.warning(
            "storage.signing_key_mismatch",
            **where,
            problem="this process signs callback URLs with another key than the one recorded"
            " in the database: an API server with that key refuses the URLs this process"
            " makes. Give every process the same WAITPOINT_SECRET_KEY (or"
            " WAITPOINT_SIGNING_SECRET); when rotating, set WAITPOINT_PREVIOUS_SECRET_KEY",
        )


__all__ = ["SIGNING_CHECK", "Outcome", "log_outcome", "settle"]
