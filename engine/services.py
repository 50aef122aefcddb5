"""Running the worker and the API server in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus

from .api import create_app
from .api.auth import resolve_secret_key
from .client import Engine
from .logs import get_logger
from .worker import Worker

log = get_logger("engine.services")


class APIServer(uvicorn.Server):
    """uvicorn without its own signal handlers: ours stop the server and the worker together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_server(engine: Engine, host: str, port: int) -> tuple[APIServer, str, bool]:
    """The API on ``host:port`` (access log off: callback URLs are secrets), and its key.

    At most ``max_connections`` connections and requests at once (more get 503 rather than
    a file descriptor each until the process runs out), and a ``backlog`` of connections
    waiting to be accepted.
    """
    settings = engine.settings
    known = engine.secret_key  # the engine, when open, found (or made) it already
    key, created = (known.value, known.created) if known else resolve_secret_key(settings)
    config = uvicorn.Config(
        create_app(engine, secret_key=key),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="off",
        limit_concurrency=connection_limit(settings.max_connections),
        backlog=settings.backlog,
        # the client address (rate limits) is the socket peer unless proxies are named
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or None,
    )
    return APIServer(config), key, created


RESERVED_FILES = 64
"""File descriptors kept for everything but client connections: the database, logs, pipes."""


def connection_limit(wanted: int) -> int:
    """``wanted``, or fewer when the open-file limit (``ulimit -n``) would run out first."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to lower it to
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - RESERVED_FILES >= wanted:
        return wanted
    lowered = max(1, soft - RESERVED_FILES)
    log.warning("api.connections_lowered", wanted=wanted, allowed=lowered, open_file_limit=soft)
    return lowered


async def run_services(worker: Worker | None, server: APIServer | None) -> None:
    """Run the worker and/or the API next to a signal watcher, until both have stopped."""
    async with anyio.create_task_group() as group:
        await group.start(stop_on_signals, worker, server)
        async with anyio.create_task_group() as services:
            if server is not None:
                services.start_soon(server.serve)
            if worker is not None:
                services.start_soon(worker.run)
        group.cancel_scope.cancel()


async def stop_on_signals(
    worker: Worker | None,
    server: APIServer | None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM drains (finish or park running attempts); a second one hands back.

    Reports started once the handlers are in place, so no signal can find the worker running
    without them (and kill it the default way, mid-write).
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        graceful = True
        async for signum in signals:
            log.info("worker.stopping", signal=signal.Signals(signum).name, graceful=graceful)
            if worker is not None:
                worker.stop(graceful=graceful)
            if server is not None:
                server.should_exit = True
                server.force_exit = not graceful
            graceful = False
