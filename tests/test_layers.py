"""The engine's import graph has no cycles and every arrow points down the layers.

``scripts/check_imports.py`` is the check (``make lint`` runs it); these tests run it on the
engine and prove it can fail, on small packages made with a cycle, with an upward import, and
with a cycle hidden in a function-level import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import check_imports  # noqa: E402


def test_the_engine_has_no_import_cycle_and_no_upward_import() -> None:
    assert check_imports.problems(check_imports.graph()) == []


def test_make_lint_runs_the_check() -> None:
    assert "scripts/check_imports.py" in (ROOT / "Makefile").read_text()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_imports.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = tmp_path / "engine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return check_imports.graph(tmp_path, "engine")


def test_a_cycle_is_found_even_through_an_import_inside_a_function(tmp_path: Path) -> None:
    edges = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "from .errors import X\n",
            "errors.py": "def f():\n    from . import models\n",
        },
    )
    assert check_imports.cycles(edges) == [["engine.errors", "engine.models"]]
    assert any("import cycle" in line for line in check_imports.problems(edges))


def test_an_import_of_a_layer_above_is_refused(tmp_path: Path) -> None:
    edges = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "from .client import Engine\n",
            "client/__init__.py": "",
        },
    )
    assert check_imports.problems(edges) == [
        "engine.models (foundation) imports engine.client (client), a layer above it"
    ]


def test_imports_for_type_checking_only_do_not_count(tmp_path: Path) -> None:
    edges = _package(
        tmp_path,
        {
            "__init__.py": "",
            "current.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from .client import Engine\n"
            ),
            "client/__init__.py": "from ..current import current_engine\n",
        },
    )
    assert edges["engine.current"] == set()
    assert check_imports.problems(edges) == []


@pytest.mark.parametrize("module", sorted(check_imports.modules()))
def test_every_module_has_a_layer(module: str) -> None:
    assert check_imports.layer_of(module) is not None, module
