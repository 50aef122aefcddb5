"""``waitpoint``: run workers, trigger runs, and inspect or complete tokens from a shell.

Every command is a thin shell over the ``Engine`` facade, so the CLI can do nothing that
Python code cannot. Errors a user can fix (an unknown id, bad JSON, a bad duration) end the
command with exit code 1 and one ``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from .cli_words import Typer, in_cli_words, option_names, optional_values
from .defaults import DEFAULT_DATABASE_URL, LIVE_LEASES
from .durations import parse_duration, to_timedelta
from .errors import ConfigurationError, EngineError, RunFailedError, ValidationError
from .logs import configure_logging

if TYPE_CHECKING:  # the rest loads where a command uses it: --help reads only the above
    from .client import Engine
    from .keys import SecretKey
    from .models import (
        Approval,
        BulkResult,
        CompletionResult,
        Page,
        PurgeCount,
        RateLimitWait,
        Run,
        Schedule,
        TaskState,
        TimelineEntry,
        Token,
    )
    from .options import BatchItem, Debounce, TriggerOptions
    from .registry import TaskDefinition
    from .services import APIServer
    from .settings import Settings

T = TypeVar("T")

app = Typer(
    no_args_is_help=True,
    add_completion=True,
    help="Waitpoint: durable runs for Python asyncio.",
)
runs_app = Typer(no_args_is_help=True, help="List, inspect, cancel, pause and resume runs.")
tokens_app = Typer(no_args_is_help=True, help="Create, inspect, complete and cancel tokens.")
tasks_app = Typer(no_args_is_help=True, help="Pause and resume tasks on every worker.")
schedules_app = Typer(
    no_args_is_help=True, help="Create, list, change, switch and delete cron schedules."
)
app.add_typer(runs_app, name="runs")
app.add_typer(tokens_app, name="tokens")
app.add_typer(tasks_app, name="tasks")
approvals_app = Typer(
    no_args_is_help=True, help="List approvals, vote, hand out voting links, print receipts."
)
app.add_typer(schedules_app, name="schedules")
app.add_typer(approvals_app, name="approvals")

Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help=f"Database URL (default: $WAITPOINT_DATABASE_URL, else {DEFAULT_DATABASE_URL}).",
        show_default=False,
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        metavar="URL",
        help="Use the REST API at this URL instead of a database (default: $WAITPOINT_API_URL).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="The API's secret key, for --api-url (default: $WAITPOINT_SECRET_KEY, which keeps"
        " it out of the process list).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Tags = Annotated[
    list[str] | None,
    typer.Option("--tag", metavar="TAG", help="Tag it (repeat for several, at most 10)."),
]
TagFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--tag",
        metavar="TAG",
        help="Only those with this tag; repeated, those with any of the tags"
        " (--tag a --tag b: tagged a, b or both).",
    ),
]
Statuses = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        metavar="STATUS",
        help="Only those in this status; repeated, in any of them.",
    ),
]
TaskFilter = Annotated[
    str | None, typer.Option("--task", metavar="TASK_ID", help="Only runs of this task.")
]
Limit = Annotated[int, typer.Option("--limit", metavar="N", help="Page size (1-100).")]
After = Annotated[
    str | None, typer.Option("--after", metavar="CURSOR", help="Cursor from the previous page.")
]
Host = Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address the API listens on.")]
Port = Annotated[
    int, typer.Option("--port", min=1, max=65535, metavar="PORT", help="Port the API listens on.")
]
TasksModule = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        metavar="MODULE",
        help="Module with @task functions (default: $WAITPOINT_TASKS, else tasks).",
        show_default=False,
    ),
]
TaskId = Annotated[
    str, typer.Argument(metavar="TASK_ID", help='The task\'s id, as in @task("...").')
]
RunId = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id (run_...).")]
TokenId = Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The token's id (waitpoint_...).")]
Duration = "DURATION"
"""The metavar of a duration option: 30s, 10m, 1h30m, 7d."""
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only count the runs the filters match.")]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        "--created-after",
        metavar=Duration,
        help="Only runs created in the last 24h, 7d...",
    ),
]
WorkerVersion = Annotated[
    str | None,
    typer.Option(
        "--version",
        metavar="VERSION",
        help="The version of the task code (default: $WAITPOINT_VERSION): runs started here"
        " record it, and only runs of it or of none are claimed; @task(version=) wins.",
        show_default=False,
    ),
]


def main() -> None:
    """Entry point of the ``waitpoint`` console script."""
    app()


def _version(shown: bool) -> None:
    if shown:
        from importlib import metadata  # late: only --version reads it

        try:
            version = metadata.version("waitpoint")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        typer.echo(f"waitpoint {version}")
        raise typer.Exit()


@app.callback()
def _setup(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Keep stdout for results: engine log lines go to stderr, warnings only.

    The previous structlog set-up comes back when the command ends, so invoking the CLI
    in-process (tests, scripts) leaves the caller's logging as it was.
    """
    try:  # relative paths (the default database, its key, the tasks module) start from it
        os.getcwd()
    except FileNotFoundError:
        raise _fail("the working directory no longer exists: cd to one that does") from None

    if "--help" in sys.argv[1:]:  # `waitpoint runs list --help`: help only, no log to set up
        return
    import structlog  # late: importing it would double the time --help takes

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
    import pydantic

    try:
        yield
    except Exception as raised:
        exc = _innermost(raised)
        if isinstance(exc, EngineError | json.JSONDecodeError):
            raise _fail(_cli_words(str(exc))) from None
        if isinstance(exc, pydantic.ValidationError):
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise _fail(f"invalid WAITPOINT_* setting: {problems}") from None
        if isinstance(exc, OSError):  # the environment (a file, the network), not a bug
            where = f": {exc.filename}" if exc.filename else ""
            raise _fail(f"{exc.strerror or exc}{where}") from None
        raise


def _cli_words(message: str) -> str:
    """The engine's message with the options named as the CLI spells them (``cli_words``)."""
    return in_cli_words(message, option_names(typer.main.get_command(app)))


def _run(
    database: str | None,
    action: Callable[[Engine], Awaitable[T]],
    settings: Settings | None = None,
    *,
    api_key: str | None = None,
) -> T:
    """Run ``action`` on an Engine opened for this one command (``api_key``: --api-key)."""

    import asyncio

    from .client import Engine

    async def body() -> T:
        async with Engine(database, api_key=api_key, settings=settings) as engine:
            return await action(engine)

    with _user_errors():
        return asyncio.run(body())


def _created_since(since: str | None) -> datetime | None:
    """The moment ``--since`` (a duration back from now) names, or None without it."""
    text = _duration_option(since, "--since")
    return datetime.now(UTC) - parse_duration(text) if text else None


def _duration_option(text: str | None, option: str) -> str | None:
    """A duration option as given, once it reads as one; the message names the option."""
    if text is not None:
        try:
            to_timedelta(text)
        except ValidationError as exc:
            raise ValidationError(f"{option}: {exc}") from None
    return text


def _json_option(text: str | None, option: str) -> Any:
    """Parse a JSON option; the message names the option, which the bare decode error cannot."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{option} is not valid JSON: {exc}") from None


# --- output ----------------------------------------------------------------------------


def _note_unserved(reason: str | None, then: str) -> None:
    """``note: no live worker serves task 'boom' (last seen 3 min ago): <then>`` on stderr."""
    if reason is not None:
        print(f"note: {reason}: {then}", file=sys.stderr)


# --- workers ---------------------------------------------------------------------------


def _local_url(host: str, port: int) -> str:
    """Where this machine reaches a server listening on ``host:port``."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _api_settings(host: str, port: int) -> Settings:
    """Settings whose callback URLs point at this server unless WAITPOINT_PUBLIC_URL says else."""
    from .settings import Settings

    settings = Settings()
    if settings.public_url:
        return settings
    return settings.model_copy(update={"public_url": _local_url(host, port)})


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts (``services.listen``)."""
    from .services import listen  # late: other commands start faster

    return listen(host, port)


async def _start_api(engine: Engine, listener: socket.socket) -> tuple[APIServer, SecretKey]:
    """The API server on ``listener``, its public URL recorded in the database: every process
    of the database that is not told another one makes its callback URLs and approval links
    on it (``Storage.load_public_url``)."""
    from .services import api_server  # late: other commands start faster

    server, key = api_server(engine, listener)
    public_url = engine.settings.public_url
    assert public_url is not None  # _api_settings always gives one
    await engine.storage.record_public_url(public_url)
    return server, key


def _api_lines(engine: Engine, host: str, port: int, key: SecretKey) -> list[str]:
    from .console import key_line

    url = _local_url(host, port)
    lines = [f"API: {url}  (docs at {url}/docs)"]
    if engine.settings.public_url != url:
        lines.append(f"public URL (callback URLs, approval links): {engine.settings.public_url}")
    return [*lines, key_line(key)]


def _load(module: str | None, settings: Settings) -> tuple[str, dict[str, TaskDefinition]]:
    from .registry import load_tasks

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
    version: WorkerVersion = None,
) -> None:
    """Run a worker and the API for local development, with readable logs."""
    from .console import banner
    from .storage import display_url
    from .worker import Worker

    with _user_errors():
        settings = _api_settings(host, port)
        configure_logging("console")
        module, found = _load(tasks, settings)
        listener = _listen(host, port)

    async def work(engine: Engine) -> None:
        from .services import run_services  # late: other commands start faster

        server, key = await _start_api(engine, listener)
        banner(
            [
                f"waitpoint dev  database: {display_url(engine.settings.database_url)}",
                f"tasks from {module!r}: {', '.join(sorted(found))}",
                *_api_lines(engine, host, port, key),
            ]
        )
        # plain print: a link wrapped at the terminal's width could not be clicked or copied
        print(
            f"dashboard (one-click sign-in, 24h): {_login_link(host, port, key.value)}",
            file=sys.stderr,
        )
        await run_services(Worker(engine, found, version=version), server)

    with listener:
        _run(database, work, settings)


def _login_link(host: str, port: int, key: str) -> str:
    """A sign-in link for this terminal's user: a signed ticket, never the key itself."""
    from .signing import login_link

    return login_link(_local_url(host, port), key)


@app.command()
def serve(database: Database = None, host: Host = "127.0.0.1", port: Port = 8030) -> None:
    """Run the REST API alone (workers run elsewhere, on the same database)."""
    from .console import banner
    from .storage import display_url

    with _user_errors():
        settings = _api_settings(host, port)
        configure_logging(settings.log_format)
        listener = _listen(host, port)

    async def work(engine: Engine) -> None:
        from .services import run_services  # late: other commands start faster

        server, key = await _start_api(engine, listener)
        database_url = display_url(engine.settings.database_url)
        banner([f"waitpoint API  database: {database_url}", *_api_lines(engine, host, port, key)])
        await run_services(None, server)

    with listener:
        _run(database, work, settings)


@app.command()
def worker(
    tasks: TasksModule = None,
    database: Database = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, metavar="N", help="Attempts run at once."),
    ] = None,
    version: WorkerVersion = None,
    retention: Annotated[
        str | None,
        typer.Option(
            "--retention",
            metavar=Duration,
            help="Delete finished runs and closed tokens older than this, in small batches"
            " (default: $WAITPOINT_RETENTION, else none).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a worker: claim queued runs of the loaded tasks until SIGINT/SIGTERM."""
    from .settings import Settings
    from .worker import Worker

    with _user_errors():
        settings = Settings()
        configure_logging(settings.log_format)
        _duration_option(retention, "--retention")
        _, found = _load(tasks, settings)

    async def work(engine: Engine) -> None:
        from .services import run_services  # late: other commands start faster

        worker = Worker(
            engine, found, concurrency=concurrency, version=version, retention=retention
        )
        await run_services(worker, None)

    _run(database, work)


@app.command()
def migrate(database: Database = None) -> None:
    """Create or upgrade the database's schema (workers and the API also do it on start)."""

    from .storage import display_url

    async def work(engine: Engine) -> str:
        version = await engine.storage.migrate()
        return f"{display_url(engine.settings.database_url)}: schema version {version}"

    typer.echo(_run(database, work))


@app.command("signing-secret")
def signing_secret(database: Database = None) -> None:
    """Print the callback signing secret derived from the secret key.

    For workers that make callback URLs but should not hold the API key: set their
    WAITPOINT_SIGNING_SECRET to it (it signs callback URLs and opens nothing else).
    """
    from . import keys
    from .settings import Settings

    with _user_errors():
        settings = Settings()
        if database:
            settings = settings.model_copy(update={"database_url": database})
        key = keys.secret_key(settings, create=False)
        if key is None:
            raise ConfigurationError(
                "no secret key: set WAITPOINT_SECRET_KEY, or start `waitpoint dev` on this"
                f" database once (it keeps its key in {keys.key_file(settings)})"
            )
        typer.echo(keys.derive_signing_secret(key.value))


LIVE_RULE = (
    "A worker records a heartbeat with its lease renewals, every third of its lease"
    " (WAITPOINT_LEASE_SECONDS, 30 s by default). It is live while its last heartbeat is"
    f" younger than {LIVE_LEASES} lease periods (90 s by default) and it has not stopped: one"
    " that stops cleanly leaves the list at once, a killed one once its heartbeat is that old."
)


@app.command(
    "workers",
    help=f"List the live workers: their tasks, the attempts they run of"
    f" their concurrency, and their last heartbeat.\n\n{LIVE_RULE}",
)
def workers_list(
    include_gone: Annotated[
        bool,
        typer.Option("--all", help="Also workers that stopped or fell silent in the last week."),
    ] = False,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    from .console import show_workers

    found = _run(
        api_url or database, lambda e: e.workers.list(include_gone=include_gone), api_key=api_key
    )
    show_workers(found, as_json=as_json, include_gone=include_gone)


@app.command()
def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar=Duration,
            help="Delete what finished or closed longer ago than this: 30d, 12h.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Delete finished runs (with their journals and events) and closed tokens older than
    --older-than, in batches; what WAITPOINT_RETENTION makes every worker do.

    Kept however old: a run whose parent or child has not finished, or that an unfinished run
    waits on; a token an unfinished run waits on or made.
    """

    from .console import ProgressReport

    async def action(engine: Engine) -> PurgeCount:
        age = _duration_option(older_than, "--older-than")
        assert age is not None  # the option is required
        return await engine.purge(age, dry_run=dry_run, progress=progress)

    with ProgressReport("deleted", quiet=as_json) as progress:
        done = _run(api_url or database, action, api_key=api_key)
    what = f"{done.runs} finished runs and {done.tokens} closed tokens"
    if as_json:
        print(json.dumps({"runs": done.runs, "tokens": done.tokens, "dryRun": dry_run}))
    elif dry_run:
        print(f"{what} are older than {older_than}; --dry-run: none deleted")
    else:
        print(f"deleted {what} older than {older_than}")


WATCH_SECONDS = 2.0
"""How often ``waitpoint stats --watch`` reads the figures when given no SECONDS."""


@app.command(cls=optional_values(watch=f"{WATCH_SECONDS:g}"))
def stats(
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            min=0.1,
            metavar="[SECONDS]",
            help=f"Read them again every SECONDS ({WATCH_SECONDS:g} if left out), in place,"
            " until Ctrl-C; with --json, one object a line.",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Runs by task and status, each queue's depth and the age of its oldest due run,
    waiting tokens and approvals, and live workers: the database's figures now, the ones
    the API serves to Prometheus at /metrics (WAITPOINT_METRICS=1)."""
    from .console import StatsWatch, show_stats

    target = api_url or database
    if watch is None:
        show_stats(_run(target, lambda e: e.stats(), api_key=api_key), as_json)
        return
    seconds = watch

    async def follow(engine: Engine) -> None:
        import asyncio

        with StatsWatch(as_json) as show:
            while True:
                show(await engine.stats())
                await asyncio.sleep(seconds)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it ends
        _run(target, follow, api_key=api_key)


# --- runs ------------------------------------------------------------------------------


@app.command()
def trigger(
    task_id: TaskId,
    payload: Annotated[
        str | None,
        typer.Option(
            "--payload",
            metavar="JSON",
            help="The run's payload, as JSON (a task with a typed payload needs one).",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Trigger once per key: a repeat returns the run the first one made.",
        ),
    ] = None,
    idempotency_key_ttl: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key-ttl", metavar=Duration, help="How long the key holds (1h)."
        ),
    ] = None,
    tag: Tags = None,
    delay: Annotated[
        str | None,
        typer.Option("--delay", metavar=Duration, help="Start no sooner than this (10m, 1h)."),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", metavar=Duration, help="Expire if not started within this (1h)."),
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option("--metadata", metavar="JSON", help="A JSON object kept on the run."),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            metavar="N",
            help="Attempts before the run fails (default: the task's retry policy).",
        ),
    ] = None,
    max_duration: Annotated[
        str | None,
        typer.Option(
            "--max-duration", metavar=Duration, help="Executing time allowed (10m; waits are free)."
        ),
    ] = None,
    concurrency_key: Annotated[
        str | None,
        typer.Option(
            "--concurrency-key",
            metavar="KEY",
            help="Its own copy of the queue's limit (a tenant).",
        ),
    ] = None,
    debounce: Annotated[
        str | None,
        typer.Option(
            "--debounce",
            metavar="KEY",
            help="Collapse the triggers with this key into one run (with --debounce-delay).",
        ),
    ] = None,
    debounce_delay: Annotated[
        str | None,
        typer.Option(
            "--debounce-delay",
            metavar=Duration,
            help="The run starts once triggers with its key pause this long (5s).",
        ),
    ] = None,
    debounce_mode: Annotated[
        str | None,
        typer.Option(
            "--debounce-mode",
            metavar="leading|trailing",
            help="Whose data the run keeps: the first trigger's (default) or the last's.",
        ),
    ] = None,
    debounce_max_delay: Annotated[
        str | None,
        typer.Option(
            "--debounce-max-delay",
            metavar=Duration,
            help="Push the run back no later than this after its first trigger.",
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="FILE",
            help='A run per line, in one transaction: JSON Lines of {"payload": ...,'
            ' "options": {...}} (the REST API\'s option names; - for stdin).',
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            metavar="SECONDS",
            help="Claimed as if queued this many seconds earlier (0 to 2073600).",
        ),
    ] = None,
    rate_limit_key: Annotated[
        str | None,
        typer.Option(
            "--rate-limit-key",
            metavar="KEY",
            help="Its own bucket of the queue's rate limit (a tenant).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to finish.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", metavar="SECONDS", help="Seconds to --wait at most."),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Queue a run of TASK_ID (a worker must have registered it); with --file, a run per line.

    With --file, --tag, --delay, --ttl, --metadata, --max-attempts, --max-duration and
    --concurrency-key apply to every line that does not set its own; all the runs are made
    in one transaction, or none (a bad line: an error naming it), and their ids are printed
    one a line, in the order of the lines.
    """

    from .console import show
    from .models import RunStatus
    from .options import TriggerOptions

    if file is not None:
        singles = {
            "--payload": payload,
            "--idempotency-key": idempotency_key,
            "--idempotency-key-ttl": idempotency_key_ttl,
            "--debounce": debounce,
            "--debounce-delay": debounce_delay,
            "--debounce-mode": debounce_mode,
            "--debounce-max-delay": debounce_max_delay,
            "--wait": wait or None,
            "--timeout": timeout,
        }
        for name, value in singles.items():
            if value is not None:
                raise _fail(f"{name} applies to one run, not to --file: put it in each line")
        with _user_errors():
            shared = TriggerOptions(
                tags=tag,
                delay=_duration_option(delay, "--delay"),
                ttl=_duration_option(ttl, "--ttl"),
                metadata=_json_option(metadata, "--metadata"),
                max_attempts=max_attempts,
                max_duration=_duration_option(max_duration, "--max-duration"),
                concurrency_key=concurrency_key,
                priority=priority,
                rate_limit_key=rate_limit_key,
            )
            items, lines = _batch_lines(file, shared)
        _trigger_file(task_id, file, items, lines, as_json, api_url or database, api_key)
        return

    async def action(engine: Engine) -> Run:
        if timeout is not None and not wait:
            raise ValidationError("--timeout only applies with --wait")
        try:
            run = await engine.trigger(
                task_id,
                _json_option(payload, "--payload"),
                idempotency_key=idempotency_key,
                idempotency_key_ttl=_duration_option(idempotency_key_ttl, "--idempotency-key-ttl"),
                tags=tag,
                delay=_duration_option(delay, "--delay"),
                ttl=_duration_option(ttl, "--ttl"),
                metadata=_json_option(metadata, "--metadata"),
                max_attempts=max_attempts,
                max_duration=_duration_option(max_duration, "--max-duration"),
                concurrency_key=concurrency_key,
                debounce=_debounce_options(
                    debounce, debounce_delay, debounce_mode, debounce_max_delay
                ),
                priority=priority,
                rate_limit_key=rate_limit_key,
            )
        except ValidationError as exc:
            if payload is None and "payload" in str(exc):
                raise _payload_needed(task_id, str(exc)) from None
            raise
        if not wait:
            return run
        if timeout is None:  # with one, the error at the end says why the run did not start
            _note_unserved(await engine.workers.unserved(run), "the run waits until one starts")
        try:
            return await engine.wait_for_run(run.id, timeout=timeout)
        except RunFailedError:
            return await engine.runs.retrieve(run.id)

    run = _run(api_url or database, action, api_key=api_key)
    show(run, as_json)
    if wait and run.status is not RunStatus.COMPLETED:
        raise _fail(f"run {run.id} ended {run.status.value}")


def _debounce_options(
    key: str | None, delay: str | None, mode: str | None, max_delay: str | None
) -> Debounce | None:
    """--debounce and its companions as a ``Debounce``; the messages name the options."""
    from .options import Debounce

    if key is None:
        given = [
            name
            for name, value in (
                ("--debounce-delay", delay),
                ("--debounce-mode", mode),
                ("--debounce-max-delay", max_delay),
            )
            if value is not None
        ]
        if given:
            raise ValidationError(f"{given[0]} needs --debounce KEY")
        return None
    if delay is None:
        raise ValidationError("--debounce needs --debounce-delay (how long triggers must pause)")
    if mode not in (None, "leading", "trailing"):
        raise ValidationError(f"--debounce-mode must be leading or trailing, not {mode!r}")
    return Debounce(
        key,
        _duration_option(delay, "--debounce-delay") or delay,
        "trailing" if mode == "trailing" else "leading",
        _duration_option(max_delay, "--debounce-max-delay"),
    )


def _trigger_file(
    task_id: str,
    path: str,
    items: list[BatchItem],
    lines: list[int],
    as_json: bool,
    target: str | None,
    api_key: str | None,
) -> None:
    """``trigger --file``: the lines' items in one ``batch_trigger``; the engine's refusal of
    an item names its line (``lines``: the line of each item)."""

    async def action(engine: Engine) -> list[Run]:
        try:
            return await engine.batch_trigger(task_id, items)
        except ValidationError as exc:
            index, found, rest = str(exc).partition(": ")
            if found and index.startswith("item ") and index[5:].isdigit():
                raise ValidationError(f"{path} line {lines[int(index[5:])]}: {rest}") from None
            raise

    runs = _run(target, action, api_key=api_key)
    if as_json:
        data = [{**r.model_dump(mode="json", by_alias=True), "isCached": r.is_cached} for r in runs]
        print(json.dumps({"data": data}))
        return
    for run in runs:
        print(run.id)


def _batch_lines(path: str, shared: TriggerOptions) -> tuple[list[BatchItem], list[int]]:
    """The items of a JSON Lines file (``-``: standard input), each line's options over the
    ``shared`` ones, and the number of each item's line (blank lines are skipped). A line is
    an item of ``POST /api/v1/tasks/batch``: its options go through the same conversion."""
    from pydantic import ValidationError as PydanticError

    from .api.problems import Problem
    from .api.runs import WireTriggerOptions, decode_payload

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"--file: cannot read {path}: {exc.strerror or exc}") from None
    items: list[BatchItem] = []
    numbers: list[int] = []
    defaults = {name: value for name, value in shared.items() if value is not None}
    known = set(WireTriggerOptions.model_fields)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ValidationError(f'{where}: a line is {{"payload": ..., "options": {{...}}}}')
        unknown = sorted(set(item) - {"payload", "options", "task"})
        if unknown:
            raise ValidationError(
                f"{where}: unknown key {unknown[0]!r}"
                ' (a line is {"payload": ..., "options": {...}}, perhaps with "task")'
            )
        wire = item.get("options") or {}
        if not isinstance(wire, dict):
            raise ValidationError(f"{where}: options must be a JSON object")
        strange = sorted(set(wire) - known)
        if strange:
            raise ValidationError(f"{where}: unknown option {strange[0]!r}")
        try:
            options = WireTriggerOptions.model_validate(wire)
            payload = decode_payload(item.get("payload"), options.payloadType)
            own = {k: v for k, v in options.options().items() if v is not None}
        except PydanticError as exc:
            error = exc.errors()[0]
            at = ".".join(str(p) for p in error["loc"])
            raise ValidationError(f"{where}: options.{at}: {error['msg']}") from None
        except Problem as exc:
            raise ValidationError(f"{where}: {exc.message}") from None
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        merged = cast("TriggerOptions", {**defaults, **own})
        entry: BatchItem = {"payload": payload, "options": merged}
        if "task" in item:
            entry["task"] = item["task"]
        items.append(entry)
        numbers.append(number)
    if not items:
        raise ValidationError(f"--file: {path} holds no runs (one JSON object a line)")
    return items, numbers


_JSON_KINDS = {"object": "a JSON object", "array": "a JSON array"}


def _payload_needed(task_id: str, refusal: str) -> ValidationError:
    """A task's schema refused the missing payload: say that one is needed, and how."""
    said = refusal.replace('"', "'")
    kind = next((k for t, k in _JSON_KINDS.items() if f"type '{t}'" in said), "JSON")
    return ValidationError(f"task {task_id!r} needs a payload: pass --payload with {kind}")


@runs_app.command("list")
def runs_list(
    status: Statuses = None,
    task: TaskFilter = None,
    tag: TagFilter = None,
    since: Since = None,
    version: Annotated[
        str | None,
        typer.Option("--version", metavar="VERSION", help="Only runs of this version."),
    ] = None,
    limit: Limit = 25,
    after: After = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List runs, newest first.

    Filters of different options all apply (--status QUEUED --tag a: queued and tagged a);
    a repeated option matches any of its values.
    """

    from .console import RUN_COLUMNS, show_page

    async def action(engine: Engine) -> Page[Run]:
        start = _created_since(since)
        return await engine.runs.list(
            status=status,
            task=task,
            tags=tag,
            created_after=start,
            version=version,
            limit=limit,
            after=after,
        )

    page = _run(api_url or database, action, api_key=api_key)
    columns = RUN_COLUMNS  # and since when a run was paused, on a page that has one
    if any(run.paused_at is not None for run in page.data):
        columns = {**RUN_COLUMNS, "pausedAt": "paused"}
    show_page(page, as_json, columns, "runs")


@runs_app.command("check")
def runs_check(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[RUN_ID]...", help="Runs to check (default: by the filters)."),
    ] = None,
    tasks: TasksModule = None,
    status: Statuses = None,
    task: TaskFilter = None,
    as_json: AsJson = False,
    database: Database = None,
) -> None:
    """Replay runs against the code of --tasks (new code) without running or writing anything.

    Without RUN_IDs, checks the runs the filters match (default: --status WAITING, the runs
    that resume on the new code). Prints ok or the first divergence of each run; exits 1 if
    any run diverges. Check, patch what diverges (patched()), then deploy.
    """
    from .replay_check import ReplayReport, check_replay
    from .settings import Settings

    settings = Settings()
    _, definitions = _load(tasks, settings)

    async def action(engine: Engine) -> list[ReplayReport]:
        ids = run_ids or await engine.runs.ids(status=status or ["WAITING"], task=task)
        return await check_replay(engine, ids, tasks=definitions)

    reports = _run(database, action, settings)
    if as_json:
        print(json.dumps([{**vars(r), "verdict": r.verdict} for r in reports]))
    else:
        for report in reports:
            done = f"ok ({report.replayed} calls replayed)" if report.ok else report.verdict
            print(f"{report.run_id}  {report.task_id}  {'' if report.ok else 'DIVERGES: '}{done}")
        if not reports:
            print("no run to check", file=sys.stderr)
    if any(not report.ok for report in reports):
        raise typer.Exit(1)


@runs_app.command("get")
def runs_get(
    run_id: RunId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show one run and, for people, its timeline (what it did, and how each wait ended)."""

    from .console import show
    from .models import RunStatus

    async def action(
        engine: Engine,
    ) -> tuple[Run, list[TimelineEntry], str | None, RateLimitWait | None]:
        run = await engine.runs.retrieve(run_id)
        unserved = await engine.workers.unserved(run)
        limited = None
        if unserved is None and run.status is RunStatus.QUEUED:
            limited = await engine.runs.rate_limit_wait(run_id)
        return run, await engine.runs.timeline(run_id), unserved, limited

    run, timeline, unserved, limited = _run(api_url or database, action, api_key=api_key)
    show(run, as_json, timeline)
    _note_unserved(unserved, "the run stays QUEUED until one starts")
    if limited is not None:
        _note_unserved(limited.reason, "the run stays QUEUED until its bucket has a token")


@runs_app.command("timeline")
def runs_timeline(
    run_id: RunId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show what a run did: steps, tokens, waits and how each completion arrived."""
    from .console import show_timeline

    timeline = _run(api_url or database, lambda e: e.runs.timeline(run_id), api_key=api_key)
    if as_json:
        print(json.dumps([entry.model_dump(mode="json", by_alias=True) for entry in timeline]))
    else:
        show_timeline(timeline)


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[
        str | None,
        typer.Argument(metavar="RUN_ID", help="The run's id; or filters, to cancel many."),
    ] = None,
    status: Statuses = None,
    task: TaskFilter = None,
    tag: TagFilter = None,
    since: Since = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a run that has not finished, or every unfinished run the filters match.

    With filters (--status, --task, --tag, --since) instead of RUN_ID, prints how many runs
    match and cancels them in batches; running it again cancels nothing more.
    """
    _one_or_matching(
        "cancel", run_id, status, task, tag, since, dry_run, as_json, database, api_url, api_key
    )


def _one_or_matching(
    verb: str,
    run_id: str | None,
    status: list[str] | None,
    task: str | None,
    tag: list[str] | None,
    since: str | None,
    dry_run: bool,
    as_json: bool,
    database: str | None,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """``runs cancel`` and ``runs retry``: one run by its id, or every run the filters match
    (counted, then acted on in batches, with a progress bar, or a line a batch off a
    terminal)."""
    from .console import ProgressReport, show

    done_word, kind = {"cancel": ("canceled", "unfinished"), "retry": ("retried", "failed")}[verb]
    filtered = bool(status or task or tag or since)
    if run_id is not None:
        if filtered or dry_run:
            raise _fail("pass either RUN_ID or filters (--status, --task, --tag, --since)")
        one = run_id

        async def act_on_one(engine: Engine) -> Run:
            return await (engine.runs.cancel if verb == "cancel" else engine.runs.retry)(one)

        show(_run(api_url or database, act_on_one, api_key=api_key), as_json)
        return
    if not filtered:
        raise _fail(
            f"pass RUN_ID, or filters (--status, --task, --tag, --since) to {verb} every"
            f" {kind} run they match"
        )

    async def action(engine: Engine) -> BulkResult:
        act = engine.runs.cancel_matching if verb == "cancel" else engine.runs.retry_matching
        return await act(
            status=status,
            task=task,
            tags=tag,
            created_after=_created_since(since),
            dry_run=dry_run,
            progress=progress,
        )

    with ProgressReport(done_word, quiet=as_json) as progress:
        done = _run(api_url or database, action, api_key=api_key)
    if as_json:
        print(json.dumps({"matched": done.matched, done_word: done.changed, "dryRun": dry_run}))
    elif dry_run:
        print(f"{done.matched} {kind} runs match; --dry-run: none {done_word}")
    else:
        print(f"{done_word} {done.changed} of the {done.matched} {kind} runs that matched")


@runs_app.command("retry")
def runs_retry(
    run_id: Annotated[
        str | None,
        typer.Argument(metavar="RUN_ID", help="The run's id; or filters, to retry many."),
    ] = None,
    status: Statuses = None,
    task: TaskFilter = None,
    tag: TagFilter = None,
    since: Since = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Retry a FAILED, CRASHED or TIMED_OUT run from its journal, or every such run the
    filters match.

    Its journaled steps do not run again; the step that failed it does. With filters
    (--status, --task, --tag, --since) instead of RUN_ID, prints how many runs match and
    retries them in batches; running it again retries only runs that failed since.
    """
    _one_or_matching(
        "retry", run_id, status, task, tag, since, dry_run, as_json, database, api_url, api_key
    )


@runs_app.command("send")
def runs_send(
    run_id: RunId,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="What receive(TOPIC) waits for.")],
    data: Annotated[
        str | None, typer.Option("--data", metavar="JSON", help="The message's data, as JSON.")
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Send a message to a run: its next receive(TOPIC) gets it (kept until then, in order)."""

    async def action(engine: Engine) -> int:  # a bad --data is an error line, as others
        return await engine.runs.send(run_id, topic, _json_option(data, "--data"))

    number = _run(api_url or database, action, api_key=api_key)
    if as_json:
        print(json.dumps({"runId": run_id, "topic": topic, "n": number}))
    else:
        print(f"sent message {number} on {topic!r} to run {run_id}")


@runs_app.command("replay")
def runs_replay(
    run_id: RunId,
    payload: Annotated[
        str | None,
        typer.Option(
            "--payload", metavar="JSON", help="A new payload, as JSON (default: the run's)."
        ),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Run the task again as a new run, with the run's payload (or --payload): everything
    runs anew. The new run names the original (and the original the new one)."""
    from .console import show

    async def action(engine: Engine) -> Run:  # a bad --payload is an error line, as others
        return await engine.runs.replay(run_id, _json_option(payload, "--payload"))

    show(_run(api_url or database, action, api_key=api_key), as_json)


@runs_app.command("fork")
def runs_fork(
    run_id: RunId,
    from_step: Annotated[
        str,
        typer.Option(
            "--from-step",
            metavar="STEP",
            help="The step to run anew from (its name, or a journal key: step:notify#1).",
        ),
    ],
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A new run that replays the run's journal up to STEP and runs anew from there."""
    from .console import show

    run = _run(
        api_url or database, lambda e: e.runs.fork(run_id, from_step=from_step), api_key=api_key
    )
    show(run, as_json)


@runs_app.command("pause")
def runs_pause(
    run_id: RunId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Keep workers from claiming a run until `runs resume`.

    An attempt executing now finishes its work as usual: the run is held once it waits,
    retries or is handed back. A waiting run still records what completes, but does not
    start again until resumed.
    """
    from .console import show

    show(_run(api_url or database, lambda e: e.runs.pause(run_id), api_key=api_key), as_json)


@runs_app.command("resume")
def runs_resume(
    run_id: RunId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Let workers claim a paused run again (a queued one starts at once)."""
    from .console import show

    show(_run(api_url or database, lambda e: e.runs.resume(run_id), api_key=api_key), as_json)


# --- tasks -----------------------------------------------------------------------------


def _show_task(state: TaskState, as_json: bool) -> None:
    """The task's state as JSON, or one sentence saying what now holds for its runs."""
    if as_json:
        print(state.model_dump_json(by_alias=True))
    elif state.paused_at is not None:
        print(
            f"task {state.task_id} paused since {state.paused_at.isoformat()}: no worker"
            f" starts its runs until `waitpoint tasks resume {state.task_id}`"
        )
    else:
        print(f"task {state.task_id} is not paused: workers start its runs")


@tasks_app.command("pause")
def tasks_pause(
    task_id: TaskId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Stop new claims of TASK_ID's runs on every worker (an incident switch).

    Attempts running now go on; the task's runs are still triggered, queued and completed,
    but none starts until `tasks resume`.
    """
    _show_task(
        _run(api_url or database, lambda e: e.tasks.pause(task_id), api_key=api_key), as_json
    )


@tasks_app.command("resume")
def tasks_resume(
    task_id: TaskId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Let workers claim TASK_ID's runs again, at once."""
    state = _run(api_url or database, lambda e: e.tasks.resume(task_id), api_key=api_key)
    _show_task(state, as_json)


@tasks_app.command("paused")
def tasks_paused(
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List the paused tasks."""
    from .console import show_page
    from .models import Page

    found = _run(api_url or database, lambda e: e.tasks.paused(), api_key=api_key)
    show_page(
        Page(data=found), as_json, {"taskId": "task", "pausedAt": "paused since"}, "paused tasks"
    )


@runs_app.command("migrate")
def runs_migrate(
    run_id: RunId,
    to: Annotated[
        str,
        typer.Option("--to", metavar="VERSION", help="The version to move the run to (v42)."),
    ],
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Move an unfinished run to another version of its task.

    Only workers serving that version claim it from then on, and it resumes by replaying its
    journal on their code: check that code first (waitpoint runs check RUN_ID --tasks ...)
    and give its changes to durable calls a patched() branch.
    """
    from .console import show

    async def action(engine: Engine) -> tuple[Run, str | None]:
        run = await engine.runs.migrate(run_id, to=to)
        return run, await engine.workers.unserved(run)

    run, unserved = _run(api_url or database, action, api_key=api_key)
    show(run, as_json)
    _note_unserved(unserved, "the run stays QUEUED until one starts")


# --- schedules -------------------------------------------------------------------------

ScheduleId = Annotated[str, typer.Argument(metavar="SCHEDULE_ID", help="The schedule's id.")]
CronOption = Annotated[
    str | None,
    typer.Option(
        "--cron",
        metavar="EXPRESSION",
        help="When it ticks: '0 9 * * MON-FRI' (minute hour day month weekday; a sixth"
        " field first for seconds).",
    ),
]
TimezoneOption = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        metavar="ZONE",
        help="The IANA time zone the expression is read in (Europe/Berlin; default UTC).",
    ),
]
SchedulePayload = Annotated[
    str | None,
    typer.Option("--payload", metavar="JSON", help="Given to each run as its payload's payload."),
]
ExternalId = Annotated[
    str | None,
    typer.Option(
        "--external-id", metavar="ID", help="Yours (a user, a tenant): given to each run."
    ),
]
CatchUpOption = Annotated[
    str | None,
    typer.Option(
        "--catch-up",
        metavar="last|all",
        help="Ticks missed while no worker was up: one run for the last (default) or one each.",
    ),
]


@schedules_app.command("create")
def schedules_create(
    task_id: TaskId,
    cron: CronOption = None,
    timezone: TimezoneOption = None,
    payload: SchedulePayload = None,
    external_id: ExternalId = None,
    deduplication_key: Annotated[
        str | None,
        typer.Option(
            "--deduplication-key",
            metavar="KEY",
            help="Create once per key: again with it updates the schedule the first one made.",
        ),
    ] = None,
    catch_up: CatchUpOption = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Make TASK_ID run at each tick of a cron expression, once per tick.

    One run per tick whatever the number of workers; the run's payload says which tick
    (timestamp, lastTimestamp, timezone, scheduleId, upcoming) and holds --payload.
    """
    from .console import show

    if cron is None:
        raise _fail("--cron is required: the expression the schedule ticks at")

    def create(engine: Engine) -> Awaitable[Schedule]:
        return engine.schedules.create(
            task_id,
            cron=cron,
            timezone=timezone,
            payload=_json_option(payload, "--payload"),
            external_id=external_id,
            deduplication_key=deduplication_key,
            catch_up=catch_up or "last",
        )

    show(_run(api_url or database, create, api_key=api_key), as_json)


@schedules_app.command("list")
def schedules_list(
    task: Annotated[
        str | None, typer.Option("--task", metavar="TASK_ID", help="Only this task's schedules.")
    ] = None,
    page: Annotated[int, typer.Option("--page", min=1, metavar="N", help="The page, from 1.")] = 1,
    per_page: Annotated[
        int, typer.Option("--per-page", metavar="N", help="Schedules a page (1-100).")
    ] = 25,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List schedules, newest first, with their next tick."""
    from .console import show_schedules

    found = _run(
        api_url or database,
        lambda e: e.schedules.list(task=task, page=page, per_page=per_page),
        api_key=api_key,
    )
    show_schedules(found, as_json)


@schedules_app.command("get")
def schedules_get(
    schedule_id: ScheduleId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show a schedule and its next five ticks."""
    from .console import show

    found = _run(api_url or database, lambda e: e.schedules.retrieve(schedule_id), api_key=api_key)
    show(found, as_json)


@schedules_app.command("update")
def schedules_update(
    schedule_id: ScheduleId,
    task: Annotated[
        str | None, typer.Option("--task", metavar="TASK_ID", help="Run this task instead.")
    ] = None,
    cron: CronOption = None,
    timezone: TimezoneOption = None,
    payload: SchedulePayload = None,
    external_id: ExternalId = None,
    catch_up: CatchUpOption = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Change what is given (the rest stays); a new expression or zone ticks from now on."""
    from .console import show

    def update(engine: Engine) -> Awaitable[Schedule]:
        return engine.schedules.update(
            schedule_id,
            task=task,
            cron=cron,
            timezone=timezone,
            payload=_json_option(payload, "--payload"),
            external_id=external_id,
            catch_up=catch_up,
        )

    show(_run(api_url or database, update, api_key=api_key), as_json)


@schedules_app.command("delete")
def schedules_delete(
    schedule_id: ScheduleId,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Delete a schedule (its runs stay); a declared one comes back if its code still has it."""
    _run(api_url or database, lambda e: e.schedules.delete(schedule_id), api_key=api_key)
    print(f"schedule {schedule_id} deleted")


@schedules_app.command("activate")
def schedules_activate(
    schedule_id: ScheduleId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Tick again, from now on (ticks missed while inactive make no run)."""
    from .console import show

    found = _run(api_url or database, lambda e: e.schedules.activate(schedule_id), api_key=api_key)
    show(found, as_json)


@schedules_app.command("deactivate")
def schedules_deactivate(
    schedule_id: ScheduleId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Stop ticking until `schedules activate`."""
    from .console import show

    found = _run(
        api_url or database, lambda e: e.schedules.deactivate(schedule_id), api_key=api_key
    )
    show(found, as_json)


# --- tokens ----------------------------------------------------------------------------


async def _with_url_note(engine: Engine, found: Awaitable[T]) -> T:
    """``found`` (tokens), and a note on stderr when their callback URLs lead nowhere: this
    process knows no public URL (``signing.UNKNOWN_PUBLIC_URL``)."""
    result = await found
    problem = await engine.tokens.unreachable_urls()
    if problem is not None:
        print(f"note: {problem}", file=sys.stderr)
    return result


@tokens_app.command("create")
def tokens_create(
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout", metavar=Duration, help="Time out if not completed within this (30s, 7d)."
        ),
    ] = None,
    tag: Tags = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Create once per key: a repeat returns the token the first one made.",
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option("--title", help="What the reviewer is asked (at most 200 characters)."),
    ] = None,
    description: Annotated[
        str | None,
        typer.Option("--description", help="More about it, plain text (at most 4,000)."),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context", help='A JSON object the approval page lists, like {"amount": 19.99}.'
        ),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Create a waitpoint token."""

    from .console import show

    async def action(engine: Engine) -> Token:
        made = engine.tokens.create(
            timeout=_duration_option(timeout, "--timeout"),
            tags=tag,
            idempotency_key=idempotency_key,
            title=title,
            description=description,
            context=_json_option(context, "--context"),
        )
        return await _with_url_note(engine, made)

    show(_run(api_url or database, action, api_key=api_key), as_json)


@tokens_app.command("list")
def tokens_list(
    status: Statuses = None,
    tag: TagFilter = None,
    limit: Limit = 25,
    after: After = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List tokens, newest first.

    Filters of different options all apply (--status WAITING --tag a: waiting and tagged a);
    a repeated option matches any of its values.
    """
    from .console import TOKEN_COLUMNS, show_page

    page = _run(
        api_url or database,
        lambda e: _with_url_note(
            e, e.tokens.list(status=status, tags=tag, limit=limit, after=after)
        ),
    )
    show_page(page, as_json, TOKEN_COLUMNS, "tokens")


@tokens_app.command("get")
def tokens_get(
    token_id: TokenId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show one token."""
    from .console import show

    show(
        _run(
            api_url or database,
            lambda e: _with_url_note(e, e.tokens.retrieve(token_id)),
            api_key=api_key,
        ),
        as_json,
    )


@tokens_app.command("complete")
def tokens_complete(
    token_id: TokenId,
    data: Annotated[
        str | None,
        typer.Option("--data", metavar="JSON", help="The completion data, as JSON."),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Complete a WAITING token; the runs waiting on it resume with the data."""

    from .console import show_completion
    from .models import CompletionSource

    async def action(engine: Engine) -> CompletionResult:
        value = _json_option(data, "--data")
        return await engine.tokens.complete(token_id, value, source=CompletionSource.CLI)

    show_completion(_run(api_url or database, action, api_key=api_key), as_json)


@tokens_app.command("link")
def tokens_link(
    token_id: TokenId,
    expires_in: Annotated[
        str,
        typer.Option(
            "--expires-in", metavar=Duration, help="How long the link works (at most 30d)."
        ),
    ] = "24h",
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print a one-link approval page URL: whoever opens it can complete this token only."""
    url = _run(
        api_url or database, lambda e: e.tokens.approval_link(token_id, expires_in), api_key=api_key
    )
    print(json.dumps({"url": url}) if as_json else url)


@tokens_app.command("cancel")
def tokens_cancel(
    token_id: TokenId,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            metavar="TEXT",
            help="Why, as plain text (at most 1,000 characters): kept on the token and"
            " given to the waiting runs.",
        ),
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a WAITING token; runs waiting on it resume with WaitpointCancelledError
    (whose reason is --reason)."""
    from .console import show_completion
    from .models import CompletionSource

    show_completion(
        _run(
            api_url or database,
            lambda e: e.tokens.cancel(token_id, reason, source=CompletionSource.CLI),
            api_key=api_key,
        ),
        as_json,
    )


@tokens_app.command("receipt")
def tokens_receipt(
    token_id: Annotated[
        str | None,
        typer.Argument(
            metavar="TOKEN_ID",
            help="The closed token's id (waitpoint_...); with --verify, the token the receipt"
            " must be of.",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        str | None,
        typer.Option(
            "--verify",
            metavar="FILE",
            help="Check a saved receipt instead (- reads standard input): prints 'valid', or"
            " fails with the reason.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            metavar="FILE",
            help="Write the receipt to FILE instead of printing it.",
            show_default=False,
        ),
    ] = None,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print the signed receipt of a closed token: how and when it closed, by which route,
    and the SHA-256 of its data, signed by the server. Keep it to prove the decision.

    With --verify FILE, check a receipt kept earlier: it must be signed with this server's
    secret key (or the previous one, during a key rotation) and unchanged.
    """
    if verify is not None:
        if output is not None:
            raise _fail("--output writes a receipt; it does not go with --verify")
        with _user_errors():
            receipt = _read_receipt(verify)
        _run(api_url or database, lambda e: e.tokens.verify_receipt(receipt), api_key=api_key)
        if token_id is not None and receipt.get("tokenId") != token_id:
            raise _fail(f"the receipt is valid, but of token {receipt['tokenId']}, not {token_id}")
        print("valid")
        return
    if token_id is None:
        raise _fail("give the TOKEN_ID of a closed token, or --verify FILE to check a receipt")
    wanted = token_id
    made = _run(api_url or database, lambda e: e.tokens.receipt(wanted), api_key=api_key)
    text = json.dumps(made, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    with _user_errors():
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValidationError(
                f"--output: cannot write {output}: {exc.strerror or exc}"
            ) from None


def _read_receipt(path: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``-``: standard input), for ``--verify``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValidationError(f"--verify: cannot read {path}: {reason}") from None
    try:
        receipt = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValidationError(f"--verify: {path} is not JSON: {exc}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ValidationError(f"--verify: {path} is not acceptable JSON: {exc}") from None
    if not isinstance(receipt, dict):
        raise ValidationError(f"--verify: {path} holds no receipt (a receipt is a JSON object)")
    return receipt


ApprovalId = Annotated[str, typer.Argument(metavar="APPROVAL_ID", help="The approval's id.")]


@approvals_app.command("list")
def approvals_list(
    approver: Annotated[
        str | None,
        typer.Option("--approver", metavar="WHO", help="Only those asking this approver."),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", metavar="RUN_ID", help="Only this run's.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", metavar="STATUS", help="WAITING, COMPLETED or TIMED_OUT."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="At most N (1-100).")] = 25,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List approvals, newest first, with their votes against the quorum."""
    from .console import show_approvals

    found = _run(
        api_url or database,
        lambda e: e.approvals.list(approver=approver, run_id=run, status=status, limit=limit),
        api_key=api_key,
    )
    show_approvals(found, as_json)


@approvals_app.command("get")
def approvals_get(
    approval_id: ApprovalId,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show an approval: whom it asks, its rules and every vote."""
    from .console import show

    found = _run(api_url or database, lambda e: e.approvals.retrieve(approval_id), api_key=api_key)
    show(found, as_json)


@approvals_app.command("vote")
def approvals_vote(
    approval_id: ApprovalId,
    approver: Annotated[str, typer.Option("--as", metavar="WHO", help="The approver who votes.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    data: Annotated[
        str | None, typer.Option("--data", metavar="JSON", help="What the schema asks for.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", metavar="TEXT", help="Why (1-1000 characters).")
    ] = None,
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cast an approver's vote (for the approver: their link is the usual way)."""
    from .console import show
    from .models import CompletionSource

    def vote(engine: Engine) -> Awaitable[Approval]:
        return engine.approvals.vote(
            approval_id,
            approver,
            approve=not reject,
            data=_json_option(data, "--data"),
            reason=reason,
            source=CompletionSource.CLI,
        )

    show(_run(api_url or database, vote, api_key=api_key), as_json)


@approvals_app.command("links")
def approvals_links(
    approval_id: ApprovalId,
    expires_in: Annotated[
        str, typer.Option("--expires-in", metavar="DURATION", help="How long they work (30d max).")
    ] = "7d",
    as_json: AsJson = False,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Each approver's own voting link (whoever opens one votes as that approver)."""
    links = _run(
        api_url or database,
        lambda e: e.approvals.links(approval_id, expires_in=expires_in),
        api_key=api_key,
    )
    if as_json:
        print(json.dumps({"links": links}))
        return
    for person, url in links.items():
        print(f"{person}\t{url}")


@approvals_app.command("inbox")
def approvals_inbox(
    approver: Annotated[str, typer.Argument(metavar="WHO", help="The approver.")],
    expires_in: Annotated[
        str, typer.Option("--expires-in", metavar="DURATION", help="How long it works (30d max).")
    ] = "7d",
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """An approver's inbox link: what they are asked to decide, each with their voting link."""
    url = _run(
        api_url or database,
        lambda e: e.approvals.inbox_link(approver, expires_in=expires_in),
        api_key=api_key,
    )
    print(url)


@approvals_app.command("receipts")
def approvals_receipts(
    approval_id: ApprovalId,
    database: Database = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The signed receipts of a closed approval, one JSON object a line: the decision's,
    then each vote's (``waitpoint tokens receipt --verify FILE`` checks one)."""
    receipts = _run(
        api_url or database, lambda e: e.approvals.receipts(approval_id), api_key=api_key
    )
    for receipt in receipts:
        print(json.dumps(receipt))
