"""Two engines side by side on items 1 and 2: runs/s and CPU per run, alternating.

    git archive <commit> engine | tar -x -C /tmp/engine-<commit>
    .venv/bin/python benchmarks/ab.py --a /tmp/engine-<commit> --b . --repeat 5

Each sample is one ``run.py --only ITEM --repeat 1`` subprocess with the engine's folder first
on ``PYTHONPATH`` (its workers and the driver then import that engine), A and B alternating
and swapping who goes first every repeat, so both see the same machine. Prints every
sample and a table: the medians of runs/s, of worker CPU and of driver (client) CPU per run,
and B's ratio to A, with each engine's commit, the load average over the samples and the
largest share of the machine's time the hypervisor stole during one (other guests on the
host's cores: CPU seconds per run grow with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit_of(folder: Path) -> str:
    """The commit of an engine folder: its git HEAD (plus ``+dirty``), or the folder's name."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "engine")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return folder.name


def sample(folder: Path, item: str, n: int, backend: str, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        out = Path(tmp) / "out.json"
        size = ["--token-wait-n", str(n)] if item == "2" else []
        env = {**os.environ, "PYTHONPATH": str(folder.resolve())}
        subprocess.run(
            [sys.executable, str(HERE / "run.py"), "--backend", backend, "--only", item,
             "--repeat", "1", *size, "--json", str(out), "--dir", tmp, *extra],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        data = json.loads(out.read_text())
    raw = data["backends"][backend]["raw"]
    m = (raw["trivial"] if item == "1" else raw[f"token_wait_{n}"])[0]
    runs = m["n"]
    return {
        "rate": runs / m["seconds"],
        "worker": m["cpu_worker_s"] * 1000 / runs,
        "driver": m["cpu_driver_s"] * 1000 / runs,
        "steal": m["machine_steal"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, type=Path, help="folder holding engine A")
    parser.add_argument("--b", default=HERE.parent, type=Path, help="engine B (this tree)")
    parser.add_argument("--item", default="2", choices=["1", "2"])
    parser.add_argument("--n", type=int, default=10_000, help="item 2's runs per sample")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--b-uvloop", action="store_true", help="B's worker runs on uvloop (A's on asyncio)"
    )
    args = parser.parse_args()
    extra = {"A": [], "B": ["--uvloop"] if args.b_uvloop else []}
    engines = {"A": args.a, "B": args.b}
    samples: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    loads = []
    for r in range(args.repeat):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            loads.append(os.getloadavg()[0])
            s = sample(engines[name], args.item, args.n, args.backend, extra[name])
            samples[name].append(s)
            print(
                f"  {r + 1}/{args.repeat} {name}: {s['rate']:7.0f} runs/s, CPU ms/run worker"
                f" {s['worker']:.3f} driver {s['driver']:.3f}, steal {s['steal']:.1%}",
                flush=True,
            )
    what = "trivial runs" if args.item == "1" else f"token-wait runs, N={args.n:,}"
    steal = max(s["steal"] for name in samples for s in samples[name])
    print(f"\n{what} on {args.backend}, medians of {args.repeat}, A and B alternating;"
          f" load average {min(loads):.2f}-{max(loads):.2f}; the hypervisor's steal at most"
          f" {steal:.1%} of the machine's time in a sample")  # fmt: skip
    print("| engine | commit | runs/s | worker CPU ms/run | driver CPU ms/run |")
    print("|---|---|---:|---:|---:|")
    med = {
        name: {k: statistics.median(s[k] for s in samples[name]) for k in samples[name][0]}
        for name in engines
    }
    for name, folder in engines.items():
        m = med[name]
        loop = " (uvloop)" if extra[name] else ""
        print(
            f"| {name} | {commit_of(folder)}{loop} | {m['rate']:,.0f} | {m['worker']:.3f}"
            f" | {m['driver']:.3f} |"
        )
    a, b = med["A"], med["B"]
    print(
        f"| B / A | | {b['rate'] / a['rate']:.2f}x | {b['worker'] / a['worker']:.2f}x"
        f" | {b['driver'] / a['driver']:.2f}x |"
    )


if __name__ == "__main__":
    main()
