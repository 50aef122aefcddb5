"""pytest plugin (installed with the package): the ``waitpoint_env`` fixture.

    async def test_an_unanswered_refund_is_declined(waitpoint_env):
        run = await waitpoint_env.trigger("approve-refund", {"order_id": 1})
        await waitpoint_env.wait_until_waiting(run.id)
        await waitpoint_env.advance("24h")
        assert (await waitpoint_env.wait_for_run(run.id)).output["refunded"] is False

``waitpoint_env`` is an entered ``TaskTestEnvironment`` (``engine.testing``) whose worker runs
every task registered when the test starts (the ``@task`` functions of the modules the tests
imported), on a throw-away database with a clock the test moves. It is an async fixture: an
async test plugin runs it, as it runs the test (pytest-asyncio with ``asyncio_mode = "auto"``,
or anyio's ``@pytest.mark.anyio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .registry import REGISTRY
from .testing import TaskTestEnvironment


@pytest.fixture
async def waitpoint_env() -> AsyncIterator[TaskTestEnvironment]:
    """A ``TaskTestEnvironment`` running every registered task, closed after the test."""
    async with TaskTestEnvironment(REGISTRY.values()) as env:
        yield env
