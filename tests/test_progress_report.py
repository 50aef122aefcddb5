"""The progress of a bulk action (``runs cancel|retry`` by filter, ``purge``): a bar on a
terminal, a line a batch elsewhere, nothing with ``--json``."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from engine.console import ProgressReport


def test_a_terminal_gets_a_bar_that_ends_full() -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=80)
    with ProgressReport("canceled", console=terminal) as progress:
        progress(50, 120)
        progress(120, 120)
    shown = screen.getvalue()
    assert "canceled" in shown and "120/120" in shown
    assert "canceled 50 of 120\n" not in shown  # a bar, not lines


def test_elsewhere_a_line_a_batch_and_nothing_when_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    piped = Console(file=io.StringIO(), force_terminal=False)
    with ProgressReport("retried", console=piped) as progress:
        progress(50, 75)
        progress(75, 75)
    assert capsys.readouterr().err == "retried 50 of 75\nretried 75 of 75\n"
    with ProgressReport("deleted", quiet=True, console=piped) as progress:
        progress(1, 1)
    assert capsys.readouterr().err == ""
