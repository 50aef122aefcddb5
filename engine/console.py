"""How the CLI shows things to people: tables, key/value views, timelines (or plain JSON)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .models import CompletionResult, Page, TimelineEntry, WireModel
from .settings import SECRET_KEY_FILE as KEY_FILE
from .settings import Settings


def cell(value: Any, *, short: bool = False) -> Text:
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


def show(model: WireModel, as_json: bool) -> None:
    """One object: its wire JSON, or a key/value view for people."""
    if as_json:
        print(model.model_dump_json(by_alias=True))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in model.model_dump(mode="json", by_alias=True).items():
        grid.add_row(key, cell(value))
    Console().print(grid)


def show_page(page: Page[Any], as_json: bool, columns: dict[str, str], noun: str) -> None:
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
        table.add_row(*(cell(row.get(column), short=True) for column in columns))
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


def show_completion(result: CompletionResult, as_json: bool) -> None:
    """The token after a complete/cancel, and a note when an earlier call already closed it."""
    if not result.applied:
        print(
            f"note: token {result.token.id} was already {result.token.status.value}",
            file=sys.stderr,
        )
    show(result.token, as_json)


def show_timeline(timeline: list[TimelineEntry]) -> None:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1, 0, 0), show_edge=False)
    for header in ("at", "call", "attempt", "took", "outcome"):
        table.add_column(header, overflow="fold")
    for entry in timeline:
        took = f"{entry.duration_ms} ms" if entry.duration_ms is not None else ""
        table.add_row(
            cell(entry.at.isoformat()),
            cell(entry.key or entry.kind),
            cell(entry.attempt),
            cell(took),
            cell(outcome(entry)),
        )
    Console().print(table)


def outcome(entry: TimelineEntry) -> str:
    if entry.error is not None:
        return f"{entry.error.name}: {entry.error.message}"
    if entry.key is None:  # a lifecycle event
        return json.dumps(entry.detail) if entry.detail else ""
    token = entry.token
    if token is None:
        return json.dumps(entry.value)
    if entry.kind == "create_token":
        return f"created {token.id}"
    via = f" via {token.completed_via.value}" if token.completed_via else ""
    return f"{token.id} {token.status.value}{via}: {json.dumps(token.data)}"


def banner(lines: list[str]) -> None:
    Console(stderr=True, highlight=False).print("\n".join(lines), markup=False)


def key_line(key: str, created: bool, settings: Settings) -> str:
    if settings.secret_key:
        return "secret key: from WAITPOINT_SECRET_KEY"
    if created:
        return f"secret key: {key}  (new; kept in {KEY_FILE}, shown only this once)"
    return f"secret key: in {KEY_FILE}"
