"""What one scenario's execution writes down outside the database.

The walker (task code) and the storage proxies of the simulated processes report here: which
run id is which ref, which token a variable holds, every execution of a step body and every
journal write of a step (the side-effect ledger), which attempts a fault interrupted, when
retries fall due, which faults fired. The invariants read it afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine import TaskDefinition, Token
from engine.clock import to_ms
from engine.testing import ManualClock

if TYPE_CHECKING:
    from .processes import SimProcess


@dataclass(frozen=True)
class Exec:
    """A step body began to run (its first try, for a step with retries)."""

    run_id: str
    key: str
    attempt: int
    epoch: int | None
    mode: str
    process: str


@dataclass(frozen=True)
class Journaled:
    """A step's result or error was committed to the journal."""

    run_id: str
    key: str
    attempt: int
    epoch: int
    is_error: bool


@dataclass
class FaultState:
    spec: dict[str, Any]
    fired: bool = False


@dataclass
class World:
    clock: ManualClock
    t0: int
    ns: str
    definitions: dict[str, TaskDefinition]
    lease_ms: int
    faults: list[FaultState]
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """Open (set) except while the executor moves the clock and applies outside events: then
    claims and timer firings of the processes wait, so outside events at an instant come first."""
    run_refs: dict[str, str] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[tuple[str, str], Token] = field(default_factory=dict)
    ledger: list[Exec | Journaled] = field(default_factory=list)
    tries: Counter[tuple[str, str]] = field(default_factory=Counter)
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    interrupted: set[tuple[str, int]] = field(default_factory=set)
    """(run id, lease epoch) of attempts a fault cut short (or whose writes were refused)."""
    latest_epoch: dict[str, int] = field(default_factory=dict)
    """The newest lease epoch any process claimed each run with."""
    calls: Counter[str] = field(default_factory=Counter)
    claims: Counter[str] = field(default_factory=Counter)
    retry_due: dict[str, int] = field(default_factory=dict)
    """When each run retried after a failed attempt is due again."""
    fired: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    processes: list[SimProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    # --- the walker reports -------------------------------------------------------------

    def saw_run(self, run_id: str, ref: str) -> None:
        self.run_refs[run_id] = ref
        known = self.run_ids.setdefault(ref, run_id)
        if known != run_id:
            self.violations.append(f"two runs carry ref {ref}: {known} and {run_id}")

    def saw_token(self, ref: str, var: str, token: Token) -> None:
        known = self.tokens.setdefault((ref, var), token)
        if known.id != token.id:
            self.violations.append(
                f"token {var} of {ref} is {known.id} in one execution, {token.id} in another"
            )

    def executed(
        self, process: SimProcess, run_id: str, key: str, attempt: int, mode: str, first: bool
    ) -> None:
        process.check_alive()
        if first:
            epoch = process.epochs.get(run_id)
            self.ledger.append(Exec(run_id, key, attempt, epoch, mode, process.name))

    def body_try(self, run_id: str, key: str) -> int:
        self.tries[(run_id, key)] += 1
        return self.tries[(run_id, key)]

    def first_seen(self, run_id: str, key: str) -> int:
        return self.seen.setdefault((run_id, key), self.clock.now_ms())

    def check_not_early(self, what: str, due: datetime) -> None:
        now = self.clock.now_ms()
        if now < to_ms(due):
            self.violations.append(
                f"{what} early: at T0+{now - self.t0} ms, due T0+{to_ms(due) - self.t0} ms"
            )

    # --- the proxies report -------------------------------------------------------------

    def journaled(self, write: Any) -> None:
        if str(write.key).startswith("step:"):
            self.ledger.append(
                Journaled(write.run_id, write.key, write.attempt, write.epoch, bool(write.is_error))
            )

    def fault_for(self, run_id: str | None, what: str) -> FaultState | None:
        """The fault due at this storage call of this run (counted per run, all processes)."""
        if run_id is None:
            return None
        ref = self.run_refs.get(run_id)
        if ref is None:
            return None
        counter = self.claims if what == "claim" else self.calls
        n = counter[ref]
        counter[ref] += 1
        for fault in self.faults:
            spec = fault.spec
            if fault.fired or spec.get("run") != ref:
                continue
            if what == "claim" and spec["kind"] == "claim_crash" and spec["claim"] == n:
                return fault
            if what == "call" and spec["kind"] != "claim_crash" and spec.get("call") == n:
                return fault
        return None

    def fire(self, fault: FaultState) -> None:
        fault.fired = True
        spec = fault.spec
        label = spec["kind"] + (f"_{spec['when']}" if "when" in spec else "")
        self.fired[label] += 1

    def live(self) -> list[SimProcess]:
        return [p for p in self.processes if not p.dead]

    def active(self) -> list[SimProcess]:
        return [p for p in self.processes if not p.dead and not p.stalled]
