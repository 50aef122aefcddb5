"""The CI version of the chaos harness (the long one is ``scripts/chaos.py``).

200 runs (step, token wait, step) while the worker subprocess is killed with SIGKILL 5
times at random moments and restarted, tokens completed in random order from this process
(some while no worker runs), then every invariant I1-I8 of the reliability guide checked
against the SQLite file and the oracle file the steps append to.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def _load_harness() -> ModuleType:
    name = "waitpoint_chaos_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


chaos = _load_harness()


@pytest.mark.timeout(110)
async def test_200_runs_survive_5_kill_9s_with_every_invariant_intact(tmp_path: Path) -> None:
    seed = int(os.environ["CHAOS_SEED"]) if "CHAOS_SEED" in os.environ else None
    config = chaos.ChaosConfig(runs=200, kills=5, seed=seed, workdir=tmp_path, settle_timeout=40)

    report = await chaos.run_chaos(config)

    print(report.table())  # shown with -s, and on failure
    failed = [row for row in report.rows if not row.ok]
    assert not failed, "\n" + report.table() + f"\n(rerun with CHAOS_SEED={report.seed})"
    assert report.stats["total_s"] < 60, f"too slow for CI: {report.stats}"
