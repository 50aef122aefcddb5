"""The journal's vocabulary: call keys and step errors, built and read in one place."""

from __future__ import annotations

import pytest

from engine.errors import StepFailedError
from engine.journal import CallKey, child_key, decode_error, encode_error


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("step:charge#0", CallKey("step", "charge", 0)),
        ("create_token#3", CallKey("create_token", "", 3)),
        ("wait_for_token:waitpoint_abc#1", CallKey("wait_for_token", "waitpoint_abc", 1)),
        ("step:a:b#c#2", CallKey("step", "a:b#c", 2)),
    ],
)
def test_a_call_key_reads_back_as_it_was_built(key: str, parsed: CallKey) -> None:
    assert CallKey.parse(key) == parsed
    assert str(parsed) == key


def test_a_batch_names_each_child_under_its_own_key() -> None:
    assert child_key("batch:send#0", 2) == "batch:send#0/2"


class Refused(Exception):
    def __init__(self, code: int, detail: object) -> None:
        super().__init__(f"refused with {code}")
        self.code = code
        self.detail = detail


def test_a_step_error_comes_back_with_its_class_args_and_json_attributes() -> None:
    rebuilt = decode_error(encode_error(Refused(409, object())))
    assert type(rebuilt) is Refused
    assert rebuilt.args == ("refused with 409",) and rebuilt.code == 409
    assert not hasattr(rebuilt, "detail")  # not JSON: absent, as on every replay


def test_an_error_whose_class_is_gone_comes_back_as_step_failed() -> None:
    value = {"name": "gone.module.Missing", "message": "boom", "args": ["boom"], "attrs": {}}
    rebuilt = decode_error(value)
    assert isinstance(rebuilt, StepFailedError) and "gone.module.Missing" in str(rebuilt)
