"""A worker killed with SIGKILL in the middle of a step: another worker takes the run over once
the lease runs out, replays the journal, and does not redo the steps already recorded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from engine import Engine

TASKS = textwrap.dedent(
    """
    import asyncio
    from pathlib import Path

    from engine import step, task

    def mark(path: str, line: str) -> str:
        with open(path, "a") as file:
            file.write(line + "\\n")
        return line

    async def slow_when_flagged(path: str, flag: str) -> str:
        mark(path, "b-started")
        while Path(flag).exists():
            await asyncio.sleep(0.05)
        return "b"

    @task("crash-flow")
    async def crash_flow(payload: dict) -> list[str]:
        a = await step("a", mark, payload["log"], "a")
        b = await step("b", slow_when_flagged, payload["log"], payload["flag"])
        return [a, b]
    """
)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from engine import Engine, Worker
    from engine.registry import load_tasks

    async def main() -> None:
        async with Engine(sys.argv[1]) as engine:
            await Worker(engine, load_tasks("crash_tasks"), poll_seconds=0.1).run()

    asyncio.run(main())
    """
)


def start_worker(folder: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WAITPOINT_LEASE_SECONDS": "1", "WAITPOINT_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_until(predicate: object, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the condition")
        await asyncio.sleep(0.05)


async def test_run_killed_mid_step_resumes_elsewhere_without_redoing_journaled_steps(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "crash_tasks.py").write_text(TASKS)
    url = db_url
    log, flag = tmp_path / "steps.log", tmp_path / "slow.flag"
    flag.touch()
    first = start_worker(tmp_path, url)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with Engine(url) as engine:

            async def registered() -> bool:
                return bool(await engine.storage.list_tasks())

            await wait_until(registered)
            run = await engine.trigger("crash-flow", {"log": str(log), "flag": str(flag)})

            async def b_started() -> bool:
                return log.exists() and "b-started" in log.read_text()

            await wait_until(b_started)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            assert (await engine.runs.retrieve(run.id)).status == "EXECUTING"  # lease still held

            flag.unlink()  # the retried step finishes quickly this time
            second = start_worker(tmp_path, url)
            done = await engine.wait_for_run(run.id, timeout=30)
            assert done.output == ["a", "b"]
            assert log.read_text().splitlines() == ["a", "b-started", "b-started"]
            assert done.attempt_count == 1  # recovering from a crash is not a new attempt
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
