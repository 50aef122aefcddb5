"""Input checks shared by every entry point: tags, page limits, status filters, schemas."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from engine import RunStatus, ValidationError, WaitpointStatus
from engine.validation import (
    MAX_PAGE_SIZE,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    check_against_schema,
    clean_limit,
    clean_statuses,
    clean_tags,
)

# tags ------------------------------------------------------------------------------------


def test_limits_are_ten_tags_of_128_chars_and_pages_of_100() -> None:
    assert (MAX_TAGS, MAX_TAG_LENGTH, MAX_PAGE_SIZE) == (10, 128, 100)


def test_clean_tags_none_is_no_tags() -> None:
    assert clean_tags(None) == []


def test_clean_tags_single_string_is_one_tag() -> None:
    assert clean_tags("vip") == ["vip"]


def test_clean_tags_accepts_tuple_and_returns_list() -> None:
    assert clean_tags(("a", "b")) == ["a", "b"]


def test_clean_tags_accepts_ten() -> None:
    tags = [f"t{i}" for i in range(10)]
    assert clean_tags(tags) == tags


def test_clean_tags_refuses_eleven_naming_the_count() -> None:
    with pytest.raises(ValidationError, match=r"11 given, at most 10 allowed"):
        clean_tags([f"t{i}" for i in range(11)])


def test_clean_tags_accepts_128_char_tag() -> None:
    assert clean_tags(["x" * 128]) == ["x" * 128]


def test_clean_tags_refuses_129_char_tag_naming_its_length() -> None:
    with pytest.raises(ValidationError, match=r"129 characters long; at most 128 allowed"):
        clean_tags(["ok", "y" * 129])


@pytest.mark.parametrize("tags", [[1], ["a", None], [b"bytes"], {"a"}, 5])
def test_clean_tags_refuses_non_strings(tags: Any) -> None:
    with pytest.raises(ValidationError, match="tags must be a list of strings"):
        clean_tags(tags)


def test_clean_tags_refuses_empty_string() -> None:
    with pytest.raises(ValidationError, match="empty"):
        clean_tags(["a", ""])


def test_clean_tags_collapses_duplicates_keeping_first_order() -> None:
    assert clean_tags(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


# limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 25, 100])
def test_clean_limit_accepts_1_to_100(limit: int) -> None:
    assert clean_limit(limit) == limit


@pytest.mark.parametrize("limit", [0, -1, 101, 10_000])
def test_clean_limit_refuses_outside_1_to_100_naming_value(limit: int) -> None:
    with pytest.raises(ValidationError, match="between 1 and 100") as info:
        clean_limit(limit)
    assert f"got {limit!r}" in str(info.value)


@pytest.mark.parametrize("limit", ["10", 10.0, None])
def test_clean_limit_refuses_non_integers(limit: Any) -> None:
    with pytest.raises(ValidationError, match="between 1 and 100"):
        clean_limit(limit)


# statuses --------------------------------------------------------------------------------


def test_clean_statuses_none_is_no_filter() -> None:
    assert clean_statuses(None, RunStatus) == []


def test_clean_statuses_single_value_becomes_list() -> None:
    assert clean_statuses("QUEUED", RunStatus) == [RunStatus.QUEUED]
    assert clean_statuses(RunStatus.FAILED, RunStatus) == [RunStatus.FAILED]


def test_clean_statuses_is_case_insensitive() -> None:
    got = clean_statuses(["waiting", "Timed_Out", WaitpointStatus.COMPLETED], WaitpointStatus)
    assert got == [WaitpointStatus.WAITING, WaitpointStatus.TIMED_OUT, WaitpointStatus.COMPLETED]
    assert all(type(s) is WaitpointStatus for s in got)


def test_clean_statuses_refuses_unknown_listing_allowed_values() -> None:
    with pytest.raises(ValidationError) as info:
        clean_statuses(["queued", "DONE"], RunStatus)
    message = str(info.value)
    assert "'DONE'" in message
    assert "use one of QUEUED, EXECUTING, WAITING, COMPLETED, FAILED, CANCELED" in message
    assert message.endswith(", ".join(s.value for s in RunStatus) + ")")


def test_clean_statuses_refuses_status_of_the_other_enum() -> None:
    # runs spell it CANCELED, tokens CANCELLED
    with pytest.raises(ValidationError, match="TIMED_OUT"):
        clean_statuses("CANCELED", WaitpointStatus)


# schemas ---------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 0},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    },
    "required": ["amount"],
}


def test_check_against_schema_returns_json_value_when_valid() -> None:
    value = {"amount": 3, "items": [{"name": "a"}]}
    assert check_against_schema(SCHEMA, value, "the payload") == value


def test_check_against_schema_converts_models_to_json_first() -> None:
    class Order(BaseModel):
        amount: int

    assert check_against_schema(SCHEMA, Order(amount=2), "the payload") == {"amount": 2}


def test_check_against_schema_lists_every_failing_field_path() -> None:
    value = {"amount": "three", "items": [{"name": "ok"}, {"name": 7}]}
    with pytest.raises(ValidationError) as info:
        check_against_schema(SCHEMA, value, "the payload of 'order'")
    message = str(info.value)
    assert message.startswith("the payload of 'order' does not match the expected schema: ")
    assert 'amount: "three" is not of type "integer"' in message
    assert 'items.1.name: 7 is not of type "string"' in message


def test_check_against_schema_names_root_for_top_level_problems() -> None:
    with pytest.raises(ValidationError, match=r'\(root\): "amount" is a required property'):
        check_against_schema(SCHEMA, {}, "data")


def test_check_against_schema_refuses_invalid_schema() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        check_against_schema({"type": "no-such-type"}, 1, "data")


def test_clean_limit_refuses_booleans() -> None:
    with pytest.raises(ValidationError, match="limit"):
        clean_limit(True)
