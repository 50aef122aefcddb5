"""How long a command takes to start: ``import engine`` and ``waitpoint --help``, as processes.

    python benchmarks/cli_startup.py [--runs 20] [--python PATH]

Each command runs ``--runs`` times as a fresh subprocess (after one untimed run that warms the
file cache and writes the bytecode); the table shows the median, the fastest and the slowest
wall-clock time, and the median CPU time (user + system: less sensitive than the wall clock to
other work on the machine). ``python -c pass`` is the interpreter's own floor. ``--python`` measures
another environment (say, a throw-away venv with jsonschema's optional format dependencies,
``rfc3987-syntax``, installed): its interpreter, and the ``waitpoint`` script beside it.

Where the time goes: ``python -X importtime -c "import engine" 2> imports.txt`` (one line per
module, self and cumulative microseconds). No test asserts a time: this is a measurement.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def commands(python: str) -> list[tuple[str, list[str]]]:
    script = Path(python).with_name("waitpoint")
    cli = (
        [str(script)] if script.exists() else [python, "-c", "from engine.cli import main; main()"]
    )
    return [
        ("python -c pass", [python, "-c", "pass"]),
        ("import engine", [python, "-c", "import engine"]),  # names load on use (PEP 562)
        ("from engine import Engine, task", [python, "-c", "from engine import Engine, task"]),
        ("waitpoint --help", [*cli, "--help"]),
        ("waitpoint runs list --help", [*cli, "runs", "list", "--help"]),
    ]


def timed(command: list[str]) -> tuple[float, float]:
    """Milliseconds from start to exit, and of CPU (user + system) the command used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (20)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    args = parser.parse_args()

    print(f"{args.python} ({args.runs} runs each)")
    print(f"{'command':<32} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'CPU ms':>8}")
    for label, command in commands(args.python):
        timed(command)  # warm-up: file cache, __pycache__
        samples = [timed(command) for _ in range(args.runs)]
        walls = [wall for wall, _ in samples]
        cpu = statistics.median(cpu for _, cpu in samples)
        median, low, high = statistics.median(walls), min(walls), max(walls)
        print(f"{label:<32} {median:>10.0f} {low:>8.0f} {high:>8.0f} {cpu:>8.0f}")


if __name__ == "__main__":
    main()
