"""Configuration from the environment (prefix ``WAITPOINT_``) with defaults for local work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .defaults import DEFAULT_DATABASE_URL
from .durations import parse_duration
from .errors import ConfigurationError, ValidationError
from .validation import clean_version

ENV_PREFIX = "WAITPOINT_"

SECRET_KEY_NAME = "secret_key"
"""The file, in a SQLite database's folder, that keeps the key generated for that database."""
SECRET_KEY_FILE = Path(".waitpoint") / SECRET_KEY_NAME
"""Where the key generated when none is configured lives for a PostgreSQL database (in the
working directory), and where it lived for every database before it moved beside the SQLite
file (still read there: ``engine.keys``)."""


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` to a path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    path = url[len(prefix) :]
    if not path or path == ":memory:":
        raise ConfigurationError(
            "SQLite needs a file (workers and clients share it); use sqlite:///path/to/file.db"
        )
    return Path(path)


class Settings(BaseModel):
    """Each field comes from the argument of that name, else from the environment variable
    ``WAITPOINT_<NAME>`` (any case), else its default; values are validated either way.

    The environment is read here, not with pydantic-settings: importing that costs every
    command's start more than all the rest of the configuration.
    """

    model_config = ConfigDict(extra="ignore", defer_build=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment(), **values})

    database_url: str = DEFAULT_DATABASE_URL
    """Where runs, tokens and journals live; every worker and client must use the same one."""
    public_url: str | None = None
    """Base of the callback URLs put on tokens and of approval links (the address the API is
    reached at). Unset: the address the API server of this database recorded in it when it
    started (``waitpoint dev``/``serve``: its ``--host`` and ``--port``)."""
    signing_secret: str | None = None
    """Key for callback URL signatures; by default derived from the secret key (for workers that
    should sign callback URLs without holding the API key: ``waitpoint signing-secret``)."""
    tasks: str = "tasks"
    """The module (or package) whose @task functions a worker runs."""
    version: str | None = None
    """The version of the task code a worker runs (``waitpoint worker --version``): a run it
    starts records it, and the worker claims only runs of that version or of none. A task's
    own ``@task(version=)`` comes first."""
    notify_url: str | None = None
    """Where workers tell approvers that an approval waits for them (``request_approval``):
    a webhook (``https://...``, signed with ``notify_secret``; a Slack incoming webhook
    posts Slack's format) or an SMTP server (``smtp://user:pass@host:587?from=...``). Unset:
    notices wait in the database for a worker that has one."""
    notify_secret: str | None = None
    """The webhook signing secret (Standard Webhooks), or the SMTP password."""
    sqlite_synchronous: Literal["FULL", "EXTRA", "NORMAL"] = "FULL"
    """FULL survives power loss; NORMAL is faster but may lose the latest acknowledged writes."""
    listen_url: str | None = None
    """PostgreSQL: where the one connection that LISTENs for other processes' commits goes,
    when ``database_url`` leads through a pooler in transaction mode (``?pgbouncer=true``),
    which cannot keep a LISTEN. Default: ``database_url``."""
    postgres_pool_size: int = Field(default=10, gt=0)
    """Connections per process for PostgreSQL operations (plus 2 for claims, leases and timers,
    and 1 that listens): size the server's max_connections for every process."""
    lease_seconds: float = Field(default=30.0, gt=0)
    """How long a worker may go silent before another one takes its runs over."""
    max_recoveries: int = Field(default=5, gt=0)
    """How often a run is taken over from a dead worker before it ends CRASHED."""
    concurrency: int = Field(default=100, gt=0)
    """Attempts one worker runs at the same time."""
    retention: str | None = None
    """How long finished runs (with their journals and events) and closed tokens are kept
    ("30d", "12h"): every worker deletes older ones, in small batches. Unset (or blank), none
    are deleted. What is kept however old: ``engine.storage.retention``."""
    always_replay: bool = False
    """Testing: end the attempt after every new durable call and resume by replay (slow)."""
    log_format: Literal["auto", "console", "json"] = "auto"
    secret_key: str | None = None
    """The API key (``Authorization: Bearer``) and the key public access tokens are signed with.
    Unset: the first process to need one generates it into ``secret_key`` beside the SQLite
    database (``.waitpoint/secret_key`` in the working directory for PostgreSQL). At least
    32 characters."""
    previous_secret_key: str | None = None
    """During a key rotation's grace period, the key before ``secret_key``: callback URLs and
    public access tokens (approval links) it signed are still accepted; the API itself is not."""
    api_url: str | None = None
    """Use the REST API at this URL instead of a database (``Engine`` and the CLI)."""
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    """Largest request body the API reads; larger ones get 413 (counted as bytes arrive)."""
    max_json_depth: int = Field(default=64, gt=0)
    """Deepest nesting of JSON the API accepts in a request body."""
    body_timeout_seconds: float = Field(default=20.0, gt=0)
    """Longest time the API spends receiving one request body (from its first read); a slower
    client gets 408 and its connection is closed."""
    max_connections: int = Field(default=500, gt=0)
    """Connections and requests the API serves at once (uvicorn's ``limit_concurrency``); past
    it, new requests get 503 at once. Kept under the process's open-file limit."""
    backlog: int = Field(default=1024, gt=0)
    """Connections the kernel queues for the API before it accepts them (``listen`` backlog)."""
    max_streams: int = Field(default=200, gt=0)
    """Live-update streams (server-sent events) the API keeps open at once; past it, 503. Each
    holds a connection for as long as its client likes: keep it well under max_connections."""
    max_streams_per_client: int = Field(default=20, gt=0)
    """Live-update streams one client address may keep open at once; past it, 429."""
    auth_failures_per_minute: int = Field(default=10, gt=0)
    """Wrong credentials (API key, public access token, dashboard sign-in, approval link) one
    client address may send a minute, in a burst or spread out; past that it gets 429 with
    ``Retry-After``, for the right key too, until its budget refills. Counted per process."""
    metrics: bool = False
    """Serve Prometheus metrics at ``GET /metrics`` on the API (``waitpoint serve``/``dev``),
    and record this process's own figures for it (``engine.metrics``). Needs the
    ``metrics`` extra (prometheus-client). Off: the route does not exist (404)."""
    metrics_token: str | None = None
    """A second bearer credential ``GET /metrics`` accepts besides the secret key, for a
    Prometheus server that must not hold the key that opens the whole API."""
    trusted_proxies: str = ""
    """Addresses (or networks, comma-separated) of reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` the API believes. Empty: the client is the socket peer."""

    @field_validator("version")
    @classmethod
    def _is_a_version(cls, value: str | None) -> str | None:
        return None if value is None else clean_version(value, "version")

    @field_validator("retention")
    @classmethod
    def _retention_is_a_duration(cls, value: str | None) -> str | None:
        """A duration as ``parse_duration`` reads it, refused here (at start) if it is not."""
        if value is None or not value.strip():
            return None
        try:
            parse_duration(value)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()


def _environment() -> dict[str, str]:
    """The ``WAITPOINT_*`` variables that name a setting, by the setting's name."""
    found = {}
    for variable, value in os.environ.items():
        if variable[: len(ENV_PREFIX)].upper() == ENV_PREFIX:
            name = variable[len(ENV_PREFIX) :].lower()
            if name in Settings.model_fields:
                found[name] = value
    return found
