"""The engine's log events, silent until the application asks for them.

Every state change is logged as an event (``run.started``, ``token.completed``, ...) with
``run_id``, ``task`` and ``attempt`` bound while an attempt runs. Like any library, importing
or using the engine configures no logging; where its events go is the application's choice:

- the application configured structlog (``structlog.configure(...)``, or
  ``configure_logging()`` below, which the ``waitpoint`` CLI calls): through structlog, as
  configured there;
- otherwise through the standard library's ``logging``, under the logger ``engine``, which has
  a ``NullHandler``: nothing is printed until the application configures ``logging``
  (``logging.basicConfig(level=logging.INFO)`` shows every event on stderr).

structlog itself is imported when it is configured, never by ``import engine``: it pulls in
rich, and a library user who logs nothing should not wait for it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from typing import Any, Literal

logging.getLogger("engine").addHandler(logging.NullHandler())

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
}

_BOUND: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("engine_log_context")
"""The fields bound to every event of the current attempt (``bind``)."""


def _structlog() -> Any:
    """structlog's module if the application configured it, else None (never imports it)."""
    module = sys.modules.get("structlog")
    return module if module is not None and module.is_configured() else None


class EngineLogger:
    """``log.info("run.started", resumed=True)``: one logger per engine module.

    Each event goes to structlog when structlog is configured at that moment, to the standard
    library's logger of the same name otherwise (so a later ``structlog.configure`` or
    ``capture_logs`` is followed at once).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)
        # structlog's concrete logger for this name, the configuration it was made under,
        # and the levels it lets through
        self._structlog: Any = None
        self._made_under: tuple[Any, ...] = ()
        self._enabled: frozenset[str] = frozenset()

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error event with the exception being handled."""
        self._emit("exception", event, fields)

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        structlog = _structlog()
        if structlog is not None:
            logger = self._structlog_logger(structlog)
            if method in self._enabled:
                bound = _BOUND.get(None)
                getattr(logger, method)(event, **({**bound, **fields} if bound else fields))
            return
        level = _LEVELS[method]
        if self._stdlib.isEnabledFor(level):
            bound = _BOUND.get(None)
            if bound:
                fields = {**bound, **fields}
            pairs = " ".join(f"{key}={value!r}" for key, value in fields.items())
            message = f"{event} {pairs}" if pairs else event
            self._stdlib.log(level, message, exc_info=method == "exception")

    def _structlog_logger(self, structlog: Any) -> Any:
        """structlog's logger for this name, made again only when structlog is configured
        anew: the lazy proxy ``get_logger`` returns would build one at every event (10 us of
        the 25 an event cost). ``capture_logs`` edits the processors list in place, which the
        logger made here follows; ``configure`` replaces what it is given, which makes a new
        one. A level the wrapper filters out then costs a dict lookup."""
        config = structlog.get_config()
        made_under = (
            config["processors"],
            config["wrapper_class"],
            config["logger_factory"],
            config["context_class"],
        )
        was = self._made_under
        if (
            self._structlog is None
            or made_under[0] is not was[0]
            or made_under[1] is not was[1]
            or made_under[2] is not was[2]
            or made_under[3] is not was[3]
        ):
            logger = structlog.get_logger(self.name).bind()
            enabled = getattr(logger, "is_enabled_for", None)
            self._enabled = frozenset(
                name for name, level in _LEVELS.items() if enabled is None or enabled(level)
            )
            self._structlog, self._made_under = logger, made_under
        return self._structlog


def get_logger(name: str) -> EngineLogger:
    """The logger of an engine module (``engine.worker``, ...); cheap, imports nothing."""
    return EngineLogger(name)


def bind(**fields: Any) -> tuple[contextvars.Token[dict[str, Any]], dict[str, Any] | None]:
    """Bind ``fields`` to every event until ``unbind``; also to the application's own structlog
    events (through ``structlog.contextvars``) when it uses structlog."""
    token = _BOUND.set({**_BOUND.get({}), **fields})
    structlog = sys.modules.get("structlog")
    tokens = structlog.contextvars.bind_contextvars(**fields) if structlog is not None else None
    return token, tokens


def unbind(bound: tuple[contextvars.Token[dict[str, Any]], dict[str, Any] | None]) -> None:
    token, tokens = bound
    if tokens is not None:
        sys.modules["structlog"].contextvars.reset_contextvars(**tokens)
    _BOUND.reset(token)


class _Stderr:
    """Whatever ``sys.stderr`` is at the moment of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _colors() -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def configure_logging(
    fmt: Literal["auto", "console", "json"] = "auto", level: int = logging.INFO
) -> None:
    """Configure structlog to print every event to stderr: readable lines in a terminal
    (``console``), one JSON object per line otherwise (``json``).

    The CLI calls it; an application may too (it configures structlog for the whole process).
    """
    import structlog

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
