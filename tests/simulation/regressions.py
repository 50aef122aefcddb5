"""Seeds that failed once, kept so that CI runs them every time (``regressions.json``).

Each entry holds the seed as the generator drew it then *and* the shrunk scenario itself (so a
later change to the generator cannot make the entry test something else), the backends it
failed on, the contract rule it broke, and whether the bug is still ``open``. CI runs an open
entry as a strict xfail: when the engine is fixed it passes, the xfail fails, and the entry
must be marked ``fixed`` (it then guards against the bug coming back).

``KNOWN_OPEN`` lists the constructs that meet a bug still open on the engine; the CI slice of
fresh seeds leaves them out (``Profile(avoid=KNOWN_OPEN)``) so that it can pass and catch
anything new, while the open entries below pin each known bug. Empty it as fixes land.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import grammar as g

FILE = Path(__file__).with_name("regressions.json")

KNOWN_OPEN: frozenset[str] = frozenset()
"""Empty since main fixed them all (the swallowed suspension, misuses, racing steps, zero and
sub-millisecond sleeps, absolute group deadlines on replay, step errors on first execution,
caught errors on retry, a shared child's ttl): ``regressions.json`` pins each."""


@dataclass
class Regression:
    name: str
    seed: int
    replay: str
    avoid: list[str]
    backends: list[str]
    rule: str
    status: str
    """``open`` (the engine still breaks it) or ``fixed``."""
    note: str
    scenario: g.Scenario

    @property
    def open(self) -> bool:
        return self.status == "open"


def load() -> list[Regression]:
    if not FILE.exists():
        return []
    entries = json.loads(FILE.read_text())
    return [_entry(e) for e in entries]


def _entry(e: dict[str, Any]) -> Regression:
    return Regression(
        name=e["name"],
        seed=e["seed"],
        replay=e["replay"],
        avoid=list(e.get("avoid", [])),
        backends=list(e["backends"]),
        rule=e["rule"],
        status=e["status"],
        note=e.get("note", ""),
        scenario=g.Scenario(**e["scenario"]),
    )


def record(entry: dict[str, Any]) -> None:
    """Add an entry (replacing one of the same name)."""
    entries = json.loads(FILE.read_text()) if FILE.exists() else []
    entries = [e for e in entries if e["name"] != entry["name"]] + [entry]
    FILE.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
