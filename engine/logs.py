"""structlog set-up: readable lines in a terminal, one JSON object per line otherwise.

Every state change is logged as an event with ``run_id``, ``task`` and ``attempt`` bound
(the runtime binds them once per attempt through ``structlog.contextvars``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog


class _Stderr:
    """Whatever ``sys.stderr`` is at the moment of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _colors() -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def configure_default_logging() -> None:
    """Unless the application configured structlog, send the engine's events to stderr.

    structlog's own default prints to stdout, where it would mix with a program's output.
    """
    if not structlog.is_configured():
        configure_logging("auto")


def configure_logging(
    fmt: Literal["auto", "console", "json"] = "auto", level: int = logging.INFO
) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=_colors())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if not use_console
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
