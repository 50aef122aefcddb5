"""Check the import graph of ``engine``: no cycles, and every arrow points down the layers.

    python scripts/check_imports.py        # `make lint` runs it; exit 1 and a list on failure

Every ``import`` counts, at module level or inside a function (an import moved into a function
to break a cycle still makes one), except those under ``if TYPE_CHECKING:``, which never run.
The layers, bottom first, are ``LAYERS``; a module may import from its own layer and those
below it. docs/architecture.md ("Layers") explains them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "engine"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "engine.errors",
            "engine.models",
            "engine.durations",
            "engine.clock",
            "engine.ids",
            "engine.keys",
            "engine.settings",
            "engine.logs",
            "engine.defaults",
            "engine.options",
            "engine.journal",
            "engine.faults",
            "engine.private_files",
            "engine.validation",
            "engine.signing",
            "engine.receipts",
            "engine.current",
            "engine.cron",
            "engine.metrics",  # the in-process figures: recorded by storage and worker alike
        ),
    ),
    ("storage", ("engine.storage",)),
    ("requests", ("engine.requests", "engine.completion", "engine.tracing")),
    (
        "runtime",
        (
            "engine.context",
            "engine.durable",
            "engine.approvals",
            "engine.children",
            "engine.registry",
            "engine.runtime",
            "engine.notifiers",  # approvals' notifications: outside I/O, called by the engine
        ),
    ),
    ("client", ("engine.client",)),
    ("worker", ("engine.worker", "engine.replay_check")),
    ("web", ("engine.api", "engine.ui")),
    (
        "entry points",
        (
            "engine",  # the package's __init__: lazy exports of every layer
            "engine.__main__",
            "engine.cli",
            "engine.cli_words",
            "engine.console",
            "engine.services",
            "engine.testing",
            "engine.pytest_plugin",
        ),
    ),
]


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that ``name`` imports when it runs (TYPE_CHECKING blocks aside)."""
    known = set(known)
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    found = modules(root, package)
    return {name: imports_of(name, path, found) for name, path in found.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer_of(name: str) -> int | None:
    """The layer a module belongs to: the longest prefix named in ``LAYERS``."""
    best: tuple[int, int] | None = None
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), number)
    return None if best is None else best[1]


def problems(edges: Mapping[str, set[str]]) -> list[str]:
    """What is wrong with the graph, one line each; empty when it is layered and acyclic."""
    found = [f"import cycle: {' <-> '.join(cycle)}" for cycle in cycles(edges)]
    for name in sorted(edges):
        layer = layer_of(name)
        if layer is None:
            found.append(f"{name} is in no layer: add it to LAYERS in scripts/check_imports.py")
            continue
        for other in sorted(edges[name]):
            other_layer = layer_of(other)
            if other_layer is not None and other_layer > layer:
                found.append(
                    f"{name} ({LAYERS[layer][0]}) imports {other} ({LAYERS[other_layer][0]}),"
                    " a layer above it"
                )
    return found


def main() -> int:
    found = problems(graph())
    for line in found:
        print(line, file=sys.stderr)
    if found:
        return 1
    print(f"{PACKAGE}: no import cycles, every import points down the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
