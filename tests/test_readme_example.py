"""The README's test example runs in a project of its own, with the configuration it shows.

The example and its ``pyproject.toml`` are read from the README's "Testing your tasks"
section (its ``toml`` and ``python`` blocks), so the README and this test cannot drift apart;
they go into a fresh folder with nothing of this repository (no conftest, no pytest settings),
where ``python -m pytest`` runs them with this interpreter (the package is installed in it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Testing your tasks"


def readme_blocks(language: str) -> list[str]:
    """The fenced ``language`` blocks of the README's testing section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.find("\n## ", len(SECTION))]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.M | re.S)


def run_readme_example(folder: Path) -> str:
    """Write the README's example and configuration into ``folder`` and run pytest there;
    returns its output once it passed with at least one test."""
    [configuration] = readme_blocks("toml")
    [example] = readme_blocks("python")
    first_line = example.splitlines()[0]
    name = re.match(r"# (test_\w+\.py)", first_line)
    assert name is not None, f"the example's first line names its file: {first_line!r}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(configuration)
    (folder / name.group(1)).write_text(example)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAITPOINT_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)  # the installed package, not this checkout's folder
    done = subprocess.run(
        # -W error: the configuration the README shows leaves pytest nothing to warn about
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"rootdir: {folder}" in output, output  # nothing of this repository configured it
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None and int(passed.group(1)) >= 1, output
    return output


def test_the_readme_test_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    run_readme_example(tmp_path)
