"""The CI slice of the crash simulator (the long campaigns: ``python -m tests.simulation``).

A fixed range of seeds on each backend (like ``db_url``: a SQLite file, a PostgreSQL schema),
in every always-replay mode, with the faults the seeds draw; then every seed that ever failed
(``regressions.json``), as a strict xfail while its bug is open. The fresh seeds leave out the
constructs of bugs still open (``regressions.KNOWN_OPEN``): the pinned entries cover those.
"""

from __future__ import annotations

import copy

import pytest

from tests.postgres import require_postgres

from . import regressions
from .campaign import Summary, campaign, campaign_problems, repro_command, run_scenario, table
from .executor import Database, Executor
from .generator import Profile, generate
from .invariants import check
from .reference import predict

SEEDS = {"sqlite": range(0, 200), "postgres": range(0, 70)}
"""About a minute per backend on a shared 2-core machine."""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres()
    return str(request.param)


def _report(summary: Summary) -> str:
    lines = [table([summary])]
    for result in summary.failures:
        lines.append(
            repro_command(result.seed, result.backend, result.replay, result.avoid, result.profile)
        )
        lines.extend(f"    {str(f)[:500]}" for f in result.failures[:5])
    return "\n".join(lines)


@pytest.mark.timeout(300)
async def test_a_fixed_slice_of_seeds_meets_the_reference_and_the_contract(backend: str) -> None:
    summary = await campaign(
        backend,
        list(SEEDS[backend]),
        replay="mixed",
        profile=Profile(avoid=regressions.KNOWN_OPEN),
        timeout=60,
    )
    print(_report(summary))  # shown with -s, and on failure
    assert not summary.failures, _report(summary)
    assert not campaign_problems(summary), campaign_problems(summary)


def _regression_params() -> list[object]:
    params: list[object] = []
    for entry in regressions.load():
        for backend in entry.backends:
            marks = []
            if entry.open:
                marks.append(pytest.mark.xfail(strict=True, reason=f"open: {entry.rule}"))
            params.append(pytest.param(entry, backend, marks=marks, id=f"{entry.name}-{backend}"))
    return params


@pytest.fixture
def where(request: pytest.FixtureRequest) -> str:
    """The backend of a regression entry (a sync fixture: the server check runs its own loop)."""
    if request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.mark.parametrize(("entry", "where"), _regression_params(), indirect=["where"])
async def test_a_seed_that_once_failed(entry: regressions.Regression, where: str) -> None:
    db = await Database(where).open()
    try:
        result = await run_scenario(db, entry.scenario, timeout=60)
    finally:
        await db.close()
    assert result.ok, f"{entry.name} ({entry.note}):\n" + "\n".join(map(str, result.failures))


async def test_the_checks_catch_a_wrong_prediction() -> None:
    """The checks compare, they do not rubber-stamp: a scenario that passes fails once the
    reference is made to expect another step value and another final status."""
    scenario = generate(1, replay="off", profile=Profile(avoid=regressions.KNOWN_OPEN))
    db = await Database("sqlite").open()
    try:
        observed = await Executor(db, scenario, timeout=60).run()
    finally:
        await db.close()
    prediction = predict(scenario)
    assert check(scenario, prediction, observed) == []
    run = next(r for r in prediction.runs.values() if r.status == "COMPLETED" and r.output)
    assert run.output is not None
    wrong = copy.deepcopy(prediction)
    wrong.runs[run.ref].output = [*run.output[:-1], ["step", "s9#0", "another value"]]
    assert {f.rule for f in check(scenario, wrong, observed)} == {"output"}
    wrong.runs[run.ref].status = "FAILED"
    assert {f.rule for f in check(scenario, wrong, observed)} == {"status"}
