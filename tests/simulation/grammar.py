"""The scenario language: task programs as JSON data, outside events, faults, and a printer.

A *program* is what one run executes. It is plain JSON so that it travels in the run's payload
and one generic task (``program.run_program``) can walk it: thousands of programs, no code
generation. Both the engine-side walker and the reference interpreter read this file's
definitions of what an op means; the pure helpers below (step values, error messages, task
ids) are shared because they are *the program*, not the engine.

Program::

    {"ref": "r0/2", "attempts": 2, "salt": "5f1c", "ops": [op, ...]}

``ref`` names the run in the scenario (root runs ``r0``, ``r1``; a child made by op 2 of
``r0`` is ``r0/2``); ``attempts`` is the task's ``Retry(max_attempts=...)`` (the task id is
``sim-a<attempts>``). Ops (``{"op": kind, ...}``):

==========  ==================================================================================
step        ``name``, ``mode``: ``ok`` | ``caught`` (raises ``SimError`` while the attempt is
            <= ``k``; the program catches it and runs step ``fallback``) | ``uncaught`` (raises
            while attempt <= ``k``: fails the attempt) | ``retry`` (fails its first ``k``
            executions, ``retry=Retry(max_attempts=tries)`` with tries > k, so it succeeds)
loop        ``n`` times ``body`` (same-named steps get occurrences #0, #1...)
token       ``create_token`` into ``var``; ``timeout`` None | {"rel": s} | {"abs": s from T0};
            ``key`` an idempotency key (shared with other runs of the scenario) or None
wait        ``wait_for_token(var)``
group       ``wait_for_tokens(vars, mode=any|all, timeout=None|{"rel": s}|{"abs": s})``
sleep       ``form``: ``str`` (``sleep("<s>s")``) | ``zero_str`` (``"0s"``) | ``zero_td``
            (``timedelta(0)``) | ``sub_ms`` (``timedelta(microseconds=us)``) | ``until``
            (``sleep_until(T0 + abs s)``, maybe in the past)
trigger     ``Task.trigger`` of ``child`` (a program), fire and forget
call        ``trigger_and_wait`` of ``child``, with ``key``/``ttl`` (s) to share it with others
batch       ``batch_trigger_and_wait`` of ``children`` (one task: same ``attempts``)
meta        ``update_metadata(set)``
fail        the task raises ``SimError`` itself while attempt <= ``k``
swallow     runs ``inner`` (a wait) under ``how``: ``except`` (catches BaseException) or
            ``gather`` (``return_exceptions=True``) and returns early if anything was caught
concurrent  ``gather`` of two ``wait_for_token`` at once (must fail: ConcurrentWaitError)
nested      a step whose body makes a durable call ``inner`` (must fail the run)
race        steps ``slow`` and ``fast`` started together, the first to finish wins
==========  ==================================================================================

A program returns its *observations*, a JSON list the reference predicts exactly:
``["step", key, value]``, ``["caught", key, cls, args, code, attrs]``, ``["wait", var, "ok",
data] | [.., "timeout"] | [.., "cancelled"]``, ``["group", ok, timed_out, [result|None...],
first index|None]``, ``["child", status, output|error class]``, ``["batch", [[status, ...]...]]``,
``["race", winner, value]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

GRID_MS = 250
"""Outside events happen on this grid of virtual time (and timeouts are whole seconds)."""
WINDOW_MS = 200
"""Faults delay a run by less than this (crash recovery costs ``LEASE_MS`` + 1 each); two
instants closer than this whose order a delay could flip make a scenario *fragile*."""
LEASE_MS = 10
"""The lease the database grants (the workers believe in a long one: see executor)."""
MAX_FAULTS = 8
"""So that the delays faults add stay well under ``WINDOW_MS``."""
ATTEMPTS = (1, 2, 3)


def task_id(attempts: int) -> str:
    """The task a program with this ``Retry(max_attempts=...)`` runs as."""
    return f"sim-a{attempts}"


def step_key(name: str, occurrence: int) -> str:
    return f"{name}#{occurrence}"


def step_value(salt: str, name: str, occurrence: int) -> str:
    """What step ``name`` returns the ``occurrence``-th time a run calls it."""
    return f"{name}#{occurrence}@{salt}"


def step_error(name: str, occurrence: int) -> tuple[str, int]:
    """The message and ``code`` attribute of the ``SimError`` a failing step raises."""
    return f"{name}#{occurrence} failed", 100 + occurrence


FAIL_MESSAGE = "the task gave up"
SIM_ERROR = "SimError"
ERROR_ATTRS = ["code"]
"""The JSON attributes of ``SimError`` (it also has a non-JSON one, which a journal drops)."""


def completion_data(index: int) -> dict[str, Any]:
    """The data the ``index``-th outside event completes its token with."""
    return {"event": index}


def token_timeout_seconds(timeout: dict[str, Any] | None) -> str:
    if timeout is None:
        return "none"
    if "rel" in timeout:
        return f"{timeout['rel']}s"
    return f"T0+{timeout['abs']}s"


@dataclass
class Scenario:
    """Everything one seed generates: what runs, what happens to it from outside, faults."""

    seed: int
    roots: list[dict[str, Any]]
    """``{"at": ms after T0, "program": program}``: root runs and when they are triggered."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Outside events, by time: ``{"at": ms, "kind": "complete"|"cancel_token"|"cancel_run",
    "token": [run ref, var] | "run": ref, "data": ..., "race": None|0|-1}``. A ``race``
    completion happens at the token's actual deadline plus ``race`` ms, racing its timer."""
    faults: list[dict[str, Any]] = field(default_factory=list)
    """``crash``/``storage_error`` (``when`` before|after the ``call``-th storage call of run
    ``run``), ``stall`` (that process hangs there until others took its runs over),
    ``claim_crash`` (dies right after its ``claim``-th claim of ``run``), ``blackout``
    (no process alive from ``at`` to ``until`` ms)."""
    replay: list[bool] = field(default_factory=lambda: [False, False])
    """Always-replay mode of each process slot (replacement processes cycle through it)."""
    processes: int = 2
    """Live processes the executor keeps (a dead one is replaced at once, but in a blackout)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        return cls(**json.loads(text))

    def programs(self) -> list[dict[str, Any]]:
        """Every program of the scenario, roots and (nested) children."""
        found: list[dict[str, Any]] = []
        for root in self.roots:
            _collect(root["program"], found)
        return found


def _collect(program: dict[str, Any], found: list[dict[str, Any]]) -> None:
    found.append(program)
    for op in walk_ops(program["ops"]):
        for child in children_of(op):
            _collect(child, found)


def walk_ops(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ops of a body and of the bodies nested in it (loops, swallows), in order."""
    out: list[dict[str, Any]] = []
    for op in ops:
        out.append(op)
        if op["op"] == "loop":
            out.extend(walk_ops(op["body"]))
        elif op["op"] == "swallow":
            out.extend(walk_ops([op["inner"]]))
    return out


def children_of(op: dict[str, Any]) -> list[dict[str, Any]]:
    if op["op"] in ("trigger", "call"):
        return [op["child"]]
    if op["op"] == "batch":
        return list(op["children"])
    return []


def count_ops(scenario: Scenario) -> int:
    return sum(len(walk_ops(p["ops"])) for p in scenario.programs())


# --- printing --------------------------------------------------------------------------------


def render_program(program: dict[str, Any], indent: str = "") -> list[str]:
    """The program as the Python a person would have written for it."""
    lines = [
        f"{indent}@task('{task_id(program['attempts'])}')  # run {program['ref']},"
        f" salt {program['salt']}",
        f"{indent}async def program(payload):",
    ]
    body = _render_ops(program["ops"], indent + "    ")
    return lines + (body or [f"{indent}    pass"])


def _render_ops(ops: list[dict[str, Any]], indent: str) -> list[str]:
    lines: list[str] = []
    for op in ops:
        lines.extend(_render_op(op, indent))
    return lines


def _render_op(op: dict[str, Any], i: str) -> list[str]:
    kind = op["op"]
    if kind == "step":
        mode = op["mode"]
        if mode == "ok":
            return [f"{i}await step('{op['name']}', ok)"]
        if mode == "caught":
            return [
                f"{i}try: await step('{op['name']}', fails_while_attempt_le({op['k']}))",
                f"{i}except SimError: await step('{op['fallback']}', ok)",
            ]
        if mode == "uncaught":
            return [f"{i}await step('{op['name']}', fails_while_attempt_le({op['k']}))  # escapes"]
        return [
            f"{i}await step('{op['name']}', fails_first({op['k']}),"
            f" retry=Retry(max_attempts={op['tries']}))"
        ]
    if kind == "loop":
        return [f"{i}for _ in range({op['n']}):", *_render_ops(op["body"], i + "    ")]
    if kind == "token":
        extra = f", idempotency_key='{op['key']}'" if op.get("key") else ""
        return [
            f"{i}{op['var']} = await create_token(timeout={token_timeout_seconds(op['timeout'])}"
            f"{extra})"
        ]
    if kind == "wait":
        return [f"{i}await wait_for_token({op['var']})"]
    if kind == "group":
        return [
            f"{i}await wait_for_tokens([{', '.join(op['vars'])}], mode='{op['mode']}',"
            f" timeout={token_timeout_seconds(op['timeout'])})"
        ]
    if kind == "sleep":
        form = op["form"]
        what = {
            "str": f"sleep('{op.get('s')}s')",
            "zero_str": "sleep('0s')",
            "zero_td": "sleep(timedelta(0))",
            "sub_ms": f"sleep(timedelta(microseconds={op.get('us')}))",
            "until": f"sleep_until(T0 + {op.get('abs')}s)",
        }[form]
        return [f"{i}await {what}"]
    if kind in ("trigger", "call"):
        child = op["child"]
        opts = ""
        if op.get("key"):
            opts = f", idempotency_key='{op['key']}'"
            if op.get("ttl"):
                opts += f", idempotency_key_ttl='{op['ttl']}s'"
        verb = "trigger" if kind == "trigger" else "trigger_and_wait"
        return [
            f"{i}await {task_id(child['attempts'])}.{verb}(<{child['ref']}>{opts})",
            *render_program(child, i + "    # "),
        ]
    if kind == "batch":
        refs = ", ".join(f"<{c['ref']}>" for c in op["children"])
        lines = [
            f"{i}await {task_id(op['children'][0]['attempts'])}.batch_trigger_and_wait([{refs}])"
        ]
        for child in op["children"]:
            lines.extend(render_program(child, i + "    # "))
        return lines
    if kind == "meta":
        return [f"{i}await update_metadata({json.dumps(op['set'])})"]
    if kind == "fail":
        return [f"{i}if current_run().attempt <= {op['k']}: raise SimError('{FAIL_MESSAGE}')"]
    if kind == "swallow":
        inner = _render_op(op["inner"], "")
        if op["how"] == "gather":
            return [f"{i}await asyncio.gather({inner[0]}, return_exceptions=True)  # returns early"]
        return [f"{i}try: {inner[0]}", f"{i}except BaseException: return ['SWALLOWED']"]
    if kind == "concurrent":
        a, b = op["vars"]
        return [
            f"{i}await asyncio.gather(wait_for_token({a}), wait_for_token({b}),"
            " return_exceptions=True)"
        ]
    if kind == "nested":
        return [f"{i}await step('{op['name']}', lambda: {op['inner']}(...))  # durable call inside"]
    if kind == "race":
        return [
            f"{i}first of (step('{op['slow']}', slow), step('{op['fast']}', fast));"
            f" await step('after-<winner>', ok)"
        ]
    return [f"{i}{json.dumps(op)}"]


def render_scenario(scenario: Scenario) -> str:
    """Programs, outside events and faults, readable."""
    lines = [
        f"# seed {scenario.seed}; {scenario.processes} processes, always-replay per process"
        f" slot: {scenario.replay}"
    ]
    for root in scenario.roots:
        lines.append(f"# triggered at T0+{root['at']} ms")
        lines.extend(render_program(root["program"]))
    if scenario.events:
        lines.append("# outside events:")
        for event in sorted(scenario.events, key=lambda e: (e["at"], e["index"])):
            lines.append(f"#   [{event['index']}] {describe_event(event)}")
    if scenario.faults:
        lines.append("# faults:")
        for fault in scenario.faults:
            lines.append(f"#   {describe_fault(fault)}")
    return "\n".join(lines)


def describe_event(event: dict[str, Any]) -> str:
    at = f"T0+{event['at']} ms"
    kind = event["kind"]
    if kind == "complete":
        ref, var = event["token"]
        if event.get("race") is not None:
            return (
                f"complete token {var} of {ref} with {json.dumps(event['data'])} at its deadline"
                f" {event['race']:+d} ms (racing its timer)"
            )
        return f"{at}: complete token {var} of {ref} with {json.dumps(event['data'])}"
    if kind == "cancel_token":
        ref, var = event["token"]
        return f"{at}: cancel token {var} of {ref}"
    return f"{at}: cancel run {event['run']}"


def describe_fault(fault: dict[str, Any]) -> str:
    kind = fault["kind"]
    if kind == "blackout":
        return f"no process alive from T0+{fault['at']} ms to T0+{fault['until']} ms"
    if kind == "claim_crash":
        return f"the process dies right after its claim #{fault['claim']} of run {fault['run']}"
    where = f"storage call #{fault['call']} of run {fault['run']}"
    if kind == "crash":
        how = "refused, never run" if fault["when"] == "before" else "committed, never returned"
        return f"the process dies at {where} ({how})"
    if kind == "stall":
        return f"the process stalls at {where} until its lease ran out and others took over"
    return f"StorageUnavailableError {fault['when']} {where}"
