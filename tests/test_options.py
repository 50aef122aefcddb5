"""Trigger and token options are named once (``engine.options``); a caller mypy does not check
gets the ``TypeError`` a signature would raise for an option that does not exist."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine
from engine.requests import run_request, token_request


async def test_an_unknown_option_is_a_type_error_naming_it(engine: Engine) -> None:
    bogus: dict[str, Any] = {"idempotency_key": "k", "bogus_option": 1}
    with pytest.raises(
        TypeError, match="trigger\\(\\) got an unexpected keyword argument 'bogus_option'"
    ):
        await engine.trigger("any-task", None, **bogus)
    with pytest.raises(TypeError, match="'bogus_option'"):
        run_request("any-task", None, 0, **bogus)
    with pytest.raises(TypeError, match="create_token\\(\\) got an unexpected keyword argument"):
        token_request(0, **bogus)
    with pytest.raises(TypeError, match="'bogus_option'"):
        await engine.tokens.create(**bogus)
