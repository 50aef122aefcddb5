"""Property-based fuzzing of the REST API's OpenAPI surface with schemathesis: never a 5xx.

What it covers:

- every operation in ``/openapi.json`` (when written: tokens create, list, retrieve, complete,
  cancel, callback; task trigger; run retrieve, cancel, list, timeline; ``/healthz``), the
  schema loaded from the ASGI app and the app called in-process (no socket), with the secret
  key as ``Authorization: Bearer`` (schemathesis also sends some cases without it);
- the schemathesis phases ``examples``, ``coverage`` (boundary and schema-violating values for
  each parameter and body field) and ``fuzzing`` in both generation modes: positive (inputs the
  schema allows) and negative (inputs it forbids: wrong types, bad query values, invalid
  bodies), at most 30 fuzzed examples per operation;
- ids that exist: about half of the generated ``token_id``/``run_id``/``task_id``/
  ``schedule_id`` path values are swapped for seeded ones (waiting tokens, tokens with a
  completion schema, runs of a registered task, plain and typed tasks, schedules of both in
  UTC and another zone), and callback cases for a seeded token get its valid
  signature, so the fuzzed bodies reach completion, cancellation, late completions on closed
  tokens and payload validation, not only the 404/401 answers.

The only check is schemathesis' ``not_a_server_error``: whatever a client sends, the answer is
never a 5xx (the Trigger.dev SDK retries 5xx for seconds, turning a typo into a hang). The
seed is fixed and generation deterministic, so a failure reproduces; the engine and app run on
a temp SQLite file.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans

from engine import Engine, Settings
from engine.api import create_app
from engine.models import TaskInfo
from engine.signing import message_subject

SECRET_KEY = "wp_fuzz_" + "0123456789abcdef" * 3
MAX_EXAMPLES = 30
SEED = 20_250_716
LONG_NUMBER = b"9" * 5000
LONG_NUMBER_BODY = b'{"data": ' + LONG_NUMBER + b', "payload": {"n": -' + LONG_NUMBER + b"}}"
"""JSON with integers over Python's 4,300-digit conversion limit."""

CONFIG = {
    "seed": SEED,
    "headers": {"Authorization": f"Bearer {SECRET_KEY}"},
    "generation": {
        "mode": "all",
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
}


@dataclass
class Seeded:
    """Ids that exist in the fuzzed database; generated path values are swapped for these."""

    tokens: list[str] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    message_signatures: dict[str, str] = field(default_factory=dict)
    """Per run: the signature of its message URL for the topic ``comment``."""
    tasks: list[str] = field(default_factory=lambda: ["fuzz-plain", "fuzz-typed"])
    schedules: list[str] = field(default_factory=list)


async def _seed(engine: Engine, seeded: Seeded) -> None:
    await engine.storage.register_tasks(
        [
            TaskInfo("fuzz-plain"),
            TaskInfo(
                "fuzz-typed",
                {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            ),
        ]
    )
    data_schema = {"type": "object", "properties": {"approved": {"type": "boolean"}}}
    for i in range(24):
        token = await engine.tokens.create(
            timeout="1h" if i % 3 else None,
            tags=["fuzz", f"seed-{i}"],
            schema=data_schema if i % 4 == 0 else None,
        )
        seeded.tokens.append(token.id)
        seeded.signatures[token.id] = urlsplit(token.url).path.rsplit("/", 1)[1]
    for i in range(12):
        task = seeded.tasks[i % 2]
        run = await engine.trigger(task, {"n": i}, tags=["fuzz"])
        seeded.runs.append(run.id)
        subject = message_subject(run.id, "comment")
        seeded.message_signatures[run.id] = engine.signer.signature(subject)
    for i in range(6):
        schedule = await engine.schedules.create(
            seeded.tasks[i % 2], cron=f"0 {i} 1 1 *", timezone="Europe/Berlin" if i % 3 else None
        )
        seeded.schedules.append(schedule.id)


# The schema comes from the app's own /openapi.json, fetched in-process at import (the route
# does not touch the engine, which this app never opens). Each test calls the fixture's app,
# whose engine sits on a temp SQLite file. (``schemathesis.pytest.from_fixture`` would be the
# natural loader, but schemathesis 4.32.5 sets ``Function._nodeid``, which pytest 9.2 removed.)
_SCHEMA_ONLY_APP = create_app(
    Engine(settings=Settings(database_url="sqlite:///never-opened.db")), secret_key=SECRET_KEY
)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _SCHEMA_ONLY_APP, config=SchemathesisConfig.from_dict(CONFIG)
)


@dataclass
class FuzzedApp:
    app: FastAPI
    seeded: Seeded


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedApp]:
    """The API over an Engine on a temp SQLite file, opened in the app's own event loop.

    schemathesis calls an ASGI app from its own event-loop thread; the engine runs tasks bound
    to the loop that opened it, so the app's lifespan opens (and seeds, and closes) it there.
    """
    folder = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        database_url=f"sqlite:///{folder}/engine.db",
        public_url="http://testserver",
        secret_key=SECRET_KEY,
        sqlite_synchronous="NORMAL",
        # the fuzzer sends wrong credentials by the hundred from one address, and every later
        # request would get 429; the limit has tests of its own (tests/security)
        auth_failures_per_minute=1_000_000,
    )
    engine = Engine(settings=settings)
    app = create_app(engine, secret_key=SECRET_KEY)
    seeded = Seeded()

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await engine.open()
        try:
            await _seed(engine, seeded)
            yield
        finally:
            await engine.close()

    app.router.lifespan_context = lifespan
    try:
        # The first call starts the lifespan in schemathesis' loop: engine open, ids seeded.
        health = schema["/healthz"]["GET"].Case().call(app=app)
        assert health.status_code == 200, health.text
        assert seeded.runs, "the lifespan did not seed the database"
        yield FuzzedApp(app, seeded)
    finally:
        shutdown_lifespans()  # the lifespan's shutdown closes the engine, in its own loop


def _stable(value: Any) -> str:
    """Text that is the same in every run for the same generated value (no memory addresses)."""
    try:
        return json.dumps(value, sort_keys=True, default=lambda o: type(o).__name__)
    except (TypeError, ValueError):
        return type(value).__name__


def _steer(case: Any, seeded: Seeded) -> None:
    """Aim part of the cases at existing ids and at the SDK's headers.

    The choice is a hash of the generated case, so a run is reproducible: about half of the
    cases with path ids get seeded ones (callbacks then mostly with the token's valid
    signature), half of all cases look like the SDK (``x-trigger-api-version``), and a quarter
    reuse one of a few request idempotency keys, which replays an earlier reply.
    """
    params = case.path_parameters or {}
    pick = zlib.crc32(_stable([case.operation.label, params, case.query, case.body]).encode())
    extra = {}
    if (pick >> 10) % 2 == 0:
        extra["x-trigger-api-version"] = "2025-07-16"
    if (pick >> 11) % 4 == 0:
        extra["x-trigger-request-idempotency-key"] = f"fuzz-request-{(pick >> 13) % 3}"
    if extra:
        case.headers = {**(case.headers or {}), **extra}
    if case.media_type == "application/json" and (pick >> 15) % 8 == 0:
        case.body = LONG_NUMBER_BODY
    if not params or pick % 2:
        return
    index = pick >> 1
    if "token_id" in params:
        token_id = seeded.tokens[index % len(seeded.tokens)]
        params["token_id"] = token_id
        if "signature" in params and (pick >> 8) % 4 != 0:
            params["signature"] = seeded.signatures[token_id]
    if "run_id" in params:
        params["run_id"] = seeded.runs[index % len(seeded.runs)]
    if "task_id" in params:
        params["task_id"] = seeded.tasks[index % len(seeded.tasks)]
    if "schedule_id" in params:
        params["schedule_id"] = seeded.schedules[index % len(seeded.schedules)]


@schema.parametrize()
def test_no_request_gets_a_server_error(case: Any, fuzzed_app: FuzzedApp) -> None:
    _steer(case, fuzzed_app.seeded)
    case.call_and_validate(app=fuzzed_app.app, checks=[not_a_server_error])


def _operations_with_bodies() -> list[str]:
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.body:
            labels.append(f"{operation.method.upper()} {operation.path}")
    return sorted(labels)


@pytest.mark.parametrize("label", _operations_with_bodies())
def test_a_number_too_long_for_python_is_400_on_every_operation_with_a_body(
    label: str, fuzzed_app: FuzzedApp
) -> None:
    method, path = label.split(" ", 1)
    seeded = fuzzed_app.seeded
    token_id = seeded.tokens[1]
    ids = {"token_id": token_id, "signature": seeded.signatures[token_id]}
    ids["task_id"] = seeded.tasks[0]
    ids["run_id"] = seeded.runs[0]
    ids["topic"] = "comment"
    if "/messages/" in path:
        ids["signature"] = seeded.message_signatures[ids["run_id"]]
    ids["schedule_id"] = seeded.schedules[0]
    ids["approval_id"] = "waitpoint_never_reached"  # the body is refused before it is looked up
    operation = schema[path][method]
    wanted = {name: ids[name] for name in ids if "{" + name + "}" in path}
    case = operation.Case(
        path_parameters=wanted,
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
        body=LONG_NUMBER_BODY,
        media_type="application/json",
    )
    response = case.call(app=fuzzed_app.app)
    assert response.status_code == 400, response.text
    assert "4300 digits" in response.json()["error"]
