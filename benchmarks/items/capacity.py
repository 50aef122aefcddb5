"""Item 8: capacity, token-wait runs with 1, 2 and 4 worker processes on one database.

Each measurement is ``token_wait.bench_throughput`` with K worker processes and N =
``--scaling-n`` runs. ``capacity_rows`` groups the samples by K (the ``capacity`` key of
``--json``) and ``print_capacity`` prints them: runs/s and the speedup against one worker, CPU
per run of each process kind, how busy the machine was, write transactions, statements and
storage calls per run.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from harness import Context, say
from report import Results, fmt

from .token_wait import bench_throughput, cpu_ms, server_text


async def run(ctx: Context, results: Results, k: int) -> None:
    n = ctx.sizes.scaling_n
    m = await bench_throughput(ctx, "bench-wait", n, f"scale{k}", workers=k)
    results.add_raw("scaling", m)
    plural = "es" if k > 1 else ""
    row = results.row(
        f"8.{k}",
        label=f"capacity: token-wait runs, N={n:,}, {k} worker process{plural}",
        metric="runs/s",
        worker=f"{k} subprocess{plural}",
        unit="/s",
    )
    row.samples.append(m["runs_per_s"])
    row.commits.append((m["commits_worker"], m["commits_client"]))
    row.cpu.append(cpu_ms(m, n))
    say(
        f"  8 capacity, {k} workers: {m['runs_per_s']:.0f} runs/s in {m['seconds']:.1f} s;"
        f" CPU s workers {m['cpu_worker_s']:.1f} driver {m['cpu_driver_s']:.1f},"
        f" machine busy {m['machine_busy'] * 100:.0f}% (steal {m['machine_steal'] * 100:.1f}%)"
        + server_text(m)
    )
    u = m["worker_usage_per_run"]
    say(
        f"    workers per run: user {u['user_s'] * 1000:.2f} ms, system"
        f" {u['system_s'] * 1000:.2f} ms, context switches voluntary"
        f" {u['switches_voluntary']:.1f}, involuntary {u['switches_nonvoluntary']:.1f}"
    )


def capacity_rows(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Item 8's samples grouped by worker count: medians of each figure per run."""
    out = []
    counts = sorted({m["workers"] for m in raw})
    base = None
    for k in counts:
        ms = [m for m in raw if m["workers"] == k]
        n = ms[0]["n"]

        def med(key: str, ms: list[dict[str, Any]] = ms) -> float:
            vals = [m[key] for m in ms if key in m]
            return statistics.median(vals) if vals else math.nan

        rate = med("runs_per_s")
        base = rate if base is None else base
        row = {
            "workers": k,
            "n": n,
            "runs_per_s": rate,
            "min": min(m["runs_per_s"] for m in ms),
            "max": max(m["runs_per_s"] for m in ms),
            "speedup": rate / base,
            "cpu_worker_ms": med("cpu_worker_s") * 1000 / n,
            "cpu_driver_ms": med("cpu_driver_s") * 1000 / n,
            "cpu_db_ms": med("pg_cpu_ours_s") * 1000 / n,
            "cpu_reader_ms": med("pg_cpu_reader_s") * 1000 / n,
            "cpu_db_all_ms": med("pg_cpu_all_s") * 1000 / n,
            "machine_busy": med("machine_busy"),
            "commits_worker": med("commits_worker"),
            "commits_client": med("commits_client"),
            "xact_commit": med("pg_xact_commit"),
            "wal_bytes": med("pg_wal_bytes"),
            "other_backends": max((m.get("pg_other_backends", 0) for m in ms), default=0),
            "worker_statements": statistics.median(
                m.get("worker_calls_per_run", {}).get("sql_statements", math.nan) for m in ms
            ),
            "worker_calls": {
                name: statistics.median(m["worker_calls_per_run"].get(name, 0.0) for m in ms)
                for name in sorted({c for m in ms for c in m.get("worker_calls_per_run", {})})
            },
            "samples": len(ms),
        }
        ours = row["cpu_worker_ms"] + row["cpu_driver_ms"]
        if not math.isnan(row["cpu_db_ms"]):
            ours += row["cpu_db_ms"]
        row["cpu_total_ms"] = ours
        out.append(row)
    return out


def print_capacity(by_backend: dict[str, Results], nproc: int) -> None:
    """Item 8: token-wait throughput against the number of worker processes."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="8. capacity: token-wait runs with 1, 2, 4 worker processes")
    for name in [
        "backend",
        "workers",
        "N",
        "runs/s",
        "min-max",
        "vs 1",
        "CPU ms/run: workers",
        "driver",
        "db (engine)",
        "db (reader)",
        "all postgres",
        "sum w+c+db",
        "machine busy",
        "write tx/run w+c",
        "worker SQL stmts/run",
        "xact_commit/run",
        "WAL KB/run",
    ]:
        table.add_column(name, justify="left" if name == "backend" else "right")
    for backend, results in by_backend.items():
        raw = results.raw.get("scaling")
        if not raw:
            continue
        for r in capacity_rows(raw):
            pgish = backend == "postgres"
            table.add_row(
                backend,
                str(r["workers"]),
                f"{r['n']:,}",
                fmt(r["runs_per_s"]),
                f"{fmt(r['min'])}-{fmt(r['max'])}" if r["samples"] > 1 else "",
                f"{r['speedup']:.2f}x",
                f"{r['cpu_worker_ms']:.2f}",
                f"{r['cpu_driver_ms']:.2f}",
                f"{r['cpu_db_ms']:.2f}" if pgish else "-",
                f"{r['cpu_reader_ms']:.2f}" if pgish else "-",
                f"{r['cpu_db_all_ms']:.2f}" if pgish else "-",
                f"{r['cpu_total_ms']:.2f}",
                f"{r['machine_busy'] * 100:.0f}% of {nproc}",
                f"{r['commits_worker']:.2f}+{r['commits_client']:.2f}",
                f"{r['worker_statements']:.1f}" if pgish else "-",
                f"{r['xact_commit']:.1f}" if pgish else "-",
                f"{r['wal_bytes'] / 1024:.1f}" if pgish else "-",
            )
    console = Console(width=200)
    console.print(table)
    console.print(
        "  CPU per run from /proc: the worker processes, the driver (triggers, completions,"
        " polling), the PostgreSQL backends serving the workers and the driver's Engine (matched"
        " by client port), the backend serving the driver's polling reader, and every"
        " PostgreSQL process (other clients of the server included). machine busy: non-idle"
        " share of all CPUs over the measurement (/proc/stat), whoever used it. write tx/run:"
        " the engine's own write transactions (engine.storage.commits); worker SQL stmts/run:"
        " statements the worker processes sent (BEGIN and COMMIT included); xact_commit/run:"
        " pg_stat_database of the whole database (reads and other clients included).",
        highlight=False,
        soft_wrap=True,
    )
    for backend, results in by_backend.items():
        for r in capacity_rows(results.raw.get("scaling", [])):
            calls = ", ".join(f"{k} {v:.2f}" for k, v in r["worker_calls"].items() if v >= 0.01)
            console.print(
                f"  {backend}, {r['workers']} worker(s), storage calls per run: {calls}",
                highlight=False,
                soft_wrap=True,
            )
