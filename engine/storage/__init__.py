"""Storage backends, chosen by the database URL's scheme."""

from __future__ import annotations

from ..clock import Clock
from ..errors import ConfigurationError
from .base import (
    DataToCheck,
    DeclaredSchedule,
    GroupMember,
    JournalWrite,
    NewApproval,
    NewDebounce,
    NewRun,
    NewSchedule,
    NewToken,
    NewVote,
    NewWorker,
    Notice,
    PageRequest,
    RunFilter,
    ScheduleChange,
    ScheduleFiring,
    Storage,
    TimerOutlook,
    TokenFilter,
)
from .urls import display_url


def open_storage(
    url: str,
    *,
    signing_secret: str,
    previous_signing_secret: str | None = None,
    synchronous: str = "FULL",
    pool_size: int = 10,
    clock: Clock | None = None,
    listen_url: str | None = None,
) -> Storage:
    """The backend for ``url`` (not yet opened: ``await storage.open()``).

    ``signing_secret`` is the secret this process signs callback URLs with
    (``engine.keys.signing_secrets`` finds a process's; ``previous_signing_secret`` during a
    key rotation): the storage signs nothing with it, but records a check value of it so that
    a process signing with another key notices (``storage.signing``).
    """
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStorage

        return SQLiteStorage(
            url,
            signing_secret=signing_secret,
            previous_signing_secret=previous_signing_secret,
            synchronous=synchronous,
            clock=clock,
        )
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStorage  # needs the optional asyncpg driver

        return PostgresStorage(
            url,
            signing_secret=signing_secret,
            previous_signing_secret=previous_signing_secret,
            clock=clock,
            pool_size=pool_size,
            listen_url=listen_url,
        )
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/file.db"
        " or postgresql://user@host:5432/database"
    )


__all__ = [
    "DataToCheck",
    "DeclaredSchedule",
    "GroupMember",
    "JournalWrite",
    "NewApproval",
    "NewDebounce",
    "NewRun",
    "NewSchedule",
    "NewToken",
    "NewVote",
    "NewWorker",
    "Notice",
    "PageRequest",
    "RunFilter",
    "ScheduleChange",
    "ScheduleFiring",
    "Storage",
    "TimerOutlook",
    "TokenFilter",
    "display_url",
    "open_storage",
]
