"""Checks on user input that every entry point shares (Python, the CLI, the REST API).

JSON Schemas are compiled by jsonschema-rs with remote retrieval off and Rust's linear-time
regex engine, so a schema can neither make the server fetch a URL nor make a ``pattern``
take exponential time on some input.
"""

from __future__ import annotations

import functools
import itertools
import json
import unicodedata
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from pydantic_core import to_jsonable_python

from .errors import ValidationError

if TYPE_CHECKING:
    import jsonschema_rs

MAX_TAGS = 10
MAX_TAG_LENGTH = 128
MAX_PAGE_SIZE = 100
MAX_SCHEMA_ERRORS = 20
"""At most this many schema errors are listed in one message."""
SCHEMA_CHECK_SECONDS = 10.0
"""Time budget of one check of data against a schema (see ``validate_against_schema``)."""

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


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
    known = {e.value for e in enum}
    for value in values:
        if str(value).upper() not in known:
            allowed = ", ".join(e.value for e in enum)
            raise ValidationError(f"unknown status {str(value)!r} (use one of {allowed})")
    return [enum(str(v).upper()) for v in values]


MAX_VERSION_LENGTH = 64


def clean_version(value: Any, what: str = "version") -> str:
    """A task version (``@task(version=)``, ``--version``, ``runs migrate --to``): at most 64
    printable characters without whitespace. It is compared as it is written, in SQL and in
    messages (``waiting for a worker of version v41``), so nothing invisible may differ."""
    fine = (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VERSION_LENGTH
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )
    if not fine:
        raise ValidationError(
            f"{what} must be a version: 1 to {MAX_VERSION_LENGTH} printable characters without"
            f" spaces, such as v42 or 2024-06-01; got {value!r}"
        )
    return str(value)


MAX_TOPIC_LENGTH = 200


def clean_topic(value: Any) -> str:
    """A message topic (``receive``, ``runs.send``): 1 to 200 printable characters without
    whitespace or ``#``, which would blur the journal key of the ``receive`` it names."""
    fine = (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOPIC_LENGTH
        and value.isprintable()
        and not any(c.isspace() or c == "#" for c in value)
    )
    if not fine:
        raise ValidationError(
            f"a message topic is 1 to {MAX_TOPIC_LENGTH} printable characters without spaces"
            f" or '#', such as comment or review.approved; got {value!r}"
        )
    return str(value)


def clean_optional_text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValidationError(f"{what} must be a non-empty string of at most 1024 characters")
    return value


MAX_TITLE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4000
MAX_CONTEXT_BYTES = 16_384
"""A token's context, as compact JSON (UTF-8), is at most this long."""


def clean_token_text(value: Any, what: str, limit: int) -> str | None:
    """A token's title or description: a string of at most ``limit`` characters (an empty
    one is no value)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValidationError(f"{what} must be at most {limit} characters long, got {len(value)}")
    return value or None


def clean_token_context(value: Any) -> dict[str, Any] | None:
    """A token's context: a JSON object of at most ``MAX_CONTEXT_BYTES`` as compact JSON."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError(f"context must be a JSON object (a dict), got {type(value).__name__}")
    try:
        text = json.dumps(
            to_jsonable_python(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"context must be JSON-serialisable: {exc}") from None
    size = len(text.encode())
    if size > MAX_CONTEXT_BYTES:
        raise ValidationError(
            f"context must be at most {MAX_CONTEXT_BYTES} bytes as JSON, got {size}"
        )
    return value or None


MAX_REASON_LENGTH = 1000
_REASON_CONTROLS_ALLOWED = frozenset("\n\t")


def clean_reason(value: Any) -> str | None:
    """Why a token was cancelled, or why a vote rejects: plain text of 1 to 1,000 characters
    once the whitespace around it is stripped, with no control characters but line breaks
    (``\\n``) and tabs. None is no reason; the stripped text is what is kept."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"reason must be a string, got {type(value).__name__}")
    text = value.strip()
    limit = MAX_REASON_LENGTH
    if not text or len(text) > limit:
        raise ValidationError(
            f"reason must be 1 to {limit} characters long (surrounding whitespace stripped),"
            f" got {len(text)}"
        )
    bad = next(
        (c for c in text if unicodedata.category(c) == "Cc" and c not in _REASON_CONTROLS_ALLOWED),
        None,
    )
    if bad is not None:
        raise ValidationError(
            f"reason must be plain text: control character U+{ord(bad):04X} at position"
            f" {text.index(bad)} (only line breaks and tabs are allowed)"
        )
    return text


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` if it is a usable JSON Schema, else a ValidationError saying why.

    Usable means: valid under its draft's meta-schema (2020-12 unless ``$schema`` names
    another draft), every ``$ref`` local (``#...``: the server never fetches a URL or reads a
    file to resolve one, neither now nor when data arrives), and every ``pattern`` one that
    the linear-time regex engine accepts (no lookaround, no backreferences), so no data can
    make matching take exponential time.
    """
    validator(schema)
    return schema


def data_schema_of(schema: Any) -> dict[str, Any] | None:
    """The JSON Schema a token's or an approval's ``schema=`` gives: a pydantic model's, or
    a JSON Schema checked (``check_schema``); None for none."""
    from pydantic import BaseModel

    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if isinstance(schema, dict):
        return check_schema(schema)
    if schema is not None:
        raise ValidationError("schema must be a pydantic model class or a JSON Schema object")
    return None


def non_local_refs(schema: Any) -> list[str]:
    """Every ``$ref`` (``$dynamicRef``, ``$recursiveRef``) in ``schema`` that is not ``#...``.

    Values of ``const``, ``enum``, ``default`` and ``examples`` are data, not schemas, and are
    not looked into.
    """
    found: list[str] = []
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _REF_KEYWORDS and isinstance(value, str):
                    if not value.startswith("#"):
                        found.append(value)
                elif key not in _DATA_KEYWORDS:
                    stack.append(value)
    return found


_REF_KEYWORDS = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


@functools.lru_cache(maxsize=256)
def _build(schema_text: str) -> jsonschema_rs.Validator:
    """The validator of a schema (given as canonical JSON text, the cache key).

    ``offline``: nothing is ever retrieved (jsonschema-rs fetches remote ``$ref``s by
    default). ``RegexOptions``: Rust's ``regex`` crate, linear-time matching. jsonschema-rs is
    imported here, by the first schema, not by ``import engine``.
    """
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(
            json.loads(schema_text),
            offline=True,
            validate_formats=False,
            pattern_options=jsonschema_rs.RegexOptions(),
        )
    except jsonschema_rs.ValidationError as exc:
        where = ".".join(str(part) for part in exc.instance_path)
        reason = exc.message
        kind = exc.kind
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex":
            reason = (
                f"the pattern {exc.instance} is not supported: patterns are matched in linear"
                " time, without lookaround or backreferences"
            )
        reason = f"{where}: {reason}" if where else reason
        raise ValidationError(f"schema is not a valid JSON Schema: {reason}") from None
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ValidationError(f"schema is not a valid JSON Schema: {exc}") from None


def validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The (cached) validator of ``schema``, or the ValidationError of ``check_schema``."""
    remote = non_local_refs(schema)
    if remote:
        listed = ", ".join(repr(ref) for ref in remote[:3])
        raise ValidationError(
            f"schema refers to {listed}: only local references ('#', '#/$defs/...') are"
            " allowed; the server does not fetch schemas"
        )
    try:
        text = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"schema is not a JSON object: {exc}") from None
    return _build(text)


def path_key(error: jsonschema_rs.ValidationError) -> list[tuple[bool, Any]]:
    """Sort key of an error by where it is in the instance (keys and indexes never compared)."""
    return [(isinstance(part, str), part) for part in error.instance_path]


def check_against_schema(schema: dict[str, Any], value: Any, what: str) -> Any:
    """``value`` as JSON, or a ValidationError listing the places it breaks ``schema``.

    Runs on the calling thread: from async code use ``validate_against_schema``.
    """
    data = to_jsonable_python(value)
    problems = sorted(
        itertools.islice(validator(schema).iter_errors(data), MAX_SCHEMA_ERRORS + 1),
        key=path_key,
    )
    if problems:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.instance_path) or '(root)'}: {e.message}"
            for e in problems[:MAX_SCHEMA_ERRORS]
        )
        more = "; and more" if len(problems) > MAX_SCHEMA_ERRORS else ""
        raise ValidationError(f"{what} does not match the expected schema: {details}{more}")
    return data


async def validate_against_schema(schema: dict[str, Any], value: Any, what: str) -> Any:
    """``check_against_schema`` off the event loop, within ``SCHEMA_CHECK_SECONDS``."""
    return await off_the_loop(functools.partial(check_against_schema, schema, value, what), what)


async def off_the_loop(check: Callable[[], T], what: str) -> T:
    """``check()`` in a worker thread, abandoned (and ``what`` refused) past the time budget.

    The thread keeps the event loop free to answer other requests while large data is
    checked; a check that overruns finishes on its own in the background.
    """
    try:
        with anyio.fail_after(SCHEMA_CHECK_SECONDS):
            return await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        raise ValidationError(
            f"{what} could not be checked against its schema within"
            f" {SCHEMA_CHECK_SECONDS:g} s; send less data or use a simpler schema"
        ) from None


MAX_APPROVER_LENGTH = 320
"""An e-mail address is at most 320 characters; an approver is an identity like one."""


def clean_approver(value: Any) -> str:
    """An approver: an identity (an e-mail address, a user name), 1-320 printable characters
    without spaces (it is part of their link's scope)."""
    if not isinstance(value, str):
        raise ValidationError(f"an approver must be a string, got {type(value).__name__}")
    person = value.strip()
    if not person or len(person) > MAX_APPROVER_LENGTH or not person.isprintable():
        raise ValidationError(f"an approver is 1-{MAX_APPROVER_LENGTH} printable characters")
    if any(c.isspace() for c in person):
        raise ValidationError(f"an approver has no spaces: {person!r}")
    return person
