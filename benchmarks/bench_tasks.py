"""The tasks the benchmarks run (imported by the worker process and by the driver).

Timestamps that must not be made cheap (or expensive) by the journal go to a *side channel*:
a plain file opened with O_APPEND (``BENCH_SIDE_FILE``), one line ``<i> <time.time()>`` per
event, written with one ``os.write`` (atomic for short lines). It is not journaled, costs a
few microseconds, and works the same whether the worker is in the driver's process or not.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from engine import create_token, step, task, wait_for_token

_side_fd: int | None = None


def side_stamp(i: int, stamp: float | None = None) -> None:
    """Append ``i time`` to the side-channel file (not journaled, not durable)."""
    global _side_fd
    path = os.environ.get("BENCH_SIDE_FILE")
    if not path:
        return
    if _side_fd is None:
        _side_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_side_fd, f"{i} {time.time() if stamp is None else stamp!r}\n".encode())


def reset_side_channel() -> None:
    """Forget the open side-channel file (the driver points BENCH_SIDE_FILE elsewhere)."""
    global _side_fd
    if _side_fd is not None:
        os.close(_side_fd)
        _side_fd = None


async def _noop(i: int = 0) -> int:
    return i


@task("bench-trivial")
async def bench_trivial(payload: dict[str, Any]) -> dict[str, Any]:
    """1. one step, no wait."""
    value = await step("work", _noop, payload["i"])
    return {"i": value}


@task("bench-wait")
async def bench_wait(payload: dict[str, Any]) -> dict[str, Any]:
    """2/3. step, create a token, wait for it, finish; ``mark`` stamps the first line after."""
    await step("prepare", _noop, payload["i"])
    token = await create_token(timeout="1h")
    result = await wait_for_token(token)
    if payload.get("mark"):
        side_stamp(payload["i"])  # the first line after wait_for_token
    return {"ok": result.ok}


@task("bench-park")
async def bench_park(payload: dict[str, Any]) -> None:
    """4. create a token and park on it (memory: runs WAITING)."""
    token = await create_token(timeout="24h")
    await wait_for_token(token)


@task("bench-timer")
async def bench_timer(payload: dict[str, Any]) -> dict[str, Any]:
    """5. wait on a token that times out at an absolute deadline shared by all runs."""
    token = await create_token(timeout=datetime.fromisoformat(payload["deadline"]))
    result = await wait_for_token(token)
    return {"ok": result.ok}


@task("bench-replay")
async def bench_replay(payload: dict[str, Any]) -> dict[str, Any]:
    """6. ``steps`` journaled steps, then a wait; resuming replays every step from the journal."""
    for _ in range(payload["steps"]):
        await step("s", _noop)
    token = await create_token(timeout="1h")
    result = await wait_for_token(token)
    side_stamp(payload["i"])  # the first line after wait_for_token
    return {"ok": result.ok}


BENCH_TASKS = {d.id: d for d in (bench_trivial, bench_wait, bench_park, bench_timer, bench_replay)}
