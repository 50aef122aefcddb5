"""The defaults and fixed rules that the CLI's help quotes, in a module that imports nothing.

``waitpoint --help`` reads them before it loads anything else (pydantic alone would cost it a
fifth of its start); ``settings`` and ``models`` take them from here, so each has one owner.
"""

DEFAULT_DATABASE_URL = "sqlite:///.waitpoint/engine.db"
"""Where runs live when neither ``--database`` nor ``WAITPOINT_DATABASE_URL`` says."""

LIVE_LEASES = 3
"""A worker is live while its last heartbeat is younger than this many of its lease periods
(90 s with the default 30 s lease; it beats every third of one)."""
