"""Running the worker and the API server in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus

from .api import create_app
from .api.auth import resolve_secret_key
from .client import Engine
from .errors import ConfigurationError
from .keys import SecretKey
from .logs import get_logger
from .worker import Worker

log = get_logger("engine.services")


class APIServer(uvicorn.Server):
    """uvicorn on a socket bound beforehand (``listen``), without its own signal handlers:
    ours stop the server and the worker together."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket) -> None:
        super().__init__(config)
        self.listener = listener

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets or [self.listener])


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, made before the database is opened and the worker
    started: a port in use ends ``waitpoint dev``/``serve`` at once, with one line, instead
    of leaving a process up with a worker and no API (uvicorn binding it itself exits its
    task, not the process). ``::`` also takes IPv4, as uvicorn's own socket would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dual = host == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server((host, port), family=family, dualstack_ipv6=dual)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            message = f"port {port} is in use: pass --port or stop the other process"
        else:  # an address not on this machine, a name that does not resolve, a port < 1024
            message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ConfigurationError(message) from None


def api_server(engine: Engine, listener: socket.socket) -> tuple[APIServer, SecretKey]:
    """The API on ``listener`` (access log off: callback URLs are secrets), and its key.

    At most ``max_connections`` connections and requests at once (more get 503 rather than
    a file descriptor each until the process runs out), and a ``backlog`` of connections
    waiting to be accepted.
    """
    settings = engine.settings
    # the engine, when open, found (or made) it already
    key = engine.secret_key or resolve_secret_key(settings)
    host, port = listener.getsockname()[:2]
    config = uvicorn.Config(
        create_app(engine, secret_key=key.value),
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
    return APIServer(config, listener), key


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
