"""The reference on hand-written scenarios: the contract rules it encodes, one by one.

No engine here: these pin what the reference predicts, so a change to it that bends a rule
(and would then agree with a bent engine) shows up as a failing test of its own.
"""

from __future__ import annotations

from typing import Any

from . import grammar as g
from .reference import predict


def _scenario(*programs: dict[str, Any], events: list[dict[str, Any]] | None = None) -> g.Scenario:
    roots = [{"at": i * g.GRID_MS, "program": p} for i, p in enumerate(programs)]
    events = [{**e, "index": i} for i, e in enumerate(events or [])]
    return g.Scenario(seed=0, roots=roots, events=events)


def _program(ref: str, ops: list[dict[str, Any]], attempts: int = 1) -> dict[str, Any]:
    return {"ref": ref, "attempts": attempts, "salt": "s", "ops": ops}


def _step(name: str, mode: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"op": "step", "name": name, "mode": mode, **extra}


def _complete(at: int, ref: str, var: str, n: int) -> dict[str, Any]:
    return {"at": at, "kind": "complete", "token": [ref, var], "data": {"n": n}}


def test_a_retry_replays_the_caught_error_and_reruns_the_escaped_one() -> None:
    program = _program(
        "r0",
        [
            _step("a", "caught", k=1, fallback="b"),
            _step("c", "uncaught", k=1),
        ],
        attempts=2,
    )
    run = predict(_scenario(program)).runs["r0"]
    assert run.status == "COMPLETED"
    assert run.output == [
        ["caught", "a#0", "SimError", ["a#0 failed"], 100, ["code"]],  # replayed in attempt 2
        ["step", "b#0", "b#0@s"],
        ["step", "c#0", "c#0@s"],  # ran again, and passed
    ]
    assert run.finished_ms == 1000  # the retry waits its back-off


def test_a_completion_at_the_tokens_deadline_is_refused() -> None:
    program = _program(
        "r0",
        [
            {"op": "token", "var": "t", "timeout": {"rel": 2}, "key": None},
            {"op": "wait", "var": "t"},
        ],
    )
    prediction = predict(_scenario(program, events=[_complete(2000, "r0", "t", 1)]))
    assert prediction.acks == {0: "refused"}
    assert prediction.runs["r0"].output == [["wait", "t", "timeout"]]


def test_a_token_closed_at_the_groups_deadline_is_late() -> None:
    tokens = [{"op": "token", "var": v, "timeout": None, "key": None} for v in ("a", "b")]
    group = {"op": "group", "vars": ["a", "b"], "mode": "any", "timeout": {"abs": 3}}
    program = _program("r0", [*tokens, group])
    events = [_complete(3000, "r0", "a", 1), _complete(4000, "r0", "b", 2)]
    run = predict(_scenario(program, events=events)).runs["r0"]
    assert run.output == [["group", False, True, [None, None], None]]


def test_a_group_shows_the_tokens_as_they_were_when_it_closed() -> None:
    tokens = [{"op": "token", "var": v, "timeout": None, "key": None} for v in ("a", "b")]
    group = {"op": "group", "vars": ["a", "b"], "mode": "any", "timeout": None}
    program = _program("r0", [*tokens, group])
    events = [_complete(1000, "r0", "b", 1), _complete(2000, "r0", "a", 2)]
    run = predict(_scenario(program, events=events)).runs["r0"]
    assert run.output == [["group", True, False, [None, ["ok", {"n": 1}]], 1]]


def test_zero_and_sub_millisecond_sleeps() -> None:
    program = _program(
        "r0",
        [
            {"op": "sleep", "form": "zero_str"},
            {"op": "sleep", "form": "sub_ms", "us": 300},
            _step("a"),
        ],
    )
    run = predict(_scenario(program)).runs["r0"]
    assert run.output == [["step", "a#0", "a#0@s"]]
    assert run.finished_ms == 1  # the sub-millisecond sleep took one millisecond


def test_cancelling_a_parent_spares_a_child_another_parent_waits_on() -> None:
    child = _program("shared", [{"op": "sleep", "form": "str", "s": 5}, _step("x")])
    call = {"op": "call", "child": child, "key": "c", "ttl": None}
    other = dict(call, child=dict(child, ref="shared-copy"))
    events = [{"at": 1000, "kind": "cancel_run", "run": "r0"}]
    prediction = predict(_scenario(_program("r0", [call]), _program("r1", [other]), events=events))
    assert prediction.runs["r0"].status == "CANCELED"
    assert prediction.runs["shared"].status == "COMPLETED"
    assert prediction.runs["r1"].output == [["child", "COMPLETED", [["step", "x#0", "x#0@s"]]]]
    assert "shared-copy" not in prediction.runs  # found through the key: one child


def test_a_swallowed_suspension_is_not_a_result() -> None:
    inner = {"op": "sleep", "form": "str", "s": 1}
    program = _program("r0", [{"op": "swallow", "how": "except", "inner": inner}, _step("a")])
    assert predict(_scenario(program)).runs["r0"].output == [["step", "a#0", "a#0@s"]]


def test_a_completion_next_to_a_deadline_that_may_drift_is_fragile() -> None:
    program = _program(
        "r0",
        [
            {"op": "token", "var": "t", "timeout": {"rel": 2}, "key": None},
            {"op": "wait", "var": "t"},
        ],
    )
    robust = predict(_scenario(program, events=[_complete(1750, "r0", "t", 1)]))
    fragile = predict(_scenario(program, events=[_complete(2000, "r0", "t", 1)]))
    assert not robust.fragile
    assert fragile.fragile  # a crash before create_token makes the deadline later than 2000
