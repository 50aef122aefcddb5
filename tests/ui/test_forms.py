"""The completion form generated from a token's JSON Schema, and the data read back from it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel

from engine.ui.forms import FORM_ERROR, form_for, read_form, schema_errors


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Nested(BaseModel):
    a: int


class Everything(BaseModel):
    approved: bool
    reviewer: str
    level: Literal["low", "high"] = "low"
    color: Color = Color.RED
    amount: float | None = None
    count: int
    nested: Nested | None = None
    items: list[str] = []


SCHEMA = Everything.model_json_schema()


def kinds(schema: dict[str, Any] | None) -> dict[str, str]:
    return {f.name: f.kind for f in form_for(schema).fields}


def test_each_property_gets_the_input_its_type_calls_for() -> None:
    assert kinds(SCHEMA) == {
        "approved": "boolean",
        "reviewer": "text",
        "level": "choice",
        "color": "choice",  # an Enum behind a $ref
        "amount": "number",  # `float | None` is a number that may be null
        "count": "integer",
        "nested": "json",
        "items": "json",
    }


def test_required_defaults_labels_and_choices_come_from_the_schema() -> None:
    fields = {f.name: f for f in form_for(SCHEMA).fields}
    assert fields["reviewer"].required and not fields["level"].required
    assert fields["level"].default == '"low"'
    assert [c.label for c in fields["color"].choices] == ["red", "blue"]
    assert fields["color"].default == '"red"'
    assert fields["count"].attrs["step"] == "1"
    assert fields["amount"].attrs["step"] == "any"
    assert fields["amount"].nullable
    assert fields["reviewer"].label == "Reviewer"


def test_a_boolean_approved_becomes_approve_and_reject_buttons() -> None:
    form = form_for(SCHEMA)
    assert form.approval
    assert "approved" not in [f.name for f in form.inputs]


def test_without_an_object_schema_the_whole_data_is_one_json_editor() -> None:
    for schema in (None, {}, {"type": "array"}, {"type": "object"}):
        assert form_for(schema).whole_json, schema


def test_constraints_become_input_attributes() -> None:
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 80},
            "score": {"type": "number", "minimum": 0, "maximum": 10},
            "mode": {"const": "fast"},
        },
    }
    fields = {f.name: f for f in form_for(schema).fields}
    assert fields["email"].attrs == {"type": "email", "maxlength": "80"}
    assert fields["score"].attrs == {"type": "number", "step": "any", "min": "0", "max": "10"}
    assert [c.value for c in fields["mode"].choices] == ['"fast"']


def test_a_submitted_form_reads_back_as_typed_json() -> None:
    form = form_for(SCHEMA)
    reading = read_form(
        form,
        [
            ("data.approved", "true"),
            ("data.reviewer", "ana"),
            ("data.level", '"high"'),
            ("data.color", '"blue"'),
            ("data.amount", "19.5"),
            ("data.count", "3"),
            ("data.nested", '{"a": 1}'),
            ("data.items", ""),
        ],
    )
    assert reading.errors == {}
    assert reading.data == {
        "approved": True,
        "reviewer": "ana",
        "level": "high",
        "color": "blue",
        "amount": 19.5,
        "count": 3,
        "nested": {"a": 1},
    }
    assert schema_errors(form, SCHEMA, reading.data) == {}


def test_a_toggle_left_off_is_false_and_one_switched_on_is_true() -> None:
    schema = {"type": "object", "properties": {"urgent": {"type": "boolean"}}}
    form = form_for(schema)
    assert read_form(form, [("data.urgent", "false")]).data == {"urgent": False}
    assert read_form(form, [("data.urgent", "false"), ("data.urgent", "true")]).data == {
        "urgent": True
    }


def test_text_that_is_not_a_number_or_json_is_refused_at_its_field() -> None:
    reading = read_form(
        form_for(SCHEMA),
        [("data.count", "three"), ("data.amount", "inf"), ("data.nested", "{oops")],
    )
    assert reading.errors["count"] == "'three' is not a whole number"
    assert reading.errors["amount"] == "'inf' is not a finite number"
    assert reading.errors["nested"].startswith("not valid JSON")


def test_schema_messages_are_put_next_to_the_property_they_are_about() -> None:
    form = form_for(SCHEMA)
    reading = read_form(form, [("data.count", "2"), ("data.nested", '{"a": "x"}')])
    errors = schema_errors(form, SCHEMA, reading.data)
    assert errors["reviewer"] == "this field is required"
    assert errors[FORM_ERROR] == "choose Approve or Reject"
    assert errors["nested"] == 'a: "x" is not of type "integer"'


def test_the_whole_json_editor_reads_any_json_and_reports_where_it_breaks_the_schema() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    form = form_for(schema)
    reading = read_form(form, [("json", "[1, 2]")])
    assert reading.data == [1, 2] and reading.errors == {}
    assert read_form(form, [("json", "")]).data is None
    errors = schema_errors(form, schema, ["x"])
    assert errors == {"json": '0: "x" is not of type "integer"'}
