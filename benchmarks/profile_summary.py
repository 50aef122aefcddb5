"""The CPU budget of a run from the profiles ``run.py --profile DIR`` writes (``profiler.py``).

    python benchmarks/profile_summary.py DIR/002-wait10000-w0.prof --runs 10000 [--top 30]

Prints, per run (the profile's time divided by ``--runs``): the work (profiled time minus
waiting: ``select``, lock and queue waits), the phases of a run as the cumulative time of
the functions that own them (a row's time includes the rows indented under it; phases on
different threads do not overlap), the costs that cut across phases (own time of logging,
JSON, pydantic, sqlite3 and asyncio code), and the functions with the most own time.
cProfile slows Python calls down, so these are shares of a budget: the benchmark's own CPU
figures are the measurement.
"""

from __future__ import annotations

import argparse
import ast
import pstats
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

Key = tuple[str, int, str]

# builtins whose time is waiting, not work
IDLE = (
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<built-in method time.sleep>",
)

# (indent, label, qualnames whose cumulative time is the phase's, summed over threads, less
# the cumulative time of the waits named last: a thread's loop includes its idle waits)
PHASES: tuple[tuple[int, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (0, "claim (event loop + the writer's statement)", ("Worker._claim_turn",), ()),
    (0, "an attempt on the event loop (Worker._attempt)", ("Worker._attempt",), ()),
    (1, "step: runs once, replays on resume", ("step",), ()),
    (1, "create_token", ("create_token",), ()),
    (1, "wait_for_token (park, and the resumed read)", ("wait_for_token",), ()),
    (1, "finish (runtime._end)", ("_end",), ()),
    (0, "SQLite writer thread (GroupCommitWriter._commit)", ("GroupCommitWriter._commit",), ()),
    (1, "BEGIN IMMEDIATE", ("GroupCommitWriter._begin",), ()),
    (1, "claim_runs", ("Runs.claim_runs.<locals>.op",), ()),
    (1, "append_journal (a step)", ("Runs.append_journal.<locals>.op",), ()),
    (1, "create_token", ("Tokens.create_token.<locals>.op",), ()),
    (1, "wait_on_token (park; resumed: journal)", ("Waits.wait_on_token.<locals>.op",), ()),
    (1, "release_run (after the park)", ("Runs.release_run.<locals>.op",), ()),
    (1, "finish_run", ("Runs.finish_run.<locals>.op",), ()),
    (1, "complete_token (client)", ("Tokens._close_token.<locals>.op",), ()),
    (1, "create_run (client trigger)", ("Runs.create_run.<locals>.op",), ()),
    (
        0,
        "reads (aiosqlite's thread, less its waits)",
        ("_connection_worker_thread",),
        ("<method 'get' of '_queue.SimpleQueue' objects>",),
    ),
    (0, "lease loop", ("Worker._lease_loop",), ()),
    (0, "timer loop (event loop side)", ("Worker._timer_loop",), ()),
    (0, "client: trigger", ("LocalConnection.trigger",), ()),
    (0, "client: complete a token", ("LocalTokens.complete",), ()),
    (0, "all log lines (EngineLogger._emit)", ("EngineLogger._emit",), ()),
)

# own time of code in these files (or these builtins), summed
COSTS = {
    "logging (structlog, engine/logs.py)": ("structlog/", "engine/logs.py"),
    "JSON (json module, orjson)": ("json/", "_json", "orjson"),
    "pydantic (validation, dumps)": ("pydantic", "pydantic_core"),
    "sqlite3 (statements, commit)": ("sqlite3.",),
    "asyncio + anyio machinery": ("asyncio/", "anyio/", "_asyncio."),
    "engine/ (own code)": ("engine/",),
}


@cache
def _qualnames(filename: str) -> dict[int, str]:
    """First line of each function in ``filename`` -> its qualified name."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    names: dict[int, str] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                line = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                for first in {child.lineno, line}:
                    names[first] = prefix + child.name
                walk(child, f"{prefix}{child.name}.<locals>.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return names


def qualname(key: Key) -> str:
    filename, line, name = key
    found = _qualnames(filename).get(line, name) if filename.endswith(".py") else name
    return found if found.endswith(name) else name


def where(key: Key) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    for anchor in ("site-packages/", "/engine/", "/benchmarks/", "/lib/python3.11/"):
        if anchor in filename:
            filename = anchor.strip("/") + "/" + filename.split(anchor, 1)[1]
            break
    return f"{qualname(key)} ({filename}:{line})"


def _waiting(key: Key) -> bool:
    """Whether ``key`` is a builtin whose time is waiting (``IDLE``)."""
    return key[0] == "~" and key[2] in IDLE


def _waits_under(
    stats: dict[Key, tuple[Any, ...]], waits: tuple[str, ...], callers: tuple[str, ...]
) -> float:
    """The time of the ``waits`` functions called directly from the ``callers`` functions."""
    total = 0.0
    for key, row in stats.items():
        if qualname(key) in waits:
            for caller, (_, _, _, seconds) in row[4].items():
                if qualname(caller) in callers:
                    total += seconds
    return total


def summarise(path: Path, runs: int, top: int) -> str:
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    own = {key: row[2] for key, row in stats.items()}
    cumulative = {key: row[3] for key, row in stats.items()}
    idle = sum(t for key, t in own.items() if _waiting(key))
    work = sum(own.values()) - idle
    per_run = lambda seconds: f"{seconds * 1000 / runs:7.3f} ms"  # noqa: E731
    share = lambda seconds: f"{seconds / work:6.1%}"  # noqa: E731
    out = [
        f"{path.name}: work {per_run(work)} per run over {runs:,} runs"
        f" (profiled time {sum(own.values()):.1f} s, waiting {idle:.1f} s)",
        "\nphases (cumulative time of the owning functions; indented rows are inside the row"
        " above):",
    ]
    by_name = Counter[str]()
    for key, seconds in cumulative.items():
        by_name[qualname(key)] += seconds
    for indent, label, names, waits in PHASES:
        seconds = sum(by_name.get(n, 0.0) for n in names) - _waits_under(stats, waits, names)
        if seconds:
            out.append(f"  {per_run(seconds)} {share(seconds)}  {'    ' * indent}{label}")
    out.append("\ncosts across phases (own time):")
    costs = Counter[str]()
    for key, seconds in own.items():
        if _waiting(key):
            continue
        text = f"{key[0]} {key[2]}"
        for cost, needles in COSTS.items():
            if any(needle in text for needle in needles):
                costs[cost] += seconds
                break
    for cost, seconds in costs.most_common():
        out.append(f"  {per_run(seconds)} {share(seconds)}  {cost}")
    out.append(f"\ntop {top} by own time (calls per run):")
    ranked = sorted(((t, k) for k, t in own.items() if not _waiting(k)), reverse=True)
    for seconds, key in ranked[:top]:
        calls = stats[key][1] / runs
        out.append(f"  {per_run(seconds)} {share(seconds)} {calls:7.2f}  {where(key)}")
    out.append(f"\ntop {top} by cumulative time:")
    for seconds, key in sorted(((t, k) for k, t in cumulative.items()), reverse=True)[:top]:
        out.append(f"  {per_run(seconds)} {share(seconds)}  {where(key)}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, required=True, help="runs the profile covers")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    for path in args.files:
        print(summarise(path, args.runs, args.top))
        print()


if __name__ == "__main__":
    main()
