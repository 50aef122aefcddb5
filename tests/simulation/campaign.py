"""Running scenarios and campaigns: one seed, many seeds, the summary table, shrinking.

A campaign keeps one database per backend for all its seeds (a fresh SQLite file or
PostgreSQL schema): each scenario gets new processes and a day of virtual time of its own, and
a run a bug left unfinished is cancelled before the next scenario. After a failure that may
have damaged the database itself (integrity, a scenario that never settled) the database is
replaced. ``--jobs N`` runs N campaigns side by side in subprocesses, each on its own database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from engine import StorageUnavailableError
from engine.logs import configure_logging

from . import grammar as g
from .executor import Database, Executor
from .generator import Profile, generate
from .invariants import Failure, check
from .reference import predict
from .shrink import shrink, size

REPLACE_DB_AFTER = frozenset({"integrity", "settles", "process", "infrastructure"})


@dataclass
class Result:
    seed: int
    backend: str
    replay: str
    scenario: g.Scenario
    failures: list[Failure]
    faults: Counter[str]
    statuses: Counter[str]
    seconds: float
    avoid: frozenset[str] = frozenset()
    profile: str = "default"

    @property
    def ok(self) -> bool:
        return not self.failures

    def rules(self) -> set[str]:
        return {f.rule for f in self.failures}

    def signatures(self) -> set[str]:
        return {f.signature for f in self.failures}


async def run_scenario(db: Database, scenario: g.Scenario, *, timeout: float = 120.0) -> Result:
    """Predict, execute on ``db``, check."""
    prediction = predict(scenario)
    observed = await Executor(db, scenario, timeout=timeout).run()
    failures = check(scenario, prediction, observed)
    return Result(
        seed=scenario.seed,
        backend=db.backend,
        replay="",
        scenario=scenario,
        failures=failures,
        faults=Counter(observed.world.fired),
        statuses=Counter(run.status for run in observed.runs),
        seconds=observed.seconds,
    )


def replay_mode_of(seed: int, mode: str) -> str:
    """``mixed`` campaigns alternate whole-scenario modes with per-process mixes."""
    if mode != "mixed":
        return mode
    return ("off", "on", "mixed")[seed % 3]


@dataclass
class Summary:
    backend: str
    programs: int = 0
    scenarios: int = 0
    skipped: list[int] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[Result] = field(default_factory=list)
    rules: Counter[str] = field(default_factory=Counter)
    loop_errors: Counter[str] = field(default_factory=Counter)
    """What asyncio reported about the engine's tasks (e.g. an exception never retrieved)."""
    seconds: float = 0.0

    def add(self, result: Result) -> None:
        self.scenarios += 1
        self.programs += len(result.scenario.programs())
        self.faults.update(result.faults)
        self.statuses.update(result.statuses)
        if result.failures:
            self.failures.append(result)
            self.rules.update(result.rules())

    def merge(self, other: Summary) -> None:
        self.programs += other.programs
        self.scenarios += other.scenarios
        self.skipped += other.skipped
        self.faults.update(other.faults)
        self.statuses.update(other.statuses)
        self.failures += other.failures
        self.rules.update(other.rules)
        self.loop_errors.update(other.loop_errors)
        self.seconds = max(self.seconds, other.seconds)


async def campaign(
    backend: str,
    seeds: list[int],
    *,
    replay: str = "mixed",
    profile: Profile | None = None,
    timeout: float = 120.0,
    progress: str | None = None,
) -> Summary:
    """Run ``seeds`` on one database of ``backend``; ``progress`` prefixes a line per 100."""
    summary = Summary(backend)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _, context: summary.loop_errors.update([_loop_error(context)])
    )
    db = await _open(backend)
    try:
        for done, seed in enumerate(seeds, start=1):
            mode = replay_mode_of(seed, replay)
            try:
                scenario = generate(seed, replay=mode, profile=profile)
            except RuntimeError:
                summary.skipped.append(seed)
                continue
            for pause in (5, 15, 30, 0):  # a shared server out of connections: try it again
                try:
                    result = await run_scenario(db, scenario, timeout=timeout)
                except Exception as exc:  # the simulator or the database server, not the engine
                    result = _broken(scenario, backend, exc)
                if result.rules() != {"infrastructure"} or not pause:
                    break
                with contextlib.suppress(Exception):
                    await db.close()
                await asyncio.sleep(pause)
                db = await _open(backend)
            result.replay = mode
            result.avoid = profile.avoid if profile else frozenset()
            result.profile = profile.name if profile else "default"
            summary.add(result)
            if result.rules() & REPLACE_DB_AFTER:
                with contextlib.suppress(Exception):
                    await db.close()
                db = await _open(backend)
            if progress is not None and done % 100 == 0:
                print(
                    f"{progress}{backend}: {done}/{len(seeds)} scenarios,"
                    f" {len(summary.failures)} failing, {time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        await db.close()
        loop.set_exception_handler(previous)
    summary.seconds = time.monotonic() - started
    return summary


async def _open(backend: str) -> Database:
    """A new database; a shared PostgreSQL server may be short of connections for a while."""
    for delay in (1, 2, 4, 8, 15, 30):
        try:
            return await Database(backend).open()
        except StorageUnavailableError:
            await asyncio.sleep(delay)
    return await Database(backend).open()


def _broken(scenario: g.Scenario, backend: str, exc: Exception) -> Result:
    detail = f"the scenario could not be run: {type(exc).__name__}: {exc}"
    return Result(
        seed=scenario.seed,
        backend=backend,
        replay="",
        scenario=scenario,
        failures=[Failure("infrastructure", detail, type(exc).__name__)],
        faults=Counter(),
        statuses=Counter(),
        seconds=0.0,
    )


def _loop_error(context: dict[str, object]) -> str:
    """asyncio's report, without ids: ``Task exception was never retrieved: LeaseLostError``."""
    exc = context.get("exception")
    where = ""
    future = context.get("future") or context.get("task")
    coro = getattr(future, "get_coro", lambda: None)()
    if coro is not None:
        where = f" in {getattr(coro, '__qualname__', coro)}"
    what = type(exc).__name__ if exc is not None else ""
    return f"{context.get('message', '?')}{where}: {what}"


def quiet_logs() -> None:
    """The engine's logs say nothing a campaign needs (failures come from the checks)."""
    configure_logging("auto", logging.ERROR)


def _job(args: tuple[str, list[int], str, Profile, float, str]) -> Summary:
    backend, seeds, replay, profile, timeout, label = args
    quiet_logs()
    return asyncio.run(
        campaign(backend, seeds, replay=replay, profile=profile, timeout=timeout, progress=label)
    )


def campaign_in_jobs(
    backend: str, seeds: list[int], jobs: int, *, replay: str, profile: Profile, timeout: float
) -> Summary:
    """``jobs`` campaigns side by side (subprocesses), seeds dealt round-robin."""
    started = time.monotonic()
    if jobs <= 1:
        summary = asyncio.run(
            campaign(backend, seeds, replay=replay, profile=profile, timeout=timeout, progress="")
        )
        return summary
    parts = [seeds[i::jobs] for i in range(jobs)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        args = [
            (backend, part, replay, profile, timeout, f"[job {i}] ") for i, part in enumerate(parts)
        ]
        summaries = list(pool.map(_job, args))
    total = Summary(backend)
    for part_summary in summaries:
        total.merge(part_summary)
    total.failures.sort(key=lambda r: r.seed)
    total.seconds = time.monotonic() - started
    return total


MIN_FAULTS_PER_SCENARIO = 0.5
MIN_COMPLETED_PER_SCENARIO = 1.0


def campaign_problems(summary: Summary) -> list[str]:
    """A campaign in which nothing happened proves nothing: demand faults and finished runs."""
    problems = []
    faults = sum(n for kind, n in summary.faults.items() if not kind.startswith("event:"))
    if summary.scenarios and faults < MIN_FAULTS_PER_SCENARIO * summary.scenarios:
        problems.append(
            f"{summary.backend}: only {faults} faults fired in {summary.scenarios} scenarios"
            f" (at least {MIN_FAULTS_PER_SCENARIO:g} per scenario expected)"
        )
    completed = summary.statuses.get("COMPLETED", 0)
    if summary.scenarios and completed < MIN_COMPLETED_PER_SCENARIO * summary.scenarios:
        problems.append(
            f"{summary.backend}: only {completed} runs COMPLETED in {summary.scenarios} scenarios"
        )
    if summary.skipped:
        problems.append(f"{summary.backend}: no valid scenario for seeds {summary.skipped[:10]}")
    return problems


def table(summaries: list[Summary]) -> str:
    """The summary of a campaign, one column per backend."""
    rows: list[tuple[str, list[str]]] = []
    rows.append(("scenarios (seeds)", [str(s.scenarios) for s in summaries]))
    rows.append(("programs (runs planned)", [str(s.programs) for s in summaries]))
    rows.append(("time", [f"{s.seconds:.0f} s" for s in summaries]))
    kinds = sorted({k for s in summaries for k in s.faults})
    for kind in kinds:
        label = kind if kind.startswith("event:") else f"fault: {kind}"
        rows.append((label, [str(s.faults.get(kind, 0)) for s in summaries]))
    totals = [sum(n for k, n in s.faults.items() if not k.startswith("event:")) for s in summaries]
    rows.append(("faults, all kinds", [str(n) for n in totals]))
    for status in sorted({k for s in summaries for k in s.statuses}):
        rows.append((f"runs {status}", [str(s.statuses.get(status, 0)) for s in summaries]))
    rows.append(("failing seeds", [str(len(s.failures)) for s in summaries]))
    for error in sorted({k for s in summaries for k in s.loop_errors}):
        rows.append((f"asyncio: {error}", [str(s.loop_errors.get(error, 0)) for s in summaries]))
    for rule in sorted({k for s in summaries for k in s.rules}):
        rows.append((f"  seeds breaking {rule}", [str(s.rules.get(rule, 0)) for s in summaries]))
    width = max(len(name) for name, _ in rows)
    cols = [
        max(len(s.backend), *(len(values[i]) for _, values in rows))
        for i, s in enumerate(summaries)
    ]
    head = " ".join(
        ["".ljust(width), *(s.backend.rjust(c) for s, c in zip(summaries, cols, strict=True))]
    )
    lines = [head, "-" * len(head)]
    for name, values in rows:
        cells = (v.rjust(c) for v, c in zip(values, cols, strict=True))
        lines.append(" ".join([name.ljust(width), *cells]))
    return "\n".join(lines)


@dataclass
class Shrunk:
    original: Result
    scenario: g.Scenario
    runs: int
    reproduced: int
    tries: int
    failures: list[Failure]


async def shrink_result(
    result: Result,
    *,
    target: set[str] | None = None,
    budget: float = 120.0,
    confirm: int = 3,
    timeout: float = 60.0,
) -> Shrunk:
    """Shrink a failing scenario on its backend, keeping one of the ``target`` kinds of
    failure (default: any of its own); confirm the result ``confirm`` times."""
    db = await Database(result.backend).open()
    target = target or result.signatures()
    last: list[Failure] = []

    async def runner(candidate: g.Scenario) -> set[str]:
        nonlocal last
        outcome = await run_scenario(db, candidate, timeout=timeout)
        if outcome.signatures() & target:
            last = outcome.failures
        return outcome.signatures()

    try:
        smallest, runs = await shrink(result.scenario, target, runner, budget=budget)
        reproduced = 0
        failures = result.failures if smallest is result.scenario else last
        for _ in range(confirm):
            outcome = await run_scenario(db, smallest, timeout=timeout)
            if outcome.signatures() & target:
                reproduced += 1
                failures = outcome.failures
    finally:
        await db.close()
    return Shrunk(result, smallest, runs, reproduced, confirm, failures)


def describe_shrunk(shrunk: Shrunk, saved: str | None) -> str:
    result = shrunk.original
    before, after = size(result.scenario), size(shrunk.scenario)
    lines = [
        f"seed {result.seed} ({result.backend}, always-replay {result.replay}):"
        f" shrunk in {shrunk.runs} runs from {before[0]} ops/{before[1]} events/{before[2]}"
        f" faults to {after[0]}/{after[1]}/{after[2]};"
        f" the shrunk scenario failed {shrunk.reproduced} of {shrunk.tries} re-runs",
        g.render_scenario(shrunk.scenario),
        "  what broke:",
        *(f"    {str(f)[:600]}" for f in shrunk.failures[:6]),
        "  replay the seed:      "
        + repro_command(result.seed, result.backend, result.replay, result.avoid, result.profile),
    ]
    if saved:
        lines.append(
            f"  replay the shrunk:    .venv/bin/python -m tests.simulation --scenario {saved}"
            f" --backend {result.backend}"
        )
    return "\n".join(lines)


def repro_command(
    seed: int,
    backend: str,
    replay: str,
    avoid: frozenset[str] = frozenset(),
    profile: str = "default",
) -> str:
    extra = f" --avoid {','.join(sorted(avoid))}" if avoid else ""
    extra += f" --profile {profile}" if profile != "default" else ""
    return (
        f".venv/bin/python -m tests.simulation --seed {seed} --backend {backend}"
        f" --always-replay {replay}{extra}"
    )
