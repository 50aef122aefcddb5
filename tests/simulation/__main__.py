"""``python -m tests.simulation``: a campaign of seeds, one seed, or one saved scenario.

    .venv/bin/python -m tests.simulation --seeds 5000 --backend both --jobs 2
    .venv/bin/python -m tests.simulation --seed 214 --backend sqlite --always-replay off
    .venv/bin/python -m tests.simulation --scenario /tmp/.../seed-214-sqlite.json --backend sqlite

A campaign prints a summary table per backend and, for each kind of failure, the first failing
seed shrunk to a minimal scenario with the commands that replay it; the exit status is 1 if
any seed failed or the campaign was too quiet to prove anything (too few faults or runs).
``--avoid known`` leaves out the constructs that meet bugs still open on the engine
(``regressions.KNOWN_OPEN``), to look past them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import grammar as g
from . import regressions
from .campaign import (
    Result,
    Summary,
    campaign_in_jobs,
    campaign_problems,
    describe_shrunk,
    quiet_logs,
    repro_command,
    run_scenario,
    shrink_result,
    table,
)
from .executor import Database
from .generator import AVOIDABLE, PROFILES, generate
from .reference import predict


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_logs()
    avoid = _avoid(args.avoid)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not _postgres_ready():
        return 2
    if args.scenario or args.seed is not None:
        return _single(args, backends, avoid)
    seeds = list(range(args.start, args.start + args.seeds))
    profile = PROFILES[args.profile](avoid)
    summaries: list[Summary] = []
    for backend in backends:
        summaries.append(
            campaign_in_jobs(
                backend,
                seeds,
                args.jobs,
                replay=args.always_replay,
                profile=profile,
                timeout=args.timeout,
            )
        )
    print(table(summaries))
    problems = [p for s in summaries for p in campaign_problems(s)]
    for problem in problems:
        print(f"CAMPAIGN TOO QUIET: {problem}")
    failing = [r for s in summaries for r in s.failures]
    if failing:
        _report(failing, args)
    return 1 if failing or problems else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.simulation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds (default 200)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run this one seed, verbosely")
    parser.add_argument("--scenario", type=Path, help="run a saved scenario (JSON)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--always-replay", choices=["on", "off", "mixed"], default="mixed")
    parser.add_argument(
        "--avoid",
        default="",
        help=f"constructs to leave out: 'known' or a list of {', '.join(sorted(AVOIDABLE))}",
    )
    parser.add_argument("--jobs", type=int, default=1, help="campaigns side by side")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="heavy: more roots, longer programs, more sharing and faults",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="real seconds per scenario")
    parser.add_argument(
        "--shrink", type=int, default=5, help="failure kinds to shrink (default 5; 0: none)"
    )
    parser.add_argument("--shrink-budget", type=float, default=120.0, help="seconds per shrink")
    parser.add_argument(
        "--kind",
        default="",
        help="with --seed/--scenario: shrink keeping the failures whose kind contains this text",
    )
    parser.add_argument(
        "--save-dir", type=Path, default=Path(tempfile.gettempdir()) / "waitpoint-simulation"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="add the shrunk failures to tests/simulation/regressions.json",
    )
    return parser


def _avoid(text: str) -> frozenset[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "known" in names:
        names = (names - {"known"}) | regressions.KNOWN_OPEN
    unknown = names - set(AVOIDABLE)
    if unknown:
        raise SystemExit(
            f"--avoid: unknown constructs {sorted(unknown)} (know {sorted(AVOIDABLE)})"
        )
    return frozenset(names)


def _postgres_ready(patience: float = 600.0) -> bool:
    """Whether the test server answers; a server out of connections (other test suites on a
    shared machine) is waited for, up to ``patience`` seconds."""
    import asyncpg

    from tests.postgres import SERVER_URL

    async def probe() -> None:
        conn = await asyncpg.connect(SERVER_URL, timeout=5)
        await conn.close()

    waited = 0.0
    while True:
        try:
            asyncio.run(probe())
            return True
        except asyncpg.TooManyConnectionsError:
            if waited >= patience:
                print("PostgreSQL: still too many clients; giving up", file=sys.stderr)
                return False
            print("PostgreSQL: too many clients for now, waiting", file=sys.stderr)
            time.sleep(15)
            waited += 15
        except Exception as exc:
            print(f"PostgreSQL is not reachable at {SERVER_URL}: {exc}", file=sys.stderr)
            return False


def _single(args: argparse.Namespace, backends: list[str], avoid: frozenset[str]) -> int:
    if args.scenario:
        scenario = g.Scenario.from_json(args.scenario.read_text())
        replay = "saved"
    else:
        replay = args.always_replay
        scenario = generate(args.seed, replay=replay, profile=PROFILES[args.profile](avoid))
    print(g.render_scenario(scenario))
    prediction = predict(scenario)
    for fragile in prediction.fragile:
        print(f"# WARNING: fragile, a fault's delay could change the outcome: {fragile}")
    print("# the reference predicts:")
    for run in prediction.runs.values():
        what = run.output if run.status == "COMPLETED" else run.error
        print(f"#   {run.ref}: {run.status} {json.dumps(what)}")
    failed = False
    for backend in backends:
        result = asyncio.run(_run_one(backend, scenario, args.timeout))
        result.replay, result.avoid, result.profile = replay, avoid, args.profile
        print(
            f"{backend}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.2f} s,"
            f" faults {dict(result.faults)}, runs {dict(result.statuses)}"
        )
        for failure in result.failures:
            print(f"  {failure}")
        if result.failures:
            failed = True
            kinds = {s for s in result.signatures() if args.kind in s}
            if args.shrink and kinds:
                _shrink_and_print(result, args, kinds)
    return 1 if failed else 0


async def _run_one(backend: str, scenario: g.Scenario, timeout: float) -> Result:
    db = await Database(backend).open()
    try:
        return await run_scenario(db, scenario, timeout=timeout)
    finally:
        await db.close()


def _report(failing: list[Result], args: argparse.Namespace) -> None:
    """Failing seeds by kind of failure (a seed may fail in several ways), most common first;
    the smallest seed of each of the ``--shrink`` most common kinds is shrunk."""
    kinds: dict[str, list[Result]] = {}
    for result in failing:
        for signature in result.signatures():
            kinds.setdefault(signature, []).append(result)
    ranked = sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    print(f"\n{len(failing)} failing seeds, {len(kinds)} kinds of failure:")
    for kind, results in ranked:
        seeds = ", ".join(f"{r.seed}/{r.backend}" for r in results[:12])
        more = f" and {len(results) - 12} more" if len(results) > 12 else ""
        print(f"  {len(results):4d} x {kind}\n         seeds {seeds}{more}")
    for kind, results in ranked[: args.shrink]:
        print(f"\n=== {kind} ===")
        smallest = min(results, key=lambda r: (g.count_ops(r.scenario), r.seed))
        _shrink_and_print(smallest, args, {kind})
    for result in failing:
        command = repro_command(
            result.seed, result.backend, result.replay, result.avoid, result.profile
        )
        print(f"FAILED: {command}")
        for failure in result.failures[:4]:  # a failure that does not come back leaves this
            print(f"    {str(failure)[:400]}")


def _shrink_and_print(result: Result, args: argparse.Namespace, target: set[str]) -> None:
    shrunk = asyncio.run(
        shrink_result(result, target=target, budget=args.shrink_budget, timeout=args.timeout)
    )
    args.save_dir.mkdir(parents=True, exist_ok=True)
    path = args.save_dir / f"seed-{result.seed}-{result.backend}-{os.getpid()}.json"
    path.write_text(shrunk.scenario.to_json())
    print(describe_shrunk(shrunk, str(path)))
    if args.record and shrunk.reproduced:
        failure = next(f for f in shrunk.failures if f.signature in target)
        slug = "".join(c if c.isalnum() else "-" for c in failure.signature.lower())
        regressions.record(
            {
                "name": f"{'-'.join(filter(None, slug.split('-')))[:60]}-seed{result.seed}",
                "seed": result.seed,
                "replay": result.replay,
                "avoid": sorted(result.avoid),
                "backends": [result.backend],
                "rule": failure.signature,
                "status": "open",
                "note": str(failure)[:300],
                "scenario": dataclasses.asdict(shrunk.scenario),
            }
        )


if __name__ == "__main__":
    sys.exit(main())
