"""The tables of a ``run.py --json`` file as Markdown (for benchmarks/README.md).

python benchmarks/to_markdown.py results-full.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from report import fmt


def spread(row: dict[str, Any]) -> str:
    vals = [v for v in row["samples"] if not (isinstance(v, float) and math.isnan(v))]
    return f"{fmt(min(vals))}-{fmt(max(vals))}" if len(vals) > 1 else ""


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    rng = spread(row)
    return f"**{fmt(row['median'], row['unit'])}**" + (f" ({rng})" if rng else "")


def tuple_text(pairs: list[list[float]]) -> str:
    if not pairs:
        return ""
    width = min(len(p) for p in pairs)
    return "+".join(f"{statistics.median(p[k] for p in pairs):.2f}" for k in range(width))


def side_by_side(data: dict[str, Any]) -> str:
    lite = {r["key"]: r for r in data["backends"].get("sqlite", {}).get("rows", [])}
    pg = {r["key"]: r for r in data["backends"].get("postgres", {}).get("rows", [])}
    keys = list(lite) + [k for k in pg if k not in lite]
    lines = [
        "| # | measurement | SQLite (min-max) | commits/run w+c | CPU ms/run w+c"
        " | PostgreSQL (min-max) | commits/run w+c | CPU ms/run w+c+db | PG / SQLite"
        " | target | met: SQLite, PG | DBOS | ratio to DBOS: SQLite, PG |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for key in keys:
        a, b = lite.get(key), pg.get(key)
        row = a or b
        assert row is not None
        ratio = ""
        if a and b and a["median"] and not math.isnan(a["median"]):
            ratio = f"{b['median'] / a['median']:.2f}x"
        dbos = (a or b or {}).get("dbos_median")
        dbos_ratio = ""
        if dbos:
            parts = [f"{r['median'] / dbos:.1f}x" if r else "-" for r in (a, b)]
            dbos_ratio = " / ".join(parts)
        lines.append(
            "| "
            + " | ".join(
                [
                    key,
                    f"{row['label']}: {row['metric']}",
                    cell(a),
                    tuple_text(a["commits_per_run_worker_client"]) if a else "",
                    tuple_text(a["cpu_ms_per_run_worker_client_db"]) if a else "",
                    cell(b),
                    tuple_text(b["commits_per_run_worker_client"]) if b else "",
                    tuple_text(b["cpu_ms_per_run_worker_client_db"]) if b else "",
                    ratio,
                    row["target"].replace(">=", "≥"),
                    ", ".join(x for x in ((a or {}).get("met", ""), (b or {}).get("met", "")))
                    .lower()
                    .strip(", "),
                    fmt(dbos, "/s") if dbos else "",
                    dbos_ratio,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def capacity(data: dict[str, Any]) -> str:
    lines = [
        "| backend | workers | runs/s | min-max | vs 1 | CPU ms/run: workers | driver"
        " | db (engine) | db (reader) | all postgres | sum w+c+db | machine busy | write tx/run w+c"
        " | worker SQL stmts/run | xact_commit/run | WAL KB/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, results in data["backends"].items():
        for r in results.get("capacity", []):
            pg = backend == "postgres"
            lines.append(
                "| "
                + " | ".join(
                    [
                        backend,
                        str(r["workers"]),
                        f"**{fmt(r['runs_per_s'])}**",
                        f"{fmt(r['min'])}-{fmt(r['max'])}" if r["samples"] > 1 else "",
                        f"{r['speedup']:.2f}x",
                        f"{r['cpu_worker_ms']:.2f}",
                        f"{r['cpu_driver_ms']:.2f}",
                        f"{r['cpu_db_ms']:.2f}" if pg else "-",
                        f"{r.get('cpu_reader_ms', math.nan):.2f}" if pg else "-",
                        f"{r['cpu_db_all_ms']:.2f}" if pg else "-",
                        f"{r['cpu_total_ms']:.2f}",
                        f"{r['machine_busy'] * 100:.0f}%",
                        f"{r['commits_worker']:.2f}+{r['commits_client']:.2f}",
                        f"{r['worker_statements']:.1f}" if pg else "-",
                        f"{r['xact_commit']:.1f}" if pg else "-",
                        f"{r['wal_bytes'] / 1024:.1f}" if pg else "-",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json_file")
    args = parser.parse_args()
    data = json.loads(Path(args.json_file).read_text())
    print(side_by_side(data))
    print()
    print(capacity(data))
    for backend, results in data["backends"].items():
        print(f"\n{backend} notes:")
        for note in results["notes"]:
            print(f"- {note}")


if __name__ == "__main__":
    main()
