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
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic
import typer

from . import keys
from .client import Engine
from .console import (
    RUN_COLUMNS,
    TOKEN_COLUMNS,
    banner,
    key_line,
    show,
    show_completion,
    show_page,
    show_timeline,
)
from .durations import parse_duration
from .errors import ConfigurationError, EngineError, RunFailedError, ValidationError
from .logs import configure_logging
from .models import (
    CompletionResult,
    CompletionSource,
    Page,
    Run,
    RunStatus,
    TimelineEntry,
    Token,
)
from .registry import TaskDefinition, load_tasks
from .settings import DEFAULT_DATABASE_URL, SECRET_KEY_FILE, Settings
from .storage import display_url
from .worker import Worker

T = TypeVar("T")

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
    import structlog  # late: not for --help

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


# --- workers ---------------------------------------------------------------------------


def _api_settings(host: str, port: int) -> Settings:
    """Settings whose callback URLs point at this server unless WAITPOINT_PUBLIC_URL says else."""
    settings = Settings()
    if "public_url" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"public_url": f"http://{host}:{port}"})


def _load(module: str | None, settings: Settings) -> tuple[str, dict[str, TaskDefinition]]:
    module = module or settings.tasks
    tasks = load_tasks(module)
    if not tasks:
        raise _fail(f"no tasks found in module {module!r}: decorate async functions with @task")
    return module, tasks


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
        from .services import api_server, run_services  # late: other commands start faster

        server, key, created = api_server(engine, host, port)
        banner(
            [
                f"waitpoint dev  database: {display_url(engine.settings.database_url)}",
                f"tasks from {module!r}: {', '.join(sorted(found))}",
                f"API: http://{host}:{port}  (docs at http://{host}:{port}/docs)",
                key_line(key, created, engine.settings),
            ]
        )
        # plain print: a link wrapped at the terminal's width could not be clicked or copied
        print(
            f"dashboard (one-click sign-in, 24h): {_login_link(host, port, key)}", file=sys.stderr
        )
        await run_services(Worker(engine, found), server)

    _run(database, work, settings)


def _login_link(host: str, port: int, key: str) -> str:
    """A sign-in link for this terminal's user: a signed ticket, never the key itself."""
    from .ui import login_link  # late: other commands start faster

    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return login_link(f"http://{local}:{port}", key)


@app.command()
def serve(database: Database = None, host: Host = "127.0.0.1", port: Port = 8030) -> None:
    """Run the REST API alone (workers run elsewhere, on the same database)."""
    with _user_errors():
        settings = _api_settings(host, port)
        configure_logging(settings.log_format)

    async def work(engine: Engine) -> None:
        from .services import api_server, run_services  # late: other commands start faster

        server, key, created = api_server(engine, host, port)
        banner([f"waitpoint API on http://{host}:{port}", key_line(key, created, engine.settings)])
        await run_services(None, server)

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
        from .services import run_services  # late: other commands start faster

        await run_services(Worker(engine, found, concurrency=concurrency), None)

    _run(database, work)


@app.command()
def migrate(database: Database = None) -> None:
    """Create or upgrade the database's schema (workers and the API also do it on start)."""

    async def work(engine: Engine) -> str:
        version = await engine.storage.migrate()
        return f"{display_url(engine.settings.database_url)}: schema version {version}"

    typer.echo(_run(database, work))


@app.command("signing-secret")
def signing_secret() -> None:
    """Print the callback signing secret derived from the secret key.

    For workers that make callback URLs but should not hold the API key: set their
    WAITPOINT_SIGNING_SECRET to it (it signs callback URLs and opens nothing else).
    """
    with _user_errors():
        key = keys.secret_key(Settings(), create=False)
        if key is None:
            raise ConfigurationError(
                f"no secret key: set WAITPOINT_SECRET_KEY, or run this where {SECRET_KEY_FILE}"
                " is (`waitpoint dev` makes it)"
            )
        typer.echo(keys.derive_signing_secret(key.value))


# --- runs ------------------------------------------------------------------------------


@app.command()
def trigger(
    task_id: str,
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    idempotency_key_ttl: Annotated[
        str | None, typer.Option("--idempotency-key-ttl", help="How long the key holds (1h).")
    ] = None,
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
    concurrency_key: Annotated[
        str | None,
        typer.Option("--concurrency-key", help="Its own copy of the queue's limit (a tenant)."),
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
            idempotency_key_ttl=idempotency_key_ttl,
            tags=tag,
            delay=delay,
            ttl=ttl,
            metadata=_json_option(metadata, "--metadata"),
            max_attempts=max_attempts,
            max_duration=max_duration,
            concurrency_key=concurrency_key,
        )
        if not wait:
            return run
        try:
            return await engine.wait_for_run(run.id, timeout=timeout)
        except RunFailedError:
            return await engine.runs.retrieve(run.id)

    run = _run(api_url or database, action)
    show(run, as_json)
    if wait and run.status is not RunStatus.COMPLETED:
        raise _fail(f"run {run.id} ended {run.status.value}")


@runs_app.command("list")
def runs_list(
    status: Statuses = None,
    task: Annotated[str | None, typer.Option("--task", help="Only runs of this task.")] = None,
    tag: Tags = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only runs created in the last 24h, 7d...")
    ] = None,
    limit: Limit = 25,
    after: After = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """List runs, newest first."""

    async def action(engine: Engine) -> Page[Run]:
        start = datetime.now(UTC) - parse_duration(since) if since else None
        return await engine.runs.list(
            status=status, task=task, tags=tag, created_after=start, limit=limit, after=after
        )

    page = _run(api_url or database, action)
    show_page(page, as_json, RUN_COLUMNS, "runs")


@runs_app.command("get")
def runs_get(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show one run and, for people, its timeline (what it did, and how each wait ended)."""

    async def action(engine: Engine) -> tuple[Run, list[TimelineEntry]]:
        return await engine.runs.retrieve(run_id), await engine.runs.timeline(run_id)

    run, timeline = _run(api_url or database, action)
    show(run, as_json)
    if not as_json:
        show_timeline(timeline)


@runs_app.command("timeline")
def runs_timeline(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show what a run did: steps, tokens, waits and how each completion arrived."""
    timeline = _run(api_url or database, lambda e: e.runs.timeline(run_id))
    if as_json:
        print(json.dumps([entry.model_dump(mode="json", by_alias=True) for entry in timeline]))
    else:
        show_timeline(timeline)


@runs_app.command("cancel")
def runs_cancel(
    run_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Cancel a run that has not finished."""
    show(_run(api_url or database, lambda e: e.runs.cancel(run_id)), as_json)


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

    show(_run(api_url or database, action), as_json)


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
    show_page(page, as_json, TOKEN_COLUMNS, "tokens")


@tokens_app.command("get")
def tokens_get(
    token_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Show one token."""
    show(_run(api_url or database, lambda e: e.tokens.retrieve(token_id)), as_json)


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

    show_completion(_run(api_url or database, action), as_json)


@tokens_app.command("link")
def tokens_link(
    token_id: str,
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="How long the link works (at most 30d).")
    ] = "24h",
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
) -> None:
    """Print a one-link approval page URL: whoever opens it can complete this token only."""
    url = _run(api_url or database, lambda e: e.tokens.approval_link(token_id, expires_in))
    print(json.dumps({"url": url}) if as_json else url)


@tokens_app.command("cancel")
def tokens_cancel(
    token_id: str, as_json: AsJson = False, database: Database = None, api_url: ApiUrl = None
) -> None:
    """Cancel a WAITING token; runs waiting on it resume with WaitpointCancelledError."""
    show_completion(
        _run(api_url or database, lambda e: e.tokens.cancel(token_id, source=CompletionSource.CLI)),
        as_json,
    )
