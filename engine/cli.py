"""``waitpoint``: run workers, trigger runs, and inspect or complete tokens from a shell.

Every command is a thin shell over the ``Engine`` facade, so the CLI can do nothing that
Python code cannot. Errors a user can fix (an unknown id, bad JSON, a bad duration) end the
command with exit code 1 and one ``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
import pydantic
import structlog
import typer
import uvicorn
from anyio.abc import TaskStatus
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .api import create_app
from .api.auth import KEY_FILE, resolve_secret_key
from .client import Engine
from .errors import EngineError, RunFailedError, ValidationError
from .logs import configure_logging
from .models import (
    CompletionResult,
    CompletionSource,
    Page,
    Run,
    RunStatus,
    TimelineEntry,
    Token,
    WireModel,
)
from .registry import TaskDefinition, load_tasks
from .settings import DEFAULT_DATABASE_URL, Settings
from .worker import Worker

T = TypeVar("T")
log = structlog.get_logger("engine.cli")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Waitpoint: durable runs for Python asyncio.",
)
runs_app = typer.Typer(no_args_is_help=True, help="List, inspect and cancel runs.")
tokens_app = typer.Typer(no_args_is_help=True, help="Create, inspect, complete and cancel tokens.")
app.add_typer(runs_app, name="runs")
app.add_typer(tokens_app, name="tokens")

Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        help=f"Database URL [default: $WAITPOINT_DATABASE_URL or {DEFAULT_DATABASE_URL}]",
        show_default=False,
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="Use the REST API at this URL instead of a database [default: $WAITPOINT_API_URL]; "
        "the key comes from $WAITPOINT_SECRET_KEY",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat for several).")]
Statuses = Annotated[list[str] | None, typer.Option("--status", help="Filter (repeatable).")]
Limit = Annotated[int, typer.Option("--limit", help="Page size (1-100).")]
After = Annotated[str | None, typer.Option("--after", help="Cursor from the previous page.")]
Host = Annotated[str, typer.Option("--host", help="Address the API listens on.")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port the API listens on.")]
TasksModule = Annotated[
    str | None,
    typer.Option(
        "--tasks", help="Module with @task functions [default: $WAITPOINT_TASKS or tasks]"
    ),
]


def main() -> None:
    """Entry point of the ``waitpoint`` console script."""
    app()


@app.callback()
def _setup(ctx: typer.Context) -> None:
    """Keep stdout for results: engine log lines go to stderr, warnings only.

    The previous structlog set-up comes back when the command ends, so invoking the CLI
    in-process (tests, scripts) leaves the caller's logging as it was.
    """
    saved = structlog.get_config() if structlog.is_configured() else None
    configure_logging("auto", logging.WARNING)
    ctx.call_on_close(
        structlog.reset_defaults if saved is None else lambda: structlog.configure(**saved)
    )


# --- plumbing --------------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    """Print one ``error:`` line on stderr; the caller raises the returned exit (code 1)."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(1)


def _innermost(exc: BaseException) -> BaseException:
    """The one real error inside the exception groups anyio task groups wrap errors in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn every error the user can fix into one stderr line and exit code 1."""
    try:
        yield
    except Exception as raised:
        exc = _innermost(raised)
        if isinstance(exc, EngineError | json.JSONDecodeError):
            raise _fail(str(exc)) from None
        if isinstance(exc, pydantic.ValidationError):
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise _fail(f"invalid WAITPOINT_* setting: {problems}") from None
        raise


def _run(
    database: str | None,
    action: Callable[[Engine], Awaitable[T]],
    settings: Settings | None = None,
) -> T:
    """Run ``action`` on an Engine opened for this one command."""

    async def body() -> T:
        async with Engine(database, settings=settings) as engine:
            return await action(engine)

    with _user_errors():
        return asyncio.run(body())


def _json_option(text: str | None, option: str) -> Any:
    """Parse a JSON option; the message names the option, which the bare decode error cannot."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{option} is not valid JSON: {exc}") from None


# --- output ----------------------------------------------------------------------------


def _cell(value: Any, *, short: bool = False) -> Text:
    """A cell as plain text (never markup, so data like ``[red]`` stays as is).

    Structured values are shown as JSON so they stay exact; ``short`` (tables) trims times to
    the minute and joins tags with ", " so a narrow terminal can break them.
    """
    if isinstance(value, datetime):
        return Text(value.strftime("%Y-%m-%d %H:%M") if short else value.isoformat())
    if value is None or isinstance(value, str):
        return Text(value or "")
    if short and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Text(", ".join(value))
    return Text(json.dumps(value, separators=(",", ":"), default=str))


def _show(model: WireModel, as_json: bool) -> None:
    """One object: its wire JSON, or a key/value view for people."""
    if as_json:
        print(model.model_dump_json(by_alias=True))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in model.model_dump(mode="json", by_alias=True).items():
        grid.add_row(key, _cell(value))
    Console().print(grid)


def _show_page(page: Page[Any], as_json: bool, columns: dict[str, str], noun: str) -> None:
    """A page of objects: ``{"data": [...], "nextCursor": ...}`` or a table of ``columns``.

    ``columns`` maps wire field names to the short headers a table has room for.
    """
    if as_json:
        rows = [item.model_dump(mode="json", by_alias=True) for item in page.data]
        print(json.dumps({"data": rows, "nextCursor": page.next_cursor}))
        return
    console = Console()
    if not page.data:
        console.print(f"no {noun}")
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1, 0, 0), show_edge=False)
    for key, header in columns.items():  # ids are what people copy: never cut them short
        is_time = key.endswith("At")  # wide enough to break between date and time
        whole = key in ("id", "status")
        table.add_column(header, no_wrap=whole, overflow="fold", min_width=10 if is_time else None)
    for item in page.data:
        row = item.model_dump(by_alias=True)
        table.add_row(*(_cell(row.get(column), short=True) for column in columns))
    console.print(table)
    if page.next_cursor:
        console.print(Text(f"more: --after {page.next_cursor}", style="dim"))


RUN_COLUMNS = {
    "id": "id",
    "taskIdentifier": "task",
    "status": "status",
    "attemptCount": "attempts",
    "tags": "tags",
    "createdAt": "created",
}
TOKEN_COLUMNS = {
    "id": "id",
    "status": "status",
    "tags": "tags",
    "expiresAt": "expires",
    "createdAt": "created",
}


def _show_completion(result: CompletionResult, as_json: bool) -> None:
    """The token after a complete/cancel, and a note when an earlier call already closed it."""
    if not result.applied:
        print(
            f"note: token {result.token.id} was already {result.token.status.value}",
            file=sys.stderr,
        )
    _show(result.token, as_json)


# --- workers ---------------------------------------------------------------------------


class _APIServer(uvicorn.Server):
    """uvicorn without its own signal handlers: ours stop the server and the worker together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _api_server(engine: Engine, host: str, port: int) -> tuple[_APIServer, str, bool]:
    """The API on ``host:port`` (access log off: callback URLs are secrets), and its key."""
    key, created = resolve_secret_key(engine.settings)
    config = uvicorn.Config(
        create_app(engine, secret_key=key),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
    return _APIServer(config), key, created


def _api_settings(host: str, port: int) -> Settings:
    """Settings whose callback URLs point at this server unless WAITPOINT_PUBLIC_URL says else."""
    settings = Settings()
    if "public_url" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"public_url": f"http://{host}:{port}"})


def _banner(lines: list[str]) -> None:
    Console(stderr=True, highlight=False).print("\n".join(lines), markup=False)


def _key_line(key: str, created: bool, settings: Settings) -> str:
    if settings.secret_key:
        return "secret key: from WAITPOINT_SECRET_KEY"
    if created:
        return f"secret key: {key}  (new; kept in {KEY_FILE}, shown only this once)"
    return f"secret key: in {KEY_FILE}"


def _load(module: str | None, settings: Settings) -> tuple[str, dict[str, TaskDefinition]]:
    module = module or settings.tasks
    tasks = load_tasks(module)
    if not tasks:
        raise _fail(f"no tasks found in module {module!r}: decorate async functions with @task")
    return module, tasks


async def _run_services(worker: Worker | None, server: _APIServer | None) -> None:
    """Run the worker and/or the API next to a signal watcher, until both have stopped."""
    async with anyio.create_task_group() as group:
        await group.start(_stop_on_signals, worker, server)
        async with anyio.create_task_group() as services:
            if server is not None:
                services.start_soon(server.serve)
            if worker is not None:
                services.start_soon(worker.run)
        group.cancel_scope.cancel()


async def _stop_on_signals(
    worker: Worker | None,
    server: _APIServer | None,
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


@app.command()
def dev(
    database: Database = None,
    tasks: TasksModule = None,
    host: Host = "127.0.0.1",
    port: Port = 8030,
) -> None:
    """Run a worker and the API for local development, with readable logs."""
    with _user_errors():
        settings = _api_settings(host, port)
        configure_logging("console")
        module, found = _load(tasks, settings)

    async def work(engine: Engine) -> None:
        server, key, created = _api_server(engine, host, port)
        _banner(
            [
                f"waitpoint dev  database: {engine.settings.database_url}",
                f"tasks from {module!r}: {', '.join(sorted(found))}",
                f"API: http://{host}:{port}  (docs at http://{host}:{port}/docs)",
                _key_line(key, created, engine.settings),
            ]
        )
        await _run_services(Worker(engine, found), server)

    _run(database, work, settings)


@app.command()
def serve(database: Database = None, host: Host = "127.0.0.1", port: Port = 8030) -> None:
    """Run the REST API alone (workers run elsewhere, on the same database)."""
    with _user_errors():
        settings = _api_settings(host, port)
        configure_logging(settings.log_format)

    async def work(engine: Engine) -> None:
        server, key, created = _api_server(engine, host, port)
        _banner(
            [f"waitpoint API on http://{host}:{port}", _key_line(key, created, engine.settings)]
        )
        await _run_services(None, server)

    _run(database, work, settings)


@app.command()
def worker(
    tasks: TasksModule = None,
    database: Database = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Attempts run at once.")
    ] = None,
) -> None:
    """Run a worker: claim queued runs of the loaded tasks until SIGINT/SIGTERM."""
    with _user_errors():
        settings = Settings()
        configure_logging(settings.log_format)
        _, found = _load(tasks, settings)

    async def work(engine: Engine) -> None:
        await _run_services(Worker(engine, found, concurrency=concurrency), None)

    _run(database, work)


# --- runs ------------------------------------------------------------------------------


@app.command()
def trigger(
    task_id: str,
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    tag: Tags = None,
    delay: Annotated[
        str | None, typer.Option("--delay", help="Start no sooner than this (10m, 1h).")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Expire if not started within this (1h).")
    ] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", help="A JSON object kept on the run.")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", min=1)] = None,
    max_duration: Annotated[
        str | None, typer.Option("--max-duration", help="Executing time allowed (10m).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to finish.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to --wait at most.")
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """Queue a run of TASK_ID (a worker must have registered it)."""

    async def action(engine: Engine) -> Run:
        if timeout is not None and not wait:
            raise ValidationError("--timeout only applies with --wait")
        run = await engine.trigger(
            task_id,
            _json_option(payload, "--payload"),
            idempotency_key=idempotency_key,
            tags=tag,
            delay=delay,
            ttl=ttl,
            metadata=_json_option(metadata, "--metadata"),
            max_attempts=max_attempts,
            max_duration=max_duration,
        )
        if not wait:
            return run
        try:
            return await engine.wait_for_run(run.id, timeout=timeout)
        except RunFailedError:
            return await engine.runs.retrieve(run.id)

    run = _run(api_url or database, action)
    _show(run, as_json)
    if wait and run.status is not RunStatus.COMPLETED:
        raise _fail(f"run {run.id} ended {run.status.value}")


@runs_app.command("list")
def runs_list(
    status: Statuses = None,
    task: Annotated[str | None, typer.Option("--task", help="Only runs of this task.")] = None,
    tag: Tags = None,
    limit: Limit = 25,
    after: After = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """List runs, newest first."""
    page = _run(
        api_url or database,
        lambda e: e.runs.list(status=status, task=task, tags=tag, limit=limit, after=after),
    )
    _show_page(page, as_json, RUN_COLUMNS, "runs")


@runs_app.command("get")
def runs_get(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show one run and, for people, its timeline (what it did, and how each wait ended)."""

    async def action(engine: Engine) -> tuple[Run, list[TimelineEntry]]:
        return await engine.runs.retrieve(run_id), await engine.runs.timeline(run_id)

    run, timeline = _run(api_url or database, action)
    _show(run, as_json)
    if not as_json:
        _show_timeline(timeline)


@runs_app.command("timeline")
def runs_timeline(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show what a run did: steps, tokens, waits and how each completion arrived."""
    timeline = _run(api_url or database, lambda e: e.runs.timeline(run_id))
    if as_json:
        print(json.dumps([entry.model_dump(mode="json", by_alias=True) for entry in timeline]))
    else:
        _show_timeline(timeline)


def _show_timeline(timeline: list[TimelineEntry]) -> None:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1, 0, 0), show_edge=False)
    for header in ("at", "call", "attempt", "outcome"):
        table.add_column(header, overflow="fold")
    for entry in timeline:
        table.add_row(
            _cell(entry.at.isoformat()),
            _cell(entry.key),
            _cell(entry.attempt),
            _cell(_outcome(entry)),
        )
    Console().print(table)


def _outcome(entry: TimelineEntry) -> str:
    if entry.error is not None:
        return f"{entry.error.name}: {entry.error.message}"
    token = entry.token
    if token is None:
        return json.dumps(entry.value)
    if entry.kind == "create_token":
        return f"created {token.id}"
    via = f" via {token.completed_via.value}" if token.completed_via else ""
    return f"{token.id} {token.status.value}{via}: {json.dumps(token.data)}"


@runs_app.command("cancel")
def runs_cancel(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Cancel a run that has not finished."""
    _show(_run(api_url or database, lambda e: e.runs.cancel(run_id)), as_json)


# --- tokens ----------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    timeout: Annotated[str | None, typer.Option("--timeout", help="Like 30s, 1h30m, 7d.")] = None,
    tag: Tags = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """Create a waitpoint token."""

    async def action(engine: Engine) -> Token:
        return await engine.tokens.create(
            timeout=timeout, tags=tag, idempotency_key=idempotency_key
        )

    _show(_run(api_url or database, action), as_json)


@tokens_app.command("list")
def tokens_list(
    status: Statuses = None,
    tag: Tags = None,
    limit: Limit = 25,
    after: After = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """List tokens, newest first."""
    page = _run(
        api_url or database,
        lambda e: e.tokens.list(status=status, tags=tag, limit=limit, after=after),
    )
    _show_page(page, as_json, TOKEN_COLUMNS, "tokens")


@tokens_app.command("get")
def tokens_get(
    token_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show one token."""
    _show(_run(api_url or database, lambda e: e.tokens.retrieve(token_id)), as_json)


@tokens_app.command("complete")
def tokens_complete(
    token_id: str,
    data: Annotated[str | None, typer.Option("--data", help="JSON completion data.")] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """Complete a WAITING token; the runs waiting on it resume with the data."""

    async def action(engine: Engine) -> CompletionResult:
        value = _json_option(data, "--data")
        return await engine.tokens.complete(token_id, value, source=CompletionSource.CLI)

    _show_completion(_run(api_url or database, action), as_json)


@tokens_app.command("cancel")
def tokens_cancel(
    token_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Cancel a WAITING token; runs waiting on it resume with WaitpointCancelledError."""
    _show_completion(
        _run(api_url or database, lambda e: e.tokens.cancel(token_id, source=CompletionSource.CLI)),
        as_json,
    )
