"""The examples and tasks a newcomer runs first must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_approve_refund_example_runs_to_completion_by_itself(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WAITPOINT_DATABASE_URL": f"sqlite:///{tmp_path}/example.db",
        "WAITPOINT_DEMO_OUTBOX": str(tmp_path / "outbox"),
        "WAITPOINT_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "approve_refund.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "run COMPLETED" in done.stdout
    assert "'refunded': True" in done.stdout
    tickets = (tmp_path / "outbox" / "tickets.jsonl").read_text().splitlines()
    assert len(tickets) == 1  # the ticket step ran once, across the wait
    reviews = list((tmp_path / "outbox").glob("review-*.json"))
    assert len(reviews) == 1


def test_quorum_approval_example_runs_to_completion_by_itself(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WAITPOINT_DATABASE_URL": f"sqlite:///{tmp_path}/example.db",
        "WAITPOINT_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quorum_approval.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("notice (requested) to ") == 3
    assert "run COMPLETED: {'approved': True" in done.stdout
    assert "4 receipts verified" in done.stdout
