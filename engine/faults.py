"""Named crash points for fault-injection tests: ``WAITPOINT_CRASH_AT=<point>``.

When the variable names a point, the process exits at once (``os._exit(77)``: no cleanup, no
flush, like ``kill -9``) the first time it gets there. Tests use this to prove that a crash at
each delicate moment loses nothing that was acknowledged. Unset, a crash point costs one
dictionary lookup.

Points: ``journal.before_commit`` (a journal entry written, its transaction not committed),
``commit.before`` and ``commit.after`` (around every group commit, before callers hear of it),
``suspend.before_commit`` (a run being parked), ``complete.before_commit`` (a token being
completed), ``timers.before_commit`` (timeouts being fired), ``lease.renew`` (leases being
renewed), ``api.complete.before_response`` (a completion committed, the HTTP answer not sent).
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 77
POINTS = frozenset(
    {
        "journal.before_commit",
        "commit.before",
        "commit.after",
        "suspend.before_commit",
        "complete.before_commit",
        "timers.before_commit",
        "lease.renew",
        "api.complete.before_response",
    }
)


def crash_point(name: str) -> None:
    """Exit the process right here if ``WAITPOINT_CRASH_AT`` names this point."""
    if os.environ.get("WAITPOINT_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
