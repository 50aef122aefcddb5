"""Item 7: the token-wait and trivial workloads on DBOS Transact, for comparison.

``benchmarks/dbos_bench.py`` runs them in a process of its own on a SQLite file. It runs once
per repeat, with items 1 and/or 2, and its rate goes into the DBOS and ratio columns of their
rows on every backend.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from harness import HERE, PYTHON, Context, say
from report import Results


def dbos_status() -> str | None:
    """None if DBOS can run here, else why not."""
    try:
        import dbos  # noqa: F401
    except Exception as exc:
        return f"dbos is not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return None


async def bench_dbos(ctx: Context, workload: str, n: int) -> dict[str, Any]:
    ctx.counter += 1
    db = ctx.dir / f"{ctx.counter:03d}-dbos-{workload}.sqlite"
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(
        None,
        lambda: subprocess.run(
            [
                PYTHON,
                str(HERE / "dbos_bench.py"),
                "--db",
                str(db),
                "--workload",
                workload,
                "--n",
                str(n),
            ],
            capture_output=True,
            env=ctx.env,
            cwd=ctx.dir,
            timeout=600,
        ),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"DBOS run failed: {proc.stderr.decode()[-2000:]}")
    line = proc.stdout.decode().strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(line)
    return result


async def run(ctx: Context, by_backend: dict[str, Results], workload: str) -> None:
    s = ctx.sizes
    n = s.dbos_wait_n if workload == "wait" else s.dbos_trivial_n
    d = await bench_dbos(ctx, workload, n)
    keys = [f"2.{k}" for k in s.token_wait] if workload == "wait" else ["1"]
    for results in by_backend.values():  # one DBOS measurement, a ratio for each backend
        results.add_raw(f"dbos_{workload}", d)
        for key in keys:
            if key in results.rows:
                results.rows[key].dbos.append(d["runs_per_s"])
    say(f"  7 DBOS {workload} N={n}: {d['runs_per_s']:.1f} runs/s")


def notes(ctx: Context, raw: dict[str, list[Any]]) -> list[str]:
    if "dbos_wait" not in raw:
        return []
    d = raw["dbos_wait"][0]
    return [
        f"DBOS {d.get('dbos_version')}: token-wait workload with N={d['n']}"
        " (recv_async/send_async, one process), trivial with N="
        + (str(raw["dbos_trivial"][0]["n"]) if "dbos_trivial" in raw else "-")
        + "; ratio = Waitpoint / DBOS (runs/s)."
    ]
