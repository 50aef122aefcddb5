"""How the CLI shows things to people: tables, key/value views, timelines (or plain JSON).

In a terminal, tables fit its width (long cells fold). Anywhere else (a pipe, a file) every
row is one line, tab-separated after a header line, so ``waitpoint runs list | grep refund``
finds whole rows and ``cut -f1`` picks a column; notes such as the next page's cursor go to
stderr there, leaving stdout to the data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .durations import format_duration
from .keys import SecretKey
from .models import (
    EXPIRING_SOON,
    Approval,
    CompletionResult,
    Page,
    Run,
    RunStatus,
    SchedulePage,
    StatsSnapshot,
    TimelineEntry,
    WaitTarget,
    WireModel,
    WorkerInfo,
    ago,
)


def on_terminal() -> bool:
    """True when people read stdout in a terminal; a pipe or a file gets one line per row."""
    return sys.stdout.isatty()


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


def field(value: Any) -> str:
    """A value as one tab-separated field: whole times, tags joined by ",", JSON otherwise;
    tabs and line breaks escaped, so that a row never spans two lines."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ",".join(value)
    else:
        text = cell(value).plain
    return text.replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def note(text: str) -> None:
    """A line about the output (no items, more pages): dim below a table in a terminal; on
    stderr elsewhere, so that stdout holds only rows."""
    if on_terminal():
        Console().print(Text(text, style="dim"))
    else:
        print(text, file=sys.stderr)


def show(model: WireModel, as_json: bool, timeline: Sequence[TimelineEntry] | None = None) -> None:
    """One object: its wire JSON, or a key/value view for people.

    A run's view names its error in one line; the ``timeline`` (if given) follows, then the
    error's stack trace as text.
    """
    if as_json:
        print(model.model_dump_json(by_alias=True))
        return
    values = model.model_dump(mode="json", by_alias=True)
    trace = ""
    if isinstance(model, Run) and model.error is not None:
        values["error"] = f"{model.error.name}: {model.error.message}"
        trace = model.error.stack_trace
    if on_terminal():
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for key, value in values.items():
            grid.add_row(key, cell(value))
        Console().print(grid)
    else:
        for key, value in values.items():
            print(f"{key}\t{field(value)}")
    if timeline is not None:
        print()
        show_timeline(timeline)
    if trace:
        show_trace(trace)


def show_trace(trace: str) -> None:
    """A stack trace kept as text, below what came before: highlighted in a terminal."""
    print()
    if not on_terminal():
        print(trace.rstrip("\n"))
        return
    from rich.syntax import Syntax  # late: only a failed run has a trace to show

    syntax = Syntax(trace.rstrip("\n"), "pytb", background_color="default", word_wrap=True)
    Console().print(syntax)


def show_page(page: Page[Any], as_json: bool, columns: dict[str, str], noun: str) -> None:
    """A page of objects: ``{"data": [...], "nextCursor": ...}`` or a table of ``columns``.

    ``columns`` maps wire field names to the short headers a table has room for.
    """
    if as_json:
        rows = [item.model_dump(mode="json", by_alias=True) for item in page.data]
        print(json.dumps({"data": rows, "nextCursor": page.next_cursor}))
        return
    if not page.data:
        note(f"no {noun}")
        return
    items = [item.model_dump(by_alias=True) for item in page.data]
    if not on_terminal():
        _lines(list(columns.values()), [[row.get(c) for c in columns] for row in items])
    else:
        table = _table()
        for key, header in columns.items():  # ids are what people copy: never cut them short
            is_time = key.endswith("At")  # wide enough to break between date and time
            whole = key in ("id", "status")
            table.add_column(
                header, no_wrap=whole, overflow="fold", min_width=10 if is_time else None
            )
        for row in items:
            table.add_row(*(cell(row.get(column), short=True) for column in columns))
        Console().print(table)
    if page.next_cursor:
        note(f"more: --after {page.next_cursor}")


class _WorkerRow(WireModel):
    """A worker as the table shows it."""

    id: str
    tasks: list[str]
    versions: list[str]
    in_use: str
    last_heartbeat: str
    state: str


def show_workers(found: list[WorkerInfo], *, as_json: bool, include_gone: bool) -> None:
    """Workers as JSON (the API's objects), or a table of their load and last heartbeat."""
    if as_json:
        show_page(Page(data=found), True, {}, "workers")
        return
    now = datetime.now(UTC)
    rows = [
        _WorkerRow(
            id=w.id,
            tasks=w.tasks,
            versions=sorted(set(w.versions.values())),
            in_use=f"{w.running}/{w.concurrency}",
            last_heartbeat=f"{ago((now - w.heartbeat_at).total_seconds())} ago",
            state="live" if w.live else "stopped" if w.stopped_at else "silent",
        )
        for w in found
    ]
    columns = {"id": "worker", "tasks": "tasks"}
    if any(w.versions for w in found):
        columns["versions"] = "versions"
    columns["inUse"] = "in use"
    columns["lastHeartbeat"] = "last heartbeat"
    if include_gone:
        columns["state"] = "state"
    show_page(Page(data=rows), False, columns, "workers" if include_gone else "live workers")


class _ScheduleRow(WireModel):
    """A schedule as the table shows it."""

    id: str
    task: str
    cron: str
    timezone: str
    active: bool
    next_run: datetime | None


def show_schedules(page: SchedulePage, as_json: bool) -> None:
    """A page of schedules as the API's JSON, or a table of when each ticks next."""
    if as_json:
        print(page.model_dump_json(by_alias=True))
        return
    rows = [
        _ScheduleRow(
            id=s.id,
            task=s.task,
            cron=s.cron,
            timezone=s.timezone,
            active=s.active,
            next_run=s.next_run,
        )
        for s in page.data
    ]
    columns = {
        "id": "id",
        "task": "task",
        "cron": "cron",
        "timezone": "zone",
        "active": "active",
        "nextRun": "next",
    }
    show_page(Page(data=rows), False, columns, "schedules")
    more = page.pagination
    if more.current_page < more.total_pages:
        note(f"page {more.current_page} of {more.total_pages}: --page {more.current_page + 1}")


class _ApprovalRow(WireModel):
    """An approval as the table shows it."""

    id: str
    status: str
    title: str
    votes: str
    """Approvals and rejections so far against the quorum: ``2+ 1- / 2``."""
    waiting_for: str
    expires_at: datetime | None


def show_approvals(approvals: Sequence[Approval], as_json: bool) -> None:
    """Approvals as the API's JSON, or a table of where each stands."""
    if as_json:
        rows = [a.model_dump(mode="json", by_alias=True) for a in approvals]
        print(json.dumps({"data": rows}))
        return
    table_rows = []
    for approval in approvals:
        latest = {v.approver: v for v in approval.votes}
        yes = sum(1 for v in latest.values() if v.approve)
        no = len(latest) - yes
        waiting = [a.approver for a in approval.approvers if a.approver not in latest]
        table_rows.append(
            _ApprovalRow(
                id=approval.id,
                status=approval.status.value,
                title=approval.title,
                votes=f"{yes}+ {no}- / {approval.quorum}",
                waiting_for=", ".join(waiting) if approval.status == "WAITING" else "",
                expires_at=approval.expires_at,
            )
        )
    columns = {
        "id": "id",
        "status": "status",
        "title": "title",
        "votes": "votes",
        "waitingFor": "waiting for",
        "expiresAt": "expires",
    }
    show_page(Page(data=table_rows), False, columns, "approvals")


def stats_view(snapshot: StatsSnapshot) -> Group:
    """The database's figures for people: a line of totals, runs by task (a column per
    status any task has runs in), and the queues holding QUEUED runs."""
    at = snapshot.at.strftime("%Y-%m-%d %H:%M:%S %Z")
    totals = Text(
        f"live workers {snapshot.live_workers} · tokens waiting {snapshot.tokens_waiting}"
        f" ({snapshot.tokens_expiring_soon} expiring within"
        f" {format_duration(EXPIRING_SOON)}) · approvals waiting {snapshot.approvals_waiting}"
    )
    parts: list[Any] = [Text(f"database figures at {at}", style="dim"), totals]
    statuses = _statuses(snapshot)
    if statuses:
        runs = _table()
        runs.add_column("task", overflow="fold")
        for status in statuses:
            runs.add_column(status.value, justify="right")
        for task, counts in _runs_by_task(snapshot).items():
            runs.add_row(Text(task), *(Text(str(counts.get(s, 0))) for s in statuses))
        parts += [Text(""), runs]
    else:
        parts.append(Text("no runs", style="dim"))
    if snapshot.queues:
        queues = _table()
        for header in ("task", "queue"):
            queues.add_column(header, overflow="fold")
        for header in ("queued", "due", "oldest due"):
            queues.add_column(header, justify="right")
        for q in snapshot.queues:
            oldest = ago(q.oldest_age_seconds) if q.due else "-"
            queues.add_row(
                Text(q.task_id), Text(q.queue), Text(str(q.depth)), Text(str(q.due)), Text(oldest)
            )
        parts += [Text(""), queues]
    return Group(*parts)


def show_stats(snapshot: StatsSnapshot, as_json: bool) -> None:
    """The figures as the API's JSON, as ``stats_view`` in a terminal, or elsewhere as three
    blocks of tab-separated lines (totals, runs by task and status, queues), a blank line
    apart."""
    if as_json:
        print(snapshot.model_dump_json(by_alias=True))
    elif on_terminal():
        Console().print(stats_view(snapshot))
    else:
        totals = snapshot.model_dump(
            by_alias=True,
            include={"live_workers", "tokens_waiting", "tokens_expiring_soon", "approvals_waiting"},
        )
        _lines(["figure", "value"], [[name, value] for name, value in totals.items()])
        print()
        _lines(
            ["task", "status", "runs"],
            [[r.task_id, r.status.value, r.count] for r in snapshot.runs],
        )
        print()
        _lines(
            ["task", "queue", "queued", "due", "oldest due (s)"],
            [[q.task_id, q.queue, q.depth, q.due, q.oldest_age_seconds] for q in snapshot.queues],
        )


class StatsWatch:
    """``waitpoint stats --watch``: each new reading shown in place in a terminal (rich's
    ``Live``), else printed after the last (with ``--json``, one object a line). Use as a
    context manager: the last reading stays on screen when it ends (Ctrl-C)."""

    def __init__(self, as_json: bool, console: Console | None = None) -> None:
        self.as_json = as_json
        self._console = console or Console()
        self._live: Any = None
        self._shown = 0

    def __enter__(self) -> StatsWatch:
        if not self.as_json and self._console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self._console, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def __call__(self, snapshot: StatsSnapshot) -> None:
        if self._live is not None:
            self._live.update(stats_view(snapshot), refresh=True)
            return
        if self._shown and not self.as_json:
            print()  # readings a blank line apart
        show_stats(snapshot, self.as_json)
        sys.stdout.flush()
        self._shown += 1


def _statuses(snapshot: StatsSnapshot) -> list[RunStatus]:
    """The statuses any task has runs in, in ``RunStatus``'s order."""
    present = {r.status for r in snapshot.runs}
    return [status for status in RunStatus if status in present]


def _runs_by_task(snapshot: StatsSnapshot) -> dict[str, dict[RunStatus, int]]:
    found: dict[str, dict[RunStatus, int]] = {}
    for r in snapshot.runs:
        found.setdefault(r.task_id, {})[r.status] = r.count
    return found


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1, 0, 0), show_edge=False)


def _lines(headers: list[str], rows: list[list[Any]]) -> None:
    """A header line, then one tab-separated line per row."""
    print("\t".join(headers))
    for row in rows:
        print("\t".join(field(value) for value in row))


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


_TIMELINE_HEADERS = ["at", "call", "attempt", "took", "outcome"]


def show_timeline(timeline: Sequence[TimelineEntry]) -> None:
    rows = [
        [
            entry.at.isoformat(),
            entry.key or entry.kind,
            entry.attempt,
            f"{entry.duration_ms} ms" if entry.duration_ms is not None else "",
            outcome(entry),
        ]
        for entry in timeline
    ]
    if not on_terminal():
        _lines(_TIMELINE_HEADERS, rows)
        return
    table = _table()
    for header in _TIMELINE_HEADERS:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(cell(value) for value in row))
    Console().print(table)


def outcome(entry: TimelineEntry) -> str:
    """What a timeline entry came to, in words: a sleep's length, what a wait was on, how
    a token closed, what a child run returned."""
    if entry.error is not None:
        return f"{entry.error.name}: {entry.error.message}"
    if entry.key is None:  # a lifecycle event
        return _event(entry)
    token = entry.token
    value = entry.value
    if entry.kind == "create_token" and token is not None:
        return f"created token {token.id}"
    if entry.kind == "wait_for_token" and token is not None:
        via = f" via {token.completed_via.value}" if token.completed_via else ""
        return f"token {token.id} {token.status.value}{via}: {_json(token.data)}"
    if entry.kind == "sleep" and isinstance(value, dict):
        return _slept(value, entry.at)
    if entry.kind == "wait_for_tokens" and isinstance(value, dict):
        return _group(value)
    if entry.kind in ("trigger", "batch"):
        return _children(value)
    return _json(value)


def _event(entry: TimelineEntry) -> str:
    detail = entry.detail or {}
    if entry.kind == "waiting":
        return _waiting(entry)
    if entry.kind == "created":
        for key, made_as in (("parent", "child"), ("replay", "replay"), ("fork", "fork")):
            if key in detail:
                return f"{made_as} of run {detail[key]}"
        return ""
    if entry.kind == "retried":
        return f"retried by hand after it was {detail.get('status', 'finished')}"
    if entry.kind in ("replayed", "forked") and "runId" in detail:
        where = f" from {detail['from']}" if detail.get("from") else ""
        return f"{entry.kind} as run {detail['runId']}{where}"
    if entry.kind == "attempt_started" and "worker" in detail:
        return f"worker {detail['worker']}"
    if entry.kind == "finished" and "status" in detail:
        error = detail.get("error")
        return f"{detail['status']}: {error}" if error else str(detail["status"])
    if entry.kind == "migrated" and "to" in detail:
        return f"version {detail.get('from') or '(none)'} -> {detail['to']}"
    if entry.kind == "retrying" and "delayMs" in detail:
        return f"retry in {detail['delayMs'] / 1000:g}s: {detail.get('error', '')}"
    return ", ".join(f"{key}: {_text(value)}" for key, value in detail.items())


def _waiting(entry: TimelineEntry) -> str:
    """The waitpoints of a ``waiting`` event, each with its kind and how to look it up."""
    described = {target.id: target for target in entry.waiting_on or []}
    ids = (entry.detail or {}).get("on", [])
    return "; ".join(
        _target(described[i], entry.at) if i in described else f"waitpoint {i}" for i in ids
    )


def _target(target: WaitTarget, at: datetime) -> str:
    if target.kind == "token":
        return f"token {target.id} (waitpoint tokens get {target.id})"
    if target.kind == "run" and target.run_id:
        return f"run {target.run_id} (waitpoint runs get {target.run_id})"
    if target.kind == "sleep" and target.until is not None:
        length = _length(target.until - target.created_at)
        return f"sleeping {length} (until {_moment(target.until, at)})"
    if target.kind == "deadline" and target.until is not None:
        return f"deadline {_moment(target.until, at)}"
    if target.kind == "message":
        until = f" until {_moment(target.until, at)}" if target.until is not None else ""
        return f"a message{until} (waitpoint runs send)"
    return f"{target.kind} {target.id}"


def _slept(waitpoint: dict[str, Any], at: datetime) -> str:
    """``slept 10s (until 12:00:03)``, from the sleep's waitpoint as journaled."""
    try:
        since = datetime.fromisoformat(waitpoint["createdAt"])
        until = datetime.fromisoformat(waitpoint["expiresAt"])
    except (KeyError, TypeError, ValueError):
        return "slept"
    return f"slept {_length(until - since)} (until {_moment(until, at)})"


def _group(snapshot: dict[str, Any]) -> str:
    """How a ``wait_for_tokens`` group closed: each member's status, and a timeout."""
    tokens = snapshot.get("tokens") or []
    kinds = snapshot.get("kinds") or ["token"] * len(tokens)
    keys = snapshot.get("keys") or [t.get("id") for t in tokens]
    states = ", ".join(
        f"{kind} {key} {token.get('status')}"
        for token, kind, key in zip(tokens, kinds, keys, strict=False)
    )
    return f"timed out: {states}" if snapshot.get("timedOut") else states


def _children(value: Any) -> str:
    """A child run started (``trigger``), or how the awaited children ended."""
    if isinstance(value, dict) and "id" in value:
        return f"started run {value['id']} (waitpoint runs get {value['id']})"
    if not isinstance(value, list):
        return _json(value)
    ended = []
    for waitpoint in value:
        data = waitpoint.get("data") if isinstance(waitpoint, dict) else None
        if not isinstance(data, dict):
            continue
        result = data.get("output") if data.get("status") == "COMPLETED" else data.get("error")
        ended.append(f"run {data.get('runId')} {data.get('status')}: {_json(result)}")
    return "; ".join(ended)


def _length(delta: timedelta) -> str:
    """``200ms``, ``10s``, ``1h30m``."""
    if delta < timedelta(seconds=1):
        return f"{delta // timedelta(milliseconds=1)}ms"
    return format_duration(delta)


def _moment(when: datetime, at: datetime) -> str:
    """A time of day, with its date when that is not the date of the entry (``at``)."""
    return f"{when:%H:%M:%S}" if when.date() == at.date() else f"{when:%Y-%m-%d %H:%M:%S}"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


def banner(lines: list[str]) -> None:
    Console(stderr=True, highlight=False).print("\n".join(lines), markup=False)


def key_line(key: SecretKey) -> str:
    if key.origin == "WAITPOINT_SECRET_KEY":
        return "secret key: from WAITPOINT_SECRET_KEY"
    if key.created:
        return f"secret key: {key.value}  (new; kept in {key.origin}, shown only this once)"
    return f"secret key: in {key.origin}"


class ProgressReport:
    """``progress(done, of)`` of a bulk action (``runs cancel|retry`` by filter, ``purge``),
    on stderr: a bar where stderr is a terminal, a line per batch elsewhere (logs, CI, pipes),
    nothing with ``--json`` (stdout is then for a program). Use as a context manager: the bar
    ends with the action."""

    def __init__(
        self, done_word: str, *, quiet: bool = False, console: Console | None = None
    ) -> None:
        self.done_word = done_word
        self.quiet = quiet
        self._console = console or Console(stderr=True)
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressReport:
        if not self.quiet and self._console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn(self.done_word), BarColumn(), MofNCompleteColumn(), console=self._console
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, done: int, of: int) -> None:
        if self.quiet:
            return
        if self._bar is None:
            print(f"{self.done_word} {done} of {of}", file=sys.stderr, flush=True)
            return
        if self._task is None:
            self._task = self._bar.add_task(self.done_word, total=of)
        self._bar.update(self._task, completed=done, total=of)
