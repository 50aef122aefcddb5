"""Completing a token from a submitted form: read it, check it, complete, or say what is wrong.

Shared by the dashboard's token page (the secret key holder, ``completedVia: ui``) and the
one-link approval page (the link's public access token, ``completedVia: public-token``); the
voting page reads its form with ``read_checked`` too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..client import Engine
from ..errors import ValidationError
from ..models import CompletionResult, CompletionSource, Token
from ..validation import off_the_loop
from .forms import FORM_ERROR, Form, Reading, form_for, read_form, schema_errors, validator_for


@dataclass(frozen=True)
class Submission:
    form: Form
    reading: Reading
    result: CompletionResult | None
    """None when the form was refused (``reading.errors`` says why)."""


def prepare(token: Token) -> Form:
    """The token's form, with its schema validator built now rather than on the first submit."""
    return prepared_form(token.data_schema)


def prepared_form(schema: dict[str, Any] | None) -> Form:
    """The form for ``schema``, its validator built now rather than on the first submit."""
    if schema is not None:
        validator_for(schema)
    return form_for(schema)


async def read_checked(
    form: Form, schema: dict[str, Any] | None, pairs: Sequence[tuple[str, str]]
) -> Reading:
    """What the submitted form says, with every message about it next to its field: the
    field's own text first, then the schema (checked off the event loop)."""
    reading = read_form(form, pairs)
    try:
        found = await off_the_loop(
            functools.partial(schema_errors, form, schema, reading.data), "the answer"
        )
    except ValidationError as exc:
        found = {FORM_ERROR: str(exc)}
    for name, message in found.items():
        reading.errors.setdefault(name, message)  # a field's own reading error says more
    return reading


async def submit(
    engine: Engine, token: Token, pairs: Sequence[tuple[str, str]], source: CompletionSource
) -> Submission:
    form = form_for(token.data_schema)
    reading = await read_checked(form, token.data_schema, pairs)
    if reading.errors:
        return Submission(form, reading, None)
    try:
        result = await engine.tokens.complete(token.id, reading.data, source=source)
    except ValidationError as exc:  # the engine's own check: the last word on the data
        reading.errors[FORM_ERROR] = str(exc)
        return Submission(form, reading, None)
    return Submission(form, reading, result)
