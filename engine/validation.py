"""Checks on user input that every entry point shares (Python, CLI, later the REST API)."""

from __future__ import annotations

import functools
import json
from enum import StrEnum
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic_core import to_jsonable_python

from .errors import ValidationError

MAX_TAGS = 10
MAX_TAG_LENGTH = 128
MAX_PAGE_SIZE = 100

E = TypeVar("E", bound=StrEnum)


def clean_tags(tags: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """At most 10 tags of at most 128 characters; a single string counts as one tag."""
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise ValidationError("tags must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"too many tags: {len(tags)} given, at most {MAX_TAGS} allowed")
    for tag in tags:
        if not tag:
            raise ValidationError("tags must not be empty strings")
        if len(tag) > MAX_TAG_LENGTH:
            raise ValidationError(
                f"tag {tag[:20]!r}... is {len(tag)} characters long;"
                f" at most {MAX_TAG_LENGTH} allowed"
            )
    return list(dict.fromkeys(tags))


def clean_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit!r}")
    return limit


def clean_statuses(values: Any, enum: type[E]) -> list[E]:
    """Status filters given as one value or a list, by name; unknown names are refused."""
    if values is None:
        return []
    if isinstance(values, str | StrEnum):
        values = [values]
    try:
        return [enum(str(v).upper()) for v in values]
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise ValidationError(f"unknown status in {list(values)!r}; use one of {allowed}") from None


def clean_optional_text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValidationError(f"{what} must be a non-empty string of at most 1024 characters")
    return value


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` if it is a valid JSON Schema (2020-12), else a ValidationError saying why."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValidationError(f"schema is not a valid JSON Schema: {exc.message}") from exc
    return schema


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Draft202012Validator:
    return Draft202012Validator(check_schema(json.loads(schema_text)))


def check_against_schema(schema: dict[str, Any], value: Any, what: str) -> Any:
    """``value`` as JSON, or a ValidationError listing every place it breaks ``schema``."""
    data = to_jsonable_python(value)
    validator = _validator(json.dumps(schema, sort_keys=True))
    problems = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if problems:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in problems
        )
        raise ValidationError(f"{what} does not match the expected schema: {details}")
    return data
