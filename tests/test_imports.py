"""``import engine`` and ``waitpoint --help`` stay light: heavy modules load where they are used.

The web stack (FastAPI, Starlette, uvicorn), the PostgreSQL driver, jsonschema and its format
checkers (whose optional dependencies, such as ``rfc3987_syntax``, take over a second to
import), structlog (which imports rich) and jsonschema-rs are each imported by the code that
needs them: the server, a PostgreSQL storage, a configured log, the first JSON Schema. A
structural check, in a fresh interpreter; ``benchmarks/cli_startup.py`` measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys

WEB_AND_DRIVERS = {"fastapi", "starlette", "uvicorn", "asyncpg", "jinja2", "httpx"}
JSONSCHEMA_FORMATS = {
    "jsonschema",  # the Python package (the engine validates with jsonschema_rs)
    "rfc3987_syntax",
    "rfc3987",
    "rfc3339_validator",
    "webcolors",
    "fqdn",
    "isoduration",
    "uri_template",
    "jsonpointer",
    "lark",
}
LIBRARY_ONLY = {"structlog", "rich", "typer", "click", "jsonschema_rs"}


def imported_after(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` once ``code`` ran in a fresh interpreter."""
    script = (
        f"{code}\n"
        "import json, sys\n"
        "print('\\n' + json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_import_engine_leaves_the_heavy_modules_alone() -> None:
    loaded = imported_after("import engine")
    assert "engine" in loaded
    assert loaded & (WEB_AND_DRIVERS | JSONSCHEMA_FORMATS | LIBRARY_ONLY) == set()


def test_cli_help_leaves_the_server_and_the_drivers_alone() -> None:
    code = (
        "from engine.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
    )
    loaded = imported_after(code)
    assert "typer" in loaded  # the command did run
    assert loaded & (WEB_AND_DRIVERS | JSONSCHEMA_FORMATS | {"structlog"}) == set()


def test_the_facade_loads_neither_the_web_stack_nor_templates_nor_httpx() -> None:
    """``engine.Engine`` (and a local Engine made from it) needs no FastAPI, Jinja2 or httpx:
    signing lives in ``engine.signing``, and the HTTP transport loads only for an http URL."""
    loaded = imported_after("import engine\nengine.Engine\nengine.Engine('sqlite:///:memory:')")
    assert "engine" in loaded
    assert loaded & {"fastapi", "starlette", "jinja2", "httpx", "jwt"} == set()
