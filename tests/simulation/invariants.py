"""What must hold after a scenario: the reference's answers, and the durability contract.

Each check returns ``Failure``s naming the rule broken, so a campaign can count failures by
rule and a shrinker can keep a scenario that still breaks *the same* rule.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from .executor import TERMINAL, Observed, RunRecord
from .grammar import Scenario
from .reference import Prediction, RunPrediction
from .world import Exec, Journaled

TERMINAL_EVENTS = frozenset({"finished", "canceled", "crashed", "expired"})


@dataclass(frozen=True)
class Failure:
    rule: str
    detail: str
    kind: str = ""
    """What went wrong, without ids or values: failures of one kind likely share a cause."""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}"

    @property
    def signature(self) -> str:
        return f"{self.rule}: {self.kind}" if self.kind else self.rule


FIELDS = {
    "caught": ["step", "error class", "error args", "error code", "error attributes"],
    "group": ["ok", "timed_out", "results", "first"],
    "wait": ["token", "outcome", "data"],
    "race": ["winner", "value"],
    "step": ["key", "value"],
    "child": ["status", "output or error"],
}


def first_difference(actual: Any, expected: Any) -> str:
    """Where two observation lists first differ, as kinds of observations (recursing into
    the outputs of child runs): ``caught != step`` rather than the whole lists."""
    if not isinstance(actual, list) or not isinstance(expected, list):
        return "not a list"
    for got, want in zip(actual, expected, strict=False):
        if got == want:
            continue
        got_kind = got[0] if isinstance(got, list) and got else repr(got)
        want_kind = want[0] if isinstance(want, list) and want else repr(want)
        if got_kind == "SWALLOWED":
            return "the task's early return (after catching a suspension) taken as its result"
        if got_kind == want_kind == "child" and got[1] == want[1] == "COMPLETED":
            return "child > " + first_difference(got[2], want[2])
        if got_kind == want_kind == "batch":
            for a, b in zip(got[1], want[1], strict=False):
                if a != b and a[0] == b[0] == "COMPLETED":
                    return "batch > " + first_difference(a[1], b[1])
            return "batch results differ"
        if got_kind == want_kind:
            fields = FIELDS.get(got_kind, [])
            for index, name in enumerate(fields, start=1):
                if index < len(got) and index < len(want) and got[index] != want[index]:
                    return f"{got_kind}: {name} differs"
            return f"{got_kind} differs"
        return f"{got_kind} instead of {want_kind}"
    if len(actual) < len(expected):
        return f"ends before {expected[len(actual)][0]}"
    if len(actual) > len(expected):
        extra = actual[len(expected)]
        if isinstance(extra, list) and extra and extra[0] == "SWALLOWED":
            return "the task's early return (after catching a suspension) taken as its result"
        return f"{extra[0] if isinstance(extra, list) and extra else extra!r} after the end"
    return "same"


def check(scenario: Scenario, prediction: Prediction, observed: Observed) -> list[Failure]:
    failures: list[Failure] = []
    if observed.timed_out:
        failures.append(Failure("settles", observed.timed_out))
    failures += _runs(prediction, observed)
    failures += _acks(scenario, prediction, observed)
    failures += _tokens(scenario, prediction, observed)
    failures += _journals(observed)
    failures += _ledger(observed)
    failures += [
        Failure("timers-not-early", v, _timer_kind(v))
        for v in observed.world.violations
        if "early" in v
    ]
    failures += [
        Failure("fencing", v, "a superseded attempt wrote")
        for v in observed.world.violations
        if v.startswith("fencing")
    ]
    failures += [
        Failure("bookkeeping", v)
        for v in observed.world.violations
        if "early" not in v and not v.startswith("fencing")
    ]
    failures += [Failure("process", p) for p in observed.world.problems]
    failures += [Failure("engine-error", e) for e in observed.errors]
    failures += [Failure("integrity", i) for i in observed.integrity]
    return failures


def _timer_kind(text: str) -> str:
    for kind in ("sleep", "group", "wait_for_token"):
        if kind in text:
            return kind
    return "timer"


def _short(name: str | None) -> str | None:
    return None if name is None else name.rpartition(".")[2]


def _runs(prediction: Prediction, observed: Observed) -> list[Failure]:
    failures: list[Failure] = []
    by_ref: dict[str | None, list[RunRecord]] = defaultdict(list)
    for run in observed.runs:
        by_ref[run.ref].append(run)
    for ref, runs in by_ref.items():
        if ref not in prediction.runs:
            for run in runs:
                failures.append(
                    Failure(
                        "runs-exist",
                        f"run {run.id} ({ref}, {run.status}) should not exist",
                        "an extra run",
                    )
                )
        elif len(runs) > 1:
            ids = ", ".join(f"{r.id} {r.status}" for r in runs)
            failures.append(
                Failure("runs-exist", f"{len(runs)} runs for {ref}: {ids}", "one ref, several runs")
            )
    for ref, expected in prediction.runs.items():
        runs = by_ref.get(ref, [])
        if not runs:
            failures.append(Failure("runs-exist", f"run {ref} was never created", "a run missing"))
            continue
        failures += _run(expected, runs[0])
    return failures


def _run(expected: RunPrediction, run: RunRecord) -> list[Failure]:
    failures: list[Failure] = []
    name = f"run {expected.ref} ({run.id})"
    ends = [e.kind for e in run.events if e.kind in TERMINAL_EVENTS]
    if run.status not in TERMINAL:
        failures.append(Failure("terminal", f"{name} is still {run.status}", f"still {run.status}"))
    elif len(ends) != 1:
        failures.append(
            Failure("terminal", f"{name} ended {len(ends)} times: {ends}", "ended twice")
        )
    if run.status != expected.status:
        detail = f"{name} is {run.status}, expected {expected.status}"
        kind = f"{run.status} instead of {expected.status}"
        if run.error:
            detail += f" (error {run.error.get('name')}: {str(run.error.get('message'))[:300]})"
            kind += f" ({_short(run.error.get('name'))})"
        failures.append(Failure("status", detail, kind))
        return failures
    if expected.status == "COMPLETED" and run.output != expected.output:
        failures.append(
            Failure(
                "output",
                f"{name} returned {run.output}\n    expected {expected.output}",
                first_difference(run.output, expected.output),
            )
        )
    if expected.status == "FAILED":
        error = run.error or {}
        message = str(error.get("message", ""))
        if expected.error is not None and _short(error.get("name")) != expected.error:
            failures.append(
                Failure(
                    "error", f"{name} failed with {error.get('name')}, expected {expected.error}"
                )
            )
        if expected.error_message is not None and message != expected.error_message:
            failures.append(
                Failure(
                    "error", f"{name} failed with {message!r}, expected {expected.error_message!r}"
                )
            )
        missing = [word for word in expected.error_contains if word not in message]
        if missing:
            failures.append(
                Failure("error", f"{name} failed with {message!r}, which does not name {missing}")
            )
    if run.metadata != expected.metadata:
        failures.append(
            Failure("metadata", f"{name} has metadata {run.metadata}, expected {expected.metadata}")
        )
    return failures


def _acks(scenario: Scenario, prediction: Prediction, observed: Observed) -> list[Failure]:
    failures: list[Failure] = []
    for event in scenario.events:
        index = event["index"]
        expected, actual = prediction.acks.get(index), observed.acks.get(index)
        if expected != actual:
            failures.append(
                Failure(
                    "acknowledgements",
                    f"event {index} ({event['kind']} {event.get('token') or event.get('run')}"
                    f" at T0+{event['at']} ms): {actual}, expected {expected}",
                    f"{event['kind']} {actual} instead of {expected}",
                )
            )
    return failures


def _tokens(scenario: Scenario, prediction: Prediction, observed: Observed) -> list[Failure]:
    failures: list[Failure] = []
    applied: dict[tuple[str, str], Any] = {}
    for event in scenario.events:
        if event["kind"] == "complete" and observed.acks.get(event["index"]) == "applied":
            applied[(event["token"][0], event["token"][1])] = event["data"]
    for owner, status in prediction.tokens.items():
        token = observed.tokens.get(owner)
        if token is None:
            continue  # its run was cancelled before it made it, or never got there
        if token.status.value != status:
            failures.append(
                Failure(
                    "tokens",
                    f"token {owner[1]} of {owner[0]} is {token.status.value}, expected {status}",
                )
            )
        if (
            token.status.value == "TIMED_OUT"
            and token.completed_at is not None
            and token.expires_at is not None
            and token.completed_at < token.expires_at
        ):
            failures.append(
                Failure(
                    "timers-not-early",
                    f"token {owner} timed out at {token.completed_at}, before {token.expires_at}",
                )
            )
        if owner in applied and (token.status.value != "COMPLETED" or token.data != applied[owner]):
            failures.append(
                Failure(
                    "acknowledged-completions",
                    f"token {owner[1]} of {owner[0]}: completion {applied[owner]} was acknowledged;"
                    f" the token is {token.status.value} with {token.data}",
                )
            )
    return failures


def _journals(observed: Observed) -> list[Failure]:
    failures: list[Failure] = []
    for run in observed.runs:
        successes = Counter(e.key for e in run.journal if not e.is_error)
        errors = Counter((e.key, e.attempt) for e in run.journal if e.is_error)
        for key, n in successes.items():
            if n > 1:
                failures.append(Failure("journal", f"run {run.ref} journaled {key} {n} times"))
        for (key, attempt), n in errors.items():
            if n > 1:
                failures.append(
                    Failure(
                        "journal",
                        f"run {run.ref} journaled the error of {key} {n} times"
                        f" in attempt {attempt}",
                    )
                )
    return failures


def _ledger(observed: Observed) -> list[Failure]:
    """Step bodies ran at most once per attempt that journaled them, never after a journaled
    result (or a caught error), and a body that ran without being journaled was cut short by
    a fault (a process died or stalled, a storage error, a refused write)."""
    world = observed.world
    refs = world.run_refs
    failures: list[Failure] = []
    records: dict[tuple[str, str], list[Exec | Journaled]] = defaultdict(list)
    for record in world.ledger:
        records[(record.run_id, record.key)].append(record)
    for (run_id, key), sequence in records.items():
        name = f"step {key} of run {refs.get(run_id, run_id)}"
        success = False
        error_attempts: list[int] = []
        pending: list[Exec] = []
        epochs: Counter[int | None] = Counter()
        for record in sequence:
            if isinstance(record, Journaled):
                pending = [e for e in pending if e.epoch != record.epoch]
                if record.is_error:
                    error_attempts.append(record.attempt)
                else:
                    success = True
                continue
            epochs[record.epoch] += 1
            if epochs[record.epoch] == 2:
                failures.append(
                    Failure(
                        "side-effects",
                        f"{name} ran twice in one attempt (epoch {record.epoch})",
                        "twice in one attempt",
                    )
                )
            if success:
                failures.append(
                    Failure(
                        "side-effects",
                        f"{name} ran again after its result was journaled",
                        "again after its result",
                    )
                )
            elif error_attempts and (
                record.mode != "uncaught" or record.attempt <= max(error_attempts)
            ):
                failures.append(
                    Failure(
                        "side-effects",
                        f"{name} ran again (attempt {record.attempt}) after its error was"
                        f" journaled in attempt {max(error_attempts)}",
                        "again after its error",
                    )
                )
            pending.append(record)
        for record in pending:
            if (run_id, record.epoch) not in world.interrupted:
                failures.append(
                    Failure(
                        "side-effects",
                        f"{name} ran in epoch {record.epoch} ({record.process}) and was never"
                        " journaled, with no fault to explain it",
                        "lost without a fault",
                    )
                )
    return failures
