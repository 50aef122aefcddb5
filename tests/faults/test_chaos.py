"""The CI version of the chaos harness (the long one is ``scripts/chaos.py``).

200 runs (step, token wait, step) while the worker subprocess is killed with SIGKILL 5
times at random moments and restarted, tokens completed in random order from this process
(some while no worker runs), then every invariant I1-I8 of the reliability guide checked
against the SQLite file and the oracle file the steps append to.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..scripts import load_script

chaos = load_script("chaos")


@pytest.mark.timeout(110)
async def test_200_runs_survive_5_kill_9s_with_every_invariant_intact(tmp_path: Path) -> None:
    seed = int(os.environ["CHAOS_SEED"]) if "CHAOS_SEED" in os.environ else None
    config = chaos.ChaosConfig(runs=200, kills=5, seed=seed, workdir=tmp_path, settle_timeout=40)

    report = await chaos.run_chaos(config)

    print(report.table())  # shown with -s, and on failure
    failed = [row for row in report.rows if not row.ok]
    assert not failed, "\n" + report.table() + f"\n(rerun with CHAOS_SEED={report.seed})"
    assert report.stats["total_s"] < 60, f"too slow for CI: {report.stats}"
