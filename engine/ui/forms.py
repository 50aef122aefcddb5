"""A completion form generated from a token's JSON Schema, and the data read back from it.

Each top-level property of an object schema becomes one field: a boolean a toggle, an enum
(or ``const``) a choice, a string or a number an input, anything else (nested objects,
arrays) a small JSON editor. A token without a usable schema gets one JSON editor for the
whole data. A boolean ``approved`` property becomes the Approve and Reject buttons.

Reading a form gives the completion data plus, per field, what is wrong with it: first the
field's own text (``"abc"`` in a number), then the token's schema, whose messages are put
next to the property they are about. The engine checks the data against the schema again
when it completes the token; this pass only decides where each message goes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema_rs
from jsonschema_rs import ValidationErrorKind

from ..api.body import too_many_digits
from ..errors import ValidationError
from ..validation import MAX_SCHEMA_ERRORS, path_key, validator

Kind = Literal["boolean", "choice", "text", "integer", "number", "json"]
APPROVED = "approved"
FORM_ERROR = ""
"""The key of messages about the data as a whole rather than one field."""
PREFIX = "data."
WHOLE = "json"

_INPUT_TYPES = {"email": "email", "uri": "url", "date": "date"}


@dataclass(frozen=True)
class Choice:
    value: str
    """The option's JSON text (what the form sends back)."""
    label: str


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: Kind
    required: bool
    nullable: bool = False
    description: str = ""
    choices: tuple[Choice, ...] = ()
    default: str = ""
    """The default as the form shows it (JSON text for choices and JSON fields)."""
    attrs: dict[str, str] = field(default_factory=dict)
    """Input attributes: type, min, max, step, minlength, maxlength, pattern."""

    @property
    def input_name(self) -> str:
        return PREFIX + self.name


@dataclass(frozen=True)
class Form:
    fields: tuple[Field, ...] = ()
    approval: bool = False
    """A required-or-not boolean ``approved``: shown as Approve and Reject buttons."""
    whole_json: bool = True
    """No usable object schema: one JSON editor for the whole data."""

    @property
    def inputs(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if not (self.approval and f.name == APPROVED))


@dataclass
class Reading:
    """What a submitted form said: the data, what the user typed, and what is wrong."""

    data: Any = None
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _resolve(schema: dict[str, Any], node: Any, depth: int = 0) -> dict[str, Any]:
    """Follow local ``$ref``s (``#/$defs/X``); siblings of a ``$ref`` override its target."""
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/") or depth > 16:
        return node
    target: Any = schema
    for part in ref[2:].split("/"):
        target = (
            target.get(part.replace("~1", "/").replace("~0", "~"), {})
            if isinstance(target, dict)
            else {}
        )
    merged = {**_resolve(schema, target, depth + 1), **node}
    merged.pop("$ref", None)
    return merged


def _unwrap_nullable(schema: dict[str, Any], node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``anyOf: [X, {type: null}]`` (pydantic's ``X | None``) is X that may be null."""
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list):
            resolved = [_resolve(schema, option) for option in options]
            rest = [option for option in resolved if option.get("type") != "null"]
            if len(rest) == 1 and len(rest) < len(resolved):
                merged = {**{k: v for k, v in node.items() if k != key}, **rest[0]}
                return merged, True
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        merged = {**{k: v for k, v in node.items() if k != "allOf"}, **_resolve(schema, all_of[0])}
        return _unwrap_nullable(schema, merged)
    kind = node.get("type")
    if isinstance(kind, list) and "null" in kind:
        others = [k for k in kind if k != "null"]
        if len(others) == 1:
            return {**node, "type": others[0]}, True
    return node, False


def _label(name: str, node: dict[str, Any]) -> str:
    title = node.get("title")
    if isinstance(title, str) and title.strip():
        return title.strip()
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").strip()
    return words[:1].upper() + words[1:] if words else name


def _field(schema: dict[str, Any], name: str, raw: Any, required: bool) -> Field:
    node, nullable = _unwrap_nullable(schema, _resolve(schema, raw))
    has_default = "default" in node
    default = node.get("default")
    kind, shown, choices, attrs = _shape(node, has_default, default)
    return Field(
        name=name,
        label=_label(name, node),
        kind=kind,
        required=required,
        nullable=nullable,
        description=str(node.get("description") or ""),
        choices=choices,
        default=shown,
        attrs=attrs,
    )


def _shape(
    node: dict[str, Any], has_default: bool, default: Any
) -> tuple[Kind, str, tuple[Choice, ...], dict[str, str]]:
    """The field's kind, its default as the form shows it, its choices and input attributes."""
    options = node.get("enum") if "enum" in node else ([node["const"]] if "const" in node else None)
    if isinstance(options, list) and options:
        choices = tuple(Choice(json.dumps(option), _choice_label(option)) for option in options)
        return "choice", json.dumps(default) if has_default else "", choices, {}
    kind = node.get("type")
    if kind == "boolean":
        return "boolean", "true" if default is True else "", (), {}
    if kind == "integer" or kind == "number":
        attrs = {"type": "number", "step": "1" if kind == "integer" else "any"}
        for key, attr in (("minimum", "min"), ("maximum", "max")):
            if isinstance(node.get(key), int | float) and not isinstance(node.get(key), bool):
                attrs[attr] = str(node[key])
        shown = str(default) if isinstance(default, int | float) and has_default else ""
        return ("integer" if kind == "integer" else "number"), shown, (), attrs
    if kind == "string":
        attrs = {"type": _INPUT_TYPES.get(str(node.get("format")), "text")}
        for key, attr in (("minLength", "minlength"), ("maxLength", "maxlength")):
            if isinstance(node.get(key), int):
                attrs[attr] = str(node[key])
        if isinstance(node.get("pattern"), str):
            attrs["pattern"] = node["pattern"]
        return "text", default if isinstance(default, str) else "", (), attrs
    shown = json.dumps(default, indent=2) if has_default and default is not None else ""
    return "json", shown, (), {}


def _choice_label(option: Any) -> str:
    return option if isinstance(option, str) else json.dumps(option)


def form_for(schema: dict[str, Any] | None) -> Form:
    """The form for completion data that must match ``schema`` (None: any JSON)."""
    if not isinstance(schema, dict):
        return Form()
    root, _ = _unwrap_nullable(schema, _resolve(schema, schema))
    properties = root.get("properties")
    if root.get("type", "object") != "object" or not isinstance(properties, dict) or not properties:
        return Form()
    listed = root.get("required")
    required = {str(name) for name in listed} if isinstance(listed, list) else set()
    fields = tuple(
        _field(schema, str(name), raw, str(name) in required) for name, raw in properties.items()
    )
    approval = any(f.name == APPROVED and f.kind == "boolean" for f in fields)
    return Form(fields=fields, approval=approval, whole_json=False)


_MISSING = object()


def read_form(form: Form, pairs: Sequence[tuple[str, str]]) -> Reading:
    """The completion data a submitted form holds, with a message per field it cannot read."""
    submitted: dict[str, str] = {}
    for key, text in pairs:
        submitted[key] = text  # the last value wins: a checked toggle after its hidden "false"
    reading = Reading()
    if form.whole_json:
        text = submitted.get(WHOLE, "").strip()
        reading.values[WHOLE] = submitted.get(WHOLE, "")
        whole = _json_value(text, reading.errors, WHOLE) if text else None
        reading.data = None if whole is _MISSING else whole
        return reading
    data: dict[str, Any] = {}
    for item in form.fields:
        raw = submitted.get(item.input_name)
        reading.values[item.name] = raw or ""
        value = _field_value(item, raw, reading.errors)
        if value is not _MISSING:
            data[item.name] = value
    reading.data = data
    return reading


def _field_value(item: Field, raw: str | None, errors: dict[str, str]) -> Any:
    if item.kind == "boolean":
        if raw is None:
            return _MISSING
        return raw in ("true", "on")
    text = (raw or "").strip() if item.kind != "text" else (raw or "")
    if text == "":
        return None if item.nullable and item.required else _MISSING
    if item.kind == "choice":
        for choice in item.choices:
            if choice.value == text:
                return json.loads(choice.value)
        errors[item.name] = "choose one of the options"
        return _MISSING
    if item.kind in ("integer", "number") and (problem := _too_long(text)):
        errors[item.name] = problem
        return _MISSING
    if item.kind == "integer":
        try:
            return int(text)
        except ValueError:
            errors[item.name] = f"{text!r} is not a whole number"
            return _MISSING
    if item.kind == "number":
        return _number(text, item.name, errors)
    if item.kind == "json":
        return _json_value(text, errors, item.name)
    return text


def _number(text: str, name: str, errors: dict[str, str]) -> Any:
    with contextlib.suppress(ValueError):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        errors[name] = f"{text!r} is not a number"
        return _MISSING
    if not math.isfinite(number):
        errors[name] = f"{text!r} is not a finite number"
        return _MISSING
    return number


def _json_value(text: str, errors: dict[str, str], key: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        errors[key] = f"not valid JSON: {exc}"
    except ValueError:
        errors[key] = f"not acceptable JSON: {too_many_digits()}"
    return _MISSING


def _too_long(text: str) -> str | None:
    """The message for a number Python will not convert (over 4,300 digits), else None."""
    digits = text.lstrip("+-")
    if len(digits) > sys.get_int_max_str_digits() > 0:
        return too_many_digits()
    return None


def validator_for(schema: dict[str, Any]) -> jsonschema_rs.Validator | None:
    """The (cached) validator of a token's schema, as the engine builds it (None: unusable).

    The same rules as everywhere: local ``$ref``s only, nothing fetched, linear-time patterns.
    """
    try:
        return validator(schema)
    except ValidationError:
        return None


_WEAK = ("anyOf", "oneOf")


def _is_null_type(error: jsonschema_rs.ValidationError) -> bool:
    kind = error.kind
    return isinstance(kind, ValidationErrorKind.Type) and list(kind.types) == ["null"]


def _clearest(error: jsonschema_rs.ValidationError) -> jsonschema_rs.ValidationError:
    """For ``anyOf``/``oneOf`` (pydantic's ``X | None``), the reason the non-null branch failed,
    rather than "is not valid under any of the given schemas"."""
    kind = error.kind
    if not isinstance(kind, ValidationErrorKind.AnyOf | ValidationErrorKind.OneOfNotValid):
        return error
    options = [e for branch in kind.context for e in branch if not _is_null_type(e)]
    if not options:
        return error
    best = min(options, key=lambda e: (len(e.instance_path), e.kind.name in _WEAK))
    return _clearest(best)


def schema_errors(form: Form, schema: dict[str, Any] | None, data: Any) -> dict[str, str]:
    """Where ``data`` breaks ``schema``: messages keyed by field name ("" for the whole)."""
    if schema is None:
        return {}
    check = validator_for(schema)
    if check is None:
        return {}
    names = {f.name for f in form.fields}
    errors: dict[str, str] = {}
    found = itertools.islice(check.iter_errors(data), MAX_SCHEMA_ERRORS)
    for error in sorted(found, key=path_key):
        error = _clearest(error)
        path = list(error.instance_path)
        key = FORM_ERROR
        message = error.message
        if path and str(path[0]) in names:
            key = str(path[0])
            if len(path) > 1:
                message = f"{'.'.join(str(p) for p in path[1:])}: {message}"
        elif not path and isinstance(error.kind, ValidationErrorKind.Required):
            name = error.kind.property
            if name in names:
                key, message = name, "this field is required"
                if form.approval and name == APPROVED:
                    key, message = FORM_ERROR, "choose Approve or Reject"
        if form.whole_json:
            key = WHOLE
            where = ".".join(str(p) for p in path)
            message = f"{where}: {message}" if where else message
        errors.setdefault(key, message)
    return errors
