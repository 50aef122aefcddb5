"""The one generic task: it walks the program in its payload with the engine's task API.

Every simulated process registers the same function under the task ids ``sim-a1..3`` (their
only difference is ``Retry(max_attempts=...)``, with a fixed one-second back-off and no jitter
so the virtual clock knows when a retry is due). The walker writes down, outside the database,
what the checks need: which run is which (``ref``), which token a variable holds, every
execution of a step body (the side-effect ledger), and any timer it saw end early.

A process that died must not run anything more: step bodies ask the world first and raise
``ProcessDied`` (a ``BaseException``, so no task code or engine ``except Exception`` swallows
it) instead of running.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from engine import (
    Retry,
    RunResult,
    TaskDefinition,
    Token,
    WaitpointCancelledError,
    WaitResult,
    create_token,
    current_run,
    sleep,
    sleep_until,
    step,
    update_metadata,
    wait_for_token,
    wait_for_tokens,
)
from engine.clock import from_ms

from . import grammar as g

if TYPE_CHECKING:
    from .processes import SimProcess

PROCESS: contextvars.ContextVar[SimProcess] = contextvars.ContextVar("simulated_process")
"""Set in each simulated process's worker task; attempts inherit it."""


class ProcessDied(BaseException):
    """The simulated process died at this point: none of its code runs on."""


class SimError(Exception):
    """What failing steps raise. ``code`` is a JSON attribute (kept by the journal);
    ``scratch`` is not JSON, so a rebuilt error has no such attribute."""

    def __init__(self, message: str, code: int = 0, opaque: bool = True) -> None:
        super().__init__(message)
        self.code = code
        if opaque:
            self.scratch = {code}


class _EarlyReturn(Exception):
    def __init__(self, obs: list[Any]) -> None:
        super().__init__("early return")
        self.obs = obs


def task_definitions() -> dict[str, TaskDefinition]:
    """The tasks a simulated process runs: the walker, once per retry policy."""
    return {
        g.task_id(n): TaskDefinition(
            g.task_id(n),
            run_program,
            Retry(max_attempts=n, factor=1, min_delay="1s", max_delay="1s", jitter=False),
        )
        for n in g.ATTEMPTS
    }


def payload_of(program: dict[str, Any], ns: str, t0: int) -> dict[str, Any]:
    """The payload of a run of ``program``: its ref, the scenario's key namespace and T0."""
    return {"ns": ns, "t0": t0, "ref": program["ref"], "program": program}


async def run_program(payload: dict[str, Any]) -> list[Any]:
    process = PROCESS.get()
    process.check_alive()
    info = current_run()
    process.world.saw_run(info.id, payload["ref"])
    return await Walker(process, payload, info.id, info.attempt).walk()


class Walker:
    """One execution of a program (first run, replay, or retry): returns its observations."""

    def __init__(self, process: SimProcess, payload: dict[str, Any], run_id: str, attempt: int):
        self.process = process
        self.world = process.world
        self.ns: str = payload["ns"]
        self.t0: int = payload["t0"]
        self.ref: str = payload["ref"]
        self.program: dict[str, Any] = payload["program"]
        self.run_id = run_id
        self.attempt = attempt
        self.occurrences: Counter[str] = Counter()
        self.obs: list[Any] = []
        self.tokens: dict[str, Token] = {}

    async def walk(self) -> list[Any]:
        try:
            await self.ops(self.program["ops"])
        except _EarlyReturn as early:
            return early.obs
        return self.obs

    async def ops(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            await self.op(op)

    def next(self, base: str) -> int:
        n = self.occurrences[base]
        self.occurrences[base] += 1
        return n

    async def op(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        await getattr(self, f"op_{kind}")(op)

    # --- steps -----------------------------------------------------------------------------

    async def step(
        self,
        name: str,
        mode: str,
        k: int = 0,
        tries: int = 1,
        gate: asyncio.Event | None = None,
        opaque: bool = True,
    ) -> Any:
        occurrence = self.next(f"step:{name}")
        key = f"step:{name}#{occurrence}"
        first_try = True

        async def body() -> str:
            nonlocal first_try
            self.world.executed(self.process, self.run_id, key, self.attempt, mode, first_try)
            first_try = False
            if mode in ("caught", "uncaught") and self.attempt <= k:
                raise SimError(*g.step_error(name, occurrence), opaque=opaque)
            if mode == "retry" and self.world.body_try(self.run_id, key) <= k:
                raise SimError(f"{name}#{occurrence} flaked")
            if gate is not None:
                await gate.wait()
            return g.step_value(self.program["salt"], name, occurrence)

        if mode == "retry":
            policy = Retry(
                max_attempts=tries,
                min_delay=timedelta(milliseconds=1),
                max_delay=timedelta(milliseconds=1),
                jitter=False,
            )
            return await step(name, body, retry=policy)
        return await step(name, body)

    async def op_step(self, op: dict[str, Any]) -> None:
        name, mode = op["name"], op["mode"]
        label = g.step_key(name, self.occurrences[f"step:{name}"])
        try:
            value = await self.step(
                name, mode, op.get("k", 0), op.get("tries", 1), opaque=op.get("opaque", True)
            )
        except SimError as exc:
            if mode != "caught":
                raise
            code = getattr(exc, "code", None)
            self.obs.append(
                ["caught", label, type(exc).__name__, list(exc.args), code, sorted(vars(exc))]
            )
            await self.op_step({"op": "step", "name": op["fallback"], "mode": "ok"})
            return
        self.obs.append(["step", label, value])

    async def op_loop(self, op: dict[str, Any]) -> None:
        for _ in range(op["n"]):
            await self.ops(op["body"])

    async def op_race(self, op: dict[str, Any]) -> None:
        """Two steps at once; the first to finish wins, and a replay must pick it again."""
        gate = asyncio.Event()
        slow = asyncio.ensure_future(self.step(op["slow"], "ok", gate=gate))
        fast = asyncio.ensure_future(self.step(op["fast"], "ok"))
        try:
            for first in asyncio.as_completed([slow, fast]):
                value = await first
                break
        finally:
            gate.set()
            await asyncio.gather(slow, fast, return_exceptions=True)
        winner = str(value).split("#", 1)[0]
        self.obs.append(["race", winner, value])
        await self.op_step({"op": "step", "name": f"after-{winner}", "mode": "ok"})

    # --- tokens and waits ------------------------------------------------------------------

    def _timeout(self, timeout: dict[str, Any] | None) -> Any:
        if timeout is None:
            return None
        if "rel" in timeout:
            return f"{timeout['rel']}s"
        return from_ms(self.t0 + timeout["abs"] * 1000)

    async def op_token(self, op: dict[str, Any]) -> None:
        key = f"{self.ns}:{op['key']}" if op.get("key") else None
        token = await create_token(timeout=self._timeout(op["timeout"]), idempotency_key=key)
        self.tokens[op["var"]] = token
        self.world.saw_token(self.ref, op["var"], token)

    async def op_wait(self, op: dict[str, Any]) -> None:
        token = self.tokens[op["var"]]
        result = await wait_for_token(token)
        outcome = _outcome(result)
        if outcome == ["timeout"] and token.expires_at is not None:
            self.world.check_not_early(
                f"wait_for_token({op['var']}) of {self.ref} timed out", token.expires_at
            )
        self.obs.append(["wait", op["var"], *outcome])

    async def op_group(self, op: dict[str, Any]) -> None:
        tokens = [self.tokens[v] for v in op["vars"]]
        first_seen = self.world.first_seen(self.run_id, f"group#{self.next('group')}")
        timeout = op["timeout"]
        result = await wait_for_tokens(tokens, mode=op["mode"], timeout=self._timeout(timeout))
        answers = [result.results.get(t.id) for t in tokens]
        results = [None if answer is None else _outcome(answer) for answer in answers]
        ids = [t.id for t in tokens]
        first = ids.index(result.first) if result.first in ids else None
        if result.timed_out and timeout is not None:
            due = first_seen + timeout["rel"] * 1000 if "rel" in timeout else None
            due = self.t0 + timeout["abs"] * 1000 if due is None else due
            self.world.check_not_early(f"a group of {self.ref} timed out", from_ms(due))
        self.obs.append(["group", result.ok, result.timed_out, results, first])

    async def op_sleep(self, op: dict[str, Any]) -> None:
        form = op["form"]
        first_seen = self.world.first_seen(self.run_id, f"sleep#{self.next('sleep')}")
        if form == "str":
            await sleep(f"{op['s']}s")
            due = first_seen + op["s"] * 1000
        elif form == "zero_str":
            await sleep("0s")
            due = first_seen
        elif form == "zero_td":
            await sleep(timedelta(0))
            due = first_seen
        elif form == "sub_ms":
            await sleep(timedelta(microseconds=op["us"]))
            due = first_seen + 1
        else:
            due = self.t0 + op["abs"] * 1000
            await sleep_until(from_ms(due))
        self.world.check_not_early(f"a sleep of {self.ref} ended", from_ms(due))

    # --- children --------------------------------------------------------------------------

    def _child_options(self, op: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if op.get("key"):
            options["idempotency_key"] = f"{self.ns}:{op['key']}"
            if op.get("ttl"):
                options["idempotency_key_ttl"] = f"{op['ttl']}s"
        return options

    async def op_trigger(self, op: dict[str, Any]) -> None:
        child = op["child"]
        task = self.world.definitions[g.task_id(child["attempts"])]
        await task.trigger(payload_of(child, self.ns, self.t0), **self._child_options(op))

    async def op_call(self, op: dict[str, Any]) -> None:
        child = op["child"]
        task = self.world.definitions[g.task_id(child["attempts"])]
        result = await task.trigger_and_wait(
            payload_of(child, self.ns, self.t0), **self._child_options(op)
        )
        self.obs.append(["child", *_child_result(result)])

    async def op_batch(self, op: dict[str, Any]) -> None:
        children = op["children"]
        task = self.world.definitions[g.task_id(children[0]["attempts"])]
        results = await task.batch_trigger_and_wait(
            [payload_of(c, self.ns, self.t0) for c in children]
        )
        self.obs.append(["batch", [_child_result(r) for r in results]])

    # --- the rest --------------------------------------------------------------------------

    async def op_meta(self, op: dict[str, Any]) -> None:
        await update_metadata(dict(op["set"]))

    async def op_fail(self, op: dict[str, Any]) -> None:
        if self.attempt <= op["k"]:
            raise SimError(g.FAIL_MESSAGE)

    async def op_swallow(self, op: dict[str, Any]) -> None:
        """The task tries to swallow the suspension of a wait and return something else."""
        caught: BaseException | None = None
        if op["how"] == "gather":
            [outcome] = await asyncio.gather(self.op(op["inner"]), return_exceptions=True)
            caught = outcome if isinstance(outcome, BaseException) else None
        else:
            try:
                await self.op(op["inner"])
            except (ProcessDied, asyncio.CancelledError):
                raise
            except BaseException as exc:
                caught = exc
        if isinstance(caught, ProcessDied | asyncio.CancelledError):
            raise caught
        if caught is not None:
            raise _EarlyReturn([*self.obs, ["SWALLOWED", type(caught).__name__]])

    async def op_concurrent(self, op: dict[str, Any]) -> None:
        a, b = (self.tokens[v] for v in op["vars"])
        outcomes = await asyncio.gather(
            wait_for_token(a), wait_for_token(b), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, ProcessDied | asyncio.CancelledError):
                raise outcome
        self.obs.append(["concurrent", [type(o).__name__ for o in outcomes]])

    async def op_nested(self, op: dict[str, Any]) -> None:
        inner = op["inner"]

        async def body() -> str:
            self.process.check_alive()
            if inner == "create_token":
                await create_token(timeout="1h")
            else:
                await step("inner", _constant)
            return "nested"

        try:
            await step(op["name"], body)
        except Exception as exc:  # the task shrugs it off: the run must fail all the same
            self.obs.append(["nested", type(exc).__name__])
            return
        self.obs.append(["nested", "returned"])


async def _constant() -> str:
    return "inner"


def _outcome(result: WaitResult[Any]) -> list[Any]:
    if result.ok:
        return ["ok", result.output]
    if isinstance(result.error, WaitpointCancelledError):
        return ["cancelled"]
    return ["timeout"]


def _child_result(result: RunResult) -> list[Any]:
    """``[status, output]``, or ``[status, error class]`` (the class only for FAILED: a
    canceled child may still carry the error of an earlier attempt)."""
    if result.ok:
        return [result.status.value, result.output]
    if result.status.value != "FAILED":
        return [result.status.value, None]
    error = result.error.error if result.error is not None else None
    name = error.get("name") if isinstance(error, dict) else None
    return [result.status.value, None if name is None else str(name).rpartition(".")[2]]
