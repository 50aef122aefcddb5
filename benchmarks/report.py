"""What the driver prints and writes: the rows of the tables, the tables, the machine.

``Results`` holds one backend's rows (a ``Row`` per measured figure: its samples, the median
the tables show, the target and whether it was met) and every raw measurement (``--json``).
``print_table`` prints one backend's table, ``print_side_by_side`` SQLite's and PostgreSQL's
medians of the same invocation, ``print_backend_states`` what ``--pg-waits`` sampled.
Item 8's capacity table is in ``items/capacity.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sqlite3
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- the table -------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    metric: str
    worker: str
    unit: str = ""
    target: str = ""
    good: Callable[[float], bool] | None = None
    higher_is_better: bool = True
    samples: list[float] = field(default_factory=list)
    commits: list[tuple[float, ...]] = field(default_factory=list)
    cpu: list[tuple[float, ...]] = field(default_factory=list)
    dbos: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        vals = [v for v in self.samples if not math.isnan(v)]
        return statistics.median(vals) if vals else math.nan

    @property
    def met(self) -> str:
        if self.good is None or math.isnan(self.median):
            return ""
        return "met" if self.good(self.median) else "MISSED"

    @property
    def dbos_median(self) -> float:
        return statistics.median(self.dbos) if self.dbos else math.nan

    @property
    def ratio(self) -> float:
        if not self.dbos or math.isnan(self.median):
            return math.nan
        return self.median / self.dbos_median

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "metric": self.metric,
            "worker": self.worker,
            "unit": self.unit,
            "median": self.median,
            "samples": self.samples,
            "target": self.target,
            "met": self.met,
            "commits_per_run_worker_client": self.commits,
            "cpu_ms_per_run_worker_client_db": self.cpu,
            "dbos_median": None if not self.dbos else self.dbos_median,
            "dbos_samples": self.dbos,
            "ratio_vs_dbos": None if not self.dbos else self.ratio,
            "note": self.note,
        }


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.raw: dict[str, list[Any]] = {}

    def row(self, key: str, **kwargs: Any) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key=key, **kwargs)
        return self.rows[key]

    def add_raw(self, key: str, value: Any) -> None:
        self.raw.setdefault(key, []).append(value)


def _pair(pairs: list[tuple[float, ...]], spec: str) -> str:
    """Medians of (worker, client[, db]) tuples as 'w+c[+db]'."""
    if not pairs:
        return ""
    width = min(len(p) for p in pairs)
    return "+".join(spec.format(statistics.median(p[k] for p in pairs)) for k in range(width))


def quantile_rows(
    results: Results,
    m: dict[str, Any],
    key: str,
    *,
    label: str,
    worker: str,
    quantiles: tuple[tuple[str, str, float | None], ...],
) -> None:
    """One lower-is-better row per ``(quantile, target, limit)``, from ``m[quantile + "_ms"]``,
    keyed ``{key}.{quantile}``; a row with a limit is good under it."""
    for q, target, limit in quantiles:
        row = results.row(
            f"{key}.{q}",
            label=label,
            metric=q,
            worker=worker,
            unit="ms",
            target=target,
            good=(lambda v, lim=limit: v < lim) if limit else None,
            higher_is_better=False,
        )
        row.samples.append(m[f"{q}_ms"])


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def print_table(results: Results, title: str, dbos_note: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name, justify in [
        ("#", "left"),
        ("measurement", "left"),
        ("worker", "left"),
        ("median", "right"),
        ("min-max", "right"),
        ("commits/run w+c", "right"),
        ("CPU ms/run w+c(+db)", "right"),
        ("target", "left"),
        ("", "left"),
        ("DBOS", "right"),
        ("ratio", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in results.rows.values():
        vals = [v for v in row.samples if not math.isnan(v)]
        spread = f"{fmt(min(vals))}-{fmt(max(vals))}" if len(vals) > 1 else ""
        dbos = fmt(row.dbos_median, row.unit) if row.dbos else ""
        ratio = f"{row.ratio:.1f}x" if row.dbos else ""
        if not row.dbos and dbos_note and row.key.startswith("2"):
            dbos, ratio = "n/a", "n/a"
        met = row.met
        style = {"met": "green", "MISSED": "bold red"}.get(met, "")
        table.add_row(
            row.key,
            f"{row.label}: {row.metric}",
            row.worker,
            fmt(row.median, row.unit),
            spread,
            _pair(row.commits, "{:.2f}"),
            _pair(row.cpu, "{:.2f}"),
            row.target,
            f"[{style}]{met}[/{style}]" if style else met,
            dbos,
            ratio,
        )
    console = Console(width=200)
    console.print(table)
    for note in results.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    if dbos_note:
        console.print(f"  DBOS: {dbos_note}", style="yellow", soft_wrap=True)


def _median_spread(row: Row | None) -> tuple[str, str]:
    if row is None:
        return "-", ""
    vals = [v for v in row.samples if not math.isnan(v)]
    spread = f"{fmt(min(vals))}-{fmt(max(vals))}" if len(vals) > 1 else ""
    return fmt(row.median, row.unit), spread


def print_side_by_side(by_backend: dict[str, Results], title: str) -> None:
    """SQLite and PostgreSQL medians of the same invocation, and their ratio."""
    from rich.console import Console
    from rich.table import Table

    lite, pg = by_backend["sqlite"].rows, by_backend["postgres"].rows
    keys = list(lite) + [k for k in pg if k not in lite]
    table = Table(title=title)
    for name, justify in [
        ("#", "left"),
        ("measurement", "left"),
        ("SQLite", "right"),
        ("min-max", "right"),
        ("", "left"),
        ("PostgreSQL", "right"),
        ("min-max", "right"),
        ("", "left"),
        ("PG / SQLite", "right"),
        ("target", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key in keys:
        a, b = lite.get(key), pg.get(key)
        row = a or b
        assert row is not None
        ratio = ""
        if a is not None and b is not None and a.median and not math.isnan(a.median):
            ratio = f"{b.median / a.median:.2f}x"
        table.add_row(
            key,
            f"{row.label}: {row.metric}",
            *_median_spread(a),
            a.met if a else "",
            *_median_spread(b),
            b.met if b else "",
            ratio,
            row.target,
        )
    Console(width=200).print(table)


def print_backend_states(by_backend: dict[str, Results]) -> None:
    """What ``--pg-waits`` saw, per measurement."""
    from rich.console import Console

    console = Console(width=200)
    for backend, results in by_backend.items():
        for key, ms in results.raw.items():
            for m in ms if isinstance(ms, list) else []:
                if isinstance(m, dict) and m.get("pg_backend_states"):
                    console.print(
                        f"  {backend}, {key}, {m.get('workers', 1)} worker(s): "
                        + backend_states_text(m["pg_backend_states"]),
                        highlight=False,
                        soft_wrap=True,
                    )


def backend_states_text(states: dict[str, int], top: int = 8) -> str:
    """``--pg-waits`` samples as shares: backend states, then the statements active backends
    were running (a sampling profile of the server's work)."""
    plain = {k: v for k, v in states.items() if not k.startswith("sql: ")}
    sql = {k[5:]: v for k, v in states.items() if k.startswith("sql: ")}
    total, active = sum(plain.values()) or 1, sum(sql.values()) or 1
    parts = [
        f"{k} {v / total:.0%}"
        for k, v in sorted(plain.items(), key=lambda kv: -kv[1])
        if v / total >= 0.005
    ]
    hot = [f"{v / active:.0%} {k!r}" for k, v in sorted(sql.items(), key=lambda kv: -kv[1])]
    return "backend samples: " + ", ".join(parts) + "; active statements: " + "; ".join(hot[:top])


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for dist in (
        "waitpoint",
        "aiosqlite",
        "asyncpg",
        "anyio",
        "structlog",
        "pydantic",
        "dbos",
        "uvloop",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    import engine

    root = Path(engine.__file__).resolve().parent.parent
    stamp = root / "ENGINE_COMMIT"
    if stamp.exists():
        source = f"{root} (exported from commit {stamp.read_text().strip()})"
    else:
        git = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h", "--", "engine"],
            capture_output=True,
            text=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "engine"],
            capture_output=True,
            text=True,
        )
        source = f"{root} (commit {git.stdout.strip() or '?'}"
        source += ", with uncommitted changes)" if dirty.stdout.strip() else ")"
    return {
        "engine": source,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "packages": versions,
    }
