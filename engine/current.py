"""The Engine entered most recently in this context, for code that is not handed one.

``async with Engine() as engine:`` makes it current, so ``create_token``, ``complete_token``
and ``Task.trigger`` work outside a run without passing it around. It lives below the facade
(``engine.client``) so that the task-facing functions reach it without importing the facade.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .client import Engine

_current: contextvars.ContextVar[Engine] = contextvars.ContextVar("waitpoint_engine")


def current_engine() -> Engine:
    """The Engine entered most recently in this context (``async with Engine() ...``)."""
    try:
        return _current.get()
    except LookupError:
        raise ConfigurationError(
            "no Engine is open here: outside a run, use `async with Engine() as engine:` "
            "(or call engine.tokens.create / engine.tokens.complete directly)"
        ) from None


def enter(engine: Engine) -> contextvars.Token[Engine]:
    """Make ``engine`` current; ``leave`` with what this returns undoes it."""
    return _current.set(engine)


def leave(entered: contextvars.Token[Engine]) -> None:
    _current.reset(entered)
