"""Greedy shrinking: the smallest scenario that still breaks the same rule.

Candidates, tried in order until none helps: drop a fault, drop an outside event, drop a root,
drop an op (anywhere in the program tree), simplify an op (a loop runs once, a group loses a
token, a swallowed wait is plain, a child call becomes a step, fewer attempts), turn
always-replay off. A candidate must still be a valid scenario for the reference (it ends, it is
not fragile) and, run on the engine, must still fail the way the original failed (one of its
failure signatures: rule and kind).
Outside events and faults that point at tokens or runs a candidate no longer has are dropped
with it. Each engine run costs a fraction of a second, so shrinking takes seconds to a minute.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from . import grammar as g
from .generator import outage_prediction
from .reference import Stuck, predict

Runner = Callable[[g.Scenario], Awaitable[set[str]]]
"""Runs a scenario on the engine and returns the signatures of its failures."""


async def shrink(
    scenario: g.Scenario, signatures: set[str], run: Runner, *, budget: float = 120.0
) -> tuple[g.Scenario, int]:
    """The smallest variant of ``scenario`` found that still fails with one of ``signatures``
    (rule and kind of failure: see ``invariants.Failure``), and the engine runs it took."""
    best = copy.deepcopy(scenario)
    runs = 0
    deadline = time.monotonic() + budget
    tried: set[str] = set()
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in _candidates(best):
            if time.monotonic() > deadline:
                break
            candidate = _consistent(candidate)
            key = candidate.to_json()
            if key in tried or not _valid(candidate):
                continue
            tried.add(key)
            runs += 1
            if await run(candidate) & signatures:
                best = candidate
                improved = True
                break
    return best, runs


def size(scenario: g.Scenario) -> tuple[int, int, int]:
    return g.count_ops(scenario), len(scenario.events), len(scenario.faults)


def _valid(scenario: g.Scenario) -> bool:
    if not scenario.roots:
        return False
    try:
        prediction = predict(scenario)
    except (Stuck, KeyError, AssertionError, IndexError):
        return False
    if prediction.fragile:
        return False
    return all(  # a blackout must still change nothing the reference predicts
        outage_prediction(scenario, prediction, (f["at"], f["until"])) is not None
        for f in scenario.faults
        if f["kind"] == "blackout"
    )


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    """Ranges to cut out of a list of ``n``: the whole, halves, quarters... then each item."""
    size = n
    while size >= 1:
        for start in range(0, n, size):
            yield start, min(n, start + size)
        size //= 2


def _candidates(scenario: g.Scenario) -> Iterator[g.Scenario]:
    """Big cuts first (whole roots, whole lists of faults and events, halves...)."""
    if len(scenario.roots) > 1:
        for i in range(len(scenario.roots)):
            c = copy.deepcopy(scenario)
            del c.roots[i]
            yield c
    for start, end in _chunks(len(scenario.faults)):
        c = copy.deepcopy(scenario)
        del c.faults[start:end]
        yield c
    for start, end in _chunks(len(scenario.events)):
        c = copy.deepcopy(scenario)
        del c.events[start:end]
        yield c
    for program_path in _program_paths(scenario):
        ops = _program_at(scenario, program_path)["ops"]
        for start, end in _chunks(len(ops)):
            if end - start > 1:
                c = copy.deepcopy(scenario)
                del _program_at(c, program_path)["ops"][start:end]
                yield c
    for path in _op_paths(scenario):
        c = copy.deepcopy(scenario)
        ops, index = _locate(c, path)
        del ops[index]
        yield c
    for path in _op_paths(scenario):
        for simpler in _simpler(_op_at(scenario, path)):
            c = copy.deepcopy(scenario)
            ops, index = _locate(c, path)
            ops[index : index + 1] = simpler
            yield c
    for program_path in _program_paths(scenario):
        program = _program_at(scenario, program_path)
        if program["attempts"] > 1:
            c = copy.deepcopy(scenario)
            _program_at(c, program_path)["attempts"] -= 1
            yield c
    if any(scenario.replay):
        c = copy.deepcopy(scenario)
        c.replay = [False for _ in c.replay]
        yield c


def _simpler(op: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Replacements for one op, simplest first."""
    kind = op["op"]
    out: list[list[dict[str, Any]]] = []
    if kind == "loop":
        if op["n"] > 1:
            out.append([{**op, "n": 1}])
        out.append(copy.deepcopy(op["body"]))
    elif kind == "swallow":
        out.append([copy.deepcopy(op["inner"])])
    elif kind == "group":
        if len(op["vars"]) > 1:
            for i in range(len(op["vars"])):
                out.append([{**op, "vars": op["vars"][:i] + op["vars"][i + 1 :]}])
        if op["timeout"] is not None:
            out.append([{**op, "timeout": None}])
        out.append([{"op": "wait", "var": v} for v in op["vars"][:1]])
    elif kind in ("call", "trigger"):
        out.append([{"op": "step", "name": f"instead-of-{op['child']['ref']}", "mode": "ok"}])
        if op.get("ttl"):
            out.append([{**op, "ttl": None}])
        if op.get("key"):
            out.append([{**op, "key": None, "ttl": None}])
    elif kind == "batch":
        if len(op["children"]) > 1:
            for i in range(len(op["children"])):
                out.append([{**op, "children": op["children"][:i] + op["children"][i + 1 :]}])
        out.append([{"op": "call", "child": op["children"][0], "key": None, "ttl": None}])
    elif kind == "step" and op["mode"] != "ok":
        out.append([{"op": "step", "name": op["name"], "mode": "ok"}])
    elif kind == "token":
        if op.get("key"):
            out.append([{**op, "key": None}])
        if op.get("timeout") is not None:
            out.append([{**op, "timeout": None}])
    elif kind == "sleep" and op["form"] != "str":
        out.append([{"op": "sleep", "form": "str", "s": 1}])
    return out


# --- addressing ops in the program tree ---------------------------------------------------------

Path = tuple[Any, ...]


def _program_paths(scenario: g.Scenario) -> list[Path]:
    paths: list[Path] = []

    def visit(program: dict[str, Any], path: Path) -> None:
        paths.append(path)
        for i, op in enumerate(program["ops"]):
            for k, child in enumerate(g.children_of(op)):
                visit(child, (*path, i, k))

    for r, root in enumerate(scenario.roots):
        visit(root["program"], (r,))
    return paths


def _program_at(scenario: g.Scenario, path: Path) -> dict[str, Any]:
    program: dict[str, Any] = scenario.roots[path[0]]["program"]
    for i in range(1, len(path), 2):
        program = g.children_of(program["ops"][path[i]])[path[i + 1]]
    return program


def _op_paths(scenario: g.Scenario) -> list[tuple[Path, Path]]:
    """(program path, op path inside it): loops and swallows nest op lists."""
    found: list[tuple[Path, Path]] = []

    def visit(program_path: Path, ops: list[dict[str, Any]], inner: Path) -> None:
        for i, op in enumerate(ops):
            found.append((program_path, (*inner, i)))
            if op["op"] == "loop":
                visit(program_path, op["body"], (*inner, i, "body"))

    for program_path in _program_paths(scenario):
        visit(program_path, _program_at(scenario, program_path)["ops"], ())
    return found


def _locate(scenario: g.Scenario, path: tuple[Path, Path]) -> tuple[list[dict[str, Any]], int]:
    program_path, inner = path
    ops: list[dict[str, Any]] = _program_at(scenario, program_path)["ops"]
    for i in range(0, len(inner) - 1, 2):
        ops = ops[inner[i]][inner[i + 1]]
    return ops, inner[-1]


def _op_at(scenario: g.Scenario, path: tuple[Path, Path]) -> dict[str, Any]:
    ops, index = _locate(scenario, path)
    return ops[index]


def _consistent(scenario: g.Scenario) -> g.Scenario:
    """Drop what points at runs, tokens or variables the scenario no longer has."""
    refs: set[str] = set()
    owners: set[tuple[str, str]] = set()
    for program in scenario.programs():
        refs.add(program["ref"])
        defined: set[str] = set()
        for op in g.walk_ops(program["ops"]):
            if op["op"] == "token":
                defined.add(op["var"])
                owners.add((program["ref"], op["var"]))
        _drop_dangling(program["ops"], defined)
    scenario.events = [
        e
        for e in scenario.events
        if (e["kind"] == "cancel_run" and e["run"] in refs)
        or (e["kind"] != "cancel_run" and tuple(e["token"]) in owners)
    ]
    scenario.faults = [f for f in scenario.faults if f["kind"] == "blackout" or f["run"] in refs]
    return scenario


def _drop_dangling(ops: list[dict[str, Any]], defined: set[str]) -> None:
    """Waits on variables no token op defines any more go too."""
    keep = []
    for op in ops:
        if op["op"] == "loop":
            _drop_dangling(op["body"], defined)
        used = _variables(op)
        if used and not used <= defined:
            continue
        keep.append(op)
    ops[:] = keep


def _variables(op: dict[str, Any]) -> set[str]:
    if op["op"] == "wait":
        return {op["var"]}
    if op["op"] in ("group", "concurrent"):
        return set(op["vars"])
    if op["op"] == "swallow":
        return _variables(op["inner"])
    return set()
