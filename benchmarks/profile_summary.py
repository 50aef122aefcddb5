"""Summarise py-spy collapsed stacks (``run.py --profile DIR`` writes them) as text.

    python benchmarks/profile_summary.py DIR/wait10000.collapsed.txt [--top 25]

Splits samples into the event-loop thread (idle in ``select`` or busy) and other threads
(the SQLite writer thread and aiosqlite's reader thread), then lists the functions with the
largest inclusive share of the busy event-loop samples, the hottest leaf frames, and a few
buckets (logging, pydantic, JSON, sqlite3, thread hops, asyncio/anyio scheduling).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

BUCKETS = {
    "structlog (log lines, contextvars binding)": ("structlog/",),
    "pydantic (models, validation, dumps)": ("pydantic/", "pydantic_core"),
    "json (dumps/loads)": ("json/",),
    "callback URL signing (hmac)": ("hmac.py", "callbacks.py"),
    "hops to threads (aiosqlite reads, anyio to_thread)": (
        "aiosqlite/core.py",
        "anyio/to_thread.py",
        "run_sync_in_worker_thread",
    ),
    "anyio task spawning (TaskGroup.start_soon)": ("TaskGroup.start_soon",),
    "claim_runs (SQL + building ClaimedRun)": ("claim_runs",),
}


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    func, file, _ = m.groups()
    file = re.sub(r".*site-packages/", "", file)
    return f"{func} ({file})"


def summarise(path: Path, top: int) -> str:
    stacks = parse(path)
    loop: list[tuple[list[str], int]] = []
    threads = Counter[str]()
    idle = 0
    for frames, n in stacks:
        if frames[0].startswith("Thread._bootstrap"):
            key = next((short(f) for f in frames if "run" in f and "Thread" in f), "thread")
            leaf_owner = next(
                (short(f) for f in frames if "engine/" in f or "aiosqlite" in f), short(frames[-1])
            )
            threads[f"{key} -> {leaf_owner}"] += n
            continue
        if "select (selectors.py" in frames[-1]:
            idle += n
            continue
        loop.append((frames, n))
    busy = sum(n for _, n in loop)
    total_loop = busy + idle
    share = busy / max(total_loop, 1)
    out = [
        f"{path.name}: {total_loop} event-loop samples, busy {busy} ({share:.0%}),"
        f" idle in select {idle}; other threads {sum(threads.values())} samples"
    ]
    inclusive = Counter[str]()
    leaves = Counter[str]()
    buckets = Counter[str]()
    for frames, n in loop:
        for name in {short(f) for f in frames}:
            inclusive[name] += n
        leaves[short(frames[-1])] += n
        joined = ";".join(frames)
        for bucket, needles in BUCKETS.items():
            if any(needle in joined for needle in needles):
                buckets[bucket] += n
    out.append("\nbuckets (share of busy event-loop samples; a sample may count in several):")
    for bucket, n in buckets.most_common():
        out.append(f"  {n / busy:6.1%}  {bucket}")
    out.append(f"\ntop {top} inclusive (busy event-loop samples):")
    for name, n in inclusive.most_common(top):
        out.append(f"  {n / busy:6.1%}  {name}")
    out.append(f"\ntop {top} leaf frames:")
    for name, n in leaves.most_common(top):
        out.append(f"  {n / busy:6.1%}  {name}")
    out.append("\nother threads:")
    for name, n in threads.most_common(8):
        out.append(f"  {n:6d}  {name}")
    return "\n".join(out)


def summarise_gil(path: Path, top: int) -> str:
    """For ``py-spy record --gil`` profiles: every sample is the thread holding the GIL, so
    the shares are shares of the process's Python CPU time, across all threads."""
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    where = Counter[str]()
    inclusive = Counter[str]()
    buckets = Counter[str]()
    for frames, n in stacks:
        joined = ";".join(frames)
        if "GroupCommitWriter._commit" in joined:
            where["writer thread: operations inside the write transaction"] += n
        elif "_connection_worker_thread" in joined:
            where["aiosqlite reader thread"] += n
        else:
            where["event loop thread"] += n
        for name in {short(f) for f in frames}:
            inclusive[name] += n
        for bucket, needles in BUCKETS.items():
            if any(needle in joined for needle in needles):
                buckets[bucket] += n
    out = [f"{path.name}: {total} GIL-holding samples"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in where.most_common()]
    out.append("buckets (a sample may count in several):")
    out += [f"  {n / total:6.1%}  {name}" for name, n in buckets.most_common()]
    out.append(f"top {top} inclusive:")
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="the profile was taken with --gil")
    args = parser.parse_args()
    for path in args.files:
        print(summarise_gil(path, args.top) if args.gil else summarise(path, args.top))
        print()


if __name__ == "__main__":
    main()
