"""A run's timeline drawn as a waterfall: one row per attempt, step, wait and child run, each
a bar from when it began to when it ended, on one time axis from the run's creation.

Pure functions: ``waterfall`` is ``rows_of`` (what each bar spans, in ms since the run was
created) then ``lay_out`` (where it goes in the SVG). The page's template only prints the
positions computed here, so the picture is unit-tested without a browser and needs no
script; the timeline table under it stays the accessible source of truth.

What the timeline records, and so what a bar spans:

- an attempt: from each ``attempt_started`` to what stopped it (parking on a wait, a retry,
  the run's end). A run that parks and resumes executes one attempt in pieces, drawn on one
  row with gaps; a retry is a new row, after the back-off's gap.
- a step: its ``duration_ms``, ending at its journal entry's ``at`` (written when the body
  returned). A step that failed is red; a later attempt that ran it again has its own bar.
  Retries inside a step (``step(retry=...)``) are one entry, so one bar.
- a wait: from the ``waiting`` event (the run parked) to the next ``attempt_started`` (it
  resumed), drawn hollow and labelled from the journal entry the resumed attempt wrote
  first (how the token closed, the children's statuses, "timed out"). A wait that did not
  park (its token was already complete) is a bar of no length.
- a child run waited on: from its waitpoint's creation to its completion, under its wait,
  linking to its page.

A zero-length bar is drawn ``MIN_BAR`` wide; its title says its real duration. Past
``MAX_ROWS`` rows, runs of consecutive steps (or waits, or child runs of one wait) of one
attempt share a row, bars less than a pixel apart merge, and rows still past the limit are
left out and counted: a run with thousands of entries draws a picture of bounded size, in
time linear in its timeline. Create-token and patch entries are instants with no bar (the
table lists them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ..models import TimelineEntry, WaitpointStatus, WaitTarget
from .render import took

WAIT_KINDS = frozenset(
    {"wait_for_token", "wait_for_tokens", "trigger", "batch", "sleep", "receive", "approval"}
)
"""Journal kinds a parked run writes when it resumes: the outcome of its wait."""
_LEFT_OUT = frozenset({"create_token", "patch"})
"""Instant records with nothing to draw: the table lists them."""
_RUN_ENDS = frozenset({"finished", "canceled", "crashed", "expired"})
_ATTEMPT_ENDS = _RUN_ENDS | {"waiting", "retrying", "worker_lost"}
_CLOSED = {
    WaitpointStatus.TIMED_OUT: "timed out",
    WaitpointStatus.CANCELLED: "cancelled",
}
_TARGET_LABELS = {
    "token": "wait for token",
    "run": "wait for child run",
    "sleep": "sleep",
    "message": "receive",
    "approval": "approval",
    "deadline": "wait for tokens",
}

MAX_ROWS = 120
WIDTH = 960
LABEL_WIDTH = 230
PLOT_LEFT = LABEL_WIDTH + 10
PLOT_RIGHT = WIDTH - 12
AXIS_HEIGHT = 26
ROW_HEIGHT = 22
BAR_HEIGHT = 14
MIN_BAR = 2.0
INDENT = 14
CHAR_WIDTH = 6.2
"""About the width of a character of the picture's 11px font: enough to place texts."""
_TICK_STEPS_MS = (
    *(n * 10**p for p in range(3) for n in (1, 2, 5)),
    *(s * 1000 for s in (1, 2, 5, 10, 15, 30)),
    *(m * 60_000 for m in (1, 2, 5, 10, 15, 30)),
    *(h * 3_600_000 for h in (1, 2, 3, 6, 12)),
    *(d * 86_400_000 for d in (1, 2, 7, 14, 30, 90, 365)),
)
MAX_TICKS = 8


@dataclass(frozen=True)
class Span:
    """A stretch of time, in ms since the run was created."""

    start_ms: int
    end_ms: int

    @property
    def ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Row:
    """One line of the waterfall: what it is, its bars, and how it ended."""

    kind: str
    """``attempt``, ``step``, ``wait``, ``child`` (a child run waited on) or ``call`` (any
    other durable call, e.g. a child triggered without waiting)."""
    label: str
    spans: tuple[Span, ...]
    attempt: int
    ok: bool = True
    outcome: str = ""
    open: bool = False
    """Its last bar is still going: it reaches the right edge ("now")."""
    depth: int = 0
    href: str | None = None
    key: str | None = None
    """The journal key of the entry that drew it (a step's, or the one that ended a wait)."""
    about: str = ""
    """A line more for its title: the token or run it is about."""
    count: int = 1
    """How many rows it stands for (more than one past ``MAX_ROWS``)."""
    failed: int = 0
    """Of the rows it stands for, how many failed (a row standing for itself: ``ok``)."""

    @property
    def failures(self) -> int:
        return self.failed if self.count > 1 else int(not self.ok)

    @property
    def ms(self) -> int:
        return sum(span.ms for span in self.spans)

    @property
    def title(self) -> str:
        """What a pointer hovering over the row reads: its real duration, always."""
        went = f"{took(self.ms)} so far" if self.open else took(self.ms)
        parts = [f"{self.label}: {went}", self.outcome, self.about]
        return " · ".join(part for part in parts if part)


@dataclass(frozen=True)
class Bars:
    """The rows of a run's waterfall and the length of its time axis."""

    rows: tuple[Row, ...]
    end_ms: int
    """Where the axis ends: the run's last entry, or now while it goes on."""


@dataclass
class _Draft:
    kind: str
    label: str
    attempt: int
    spans: list[list[int]]
    ok: bool = True
    outcome: str = ""
    open: bool = False
    depth: int = 0
    href: str | None = None
    key: str | None = None
    about: str = ""
    ended: bool = True
    """False while the last span's end is not known yet (a child run still going)."""
    children: dict[str, _Draft] = field(default_factory=dict)

    def freeze(self) -> Row:
        return Row(
            kind=self.kind,
            label=self.label,
            spans=tuple(Span(start, max(start, end)) for start, end in self.spans),
            attempt=self.attempt,
            ok=self.ok,
            outcome=self.outcome,
            open=self.open,
            depth=self.depth,
            href=self.href,
            key=self.key,
            about=self.about,
        )


class _Builder:
    """One pass over the timeline, oldest first, keeping the attempt that executes and the
    wait the run is parked on."""

    def __init__(self, origin: datetime) -> None:
        self.origin = origin
        self.rows: list[_Draft] = []
        self.attempts: dict[int, _Draft] = {}
        self.running: _Draft | None = None
        self.parked: _Draft | None = None
        self.resumed: _Draft | None = None
        """The wait the run just resumed from: the next journal entry says how it ended."""

    def ms(self, at: datetime) -> int:
        return max(0, (at - self.origin) // timedelta(milliseconds=1))

    def add(self, entry: TimelineEntry) -> None:
        if entry.key is None:
            self.event(entry, self.ms(entry.at))
        else:
            self.call(entry, self.ms(entry.at))

    def event(self, entry: TimelineEntry, t: int) -> None:
        if entry.kind == "attempt_started":
            self.stop(t, None)  # an attempt that ended without a word: it ends here
            self.resume(t)
            row = self.attempts.get(entry.attempt)
            if row is None:
                row = _Draft("attempt", f"attempt {entry.attempt}", entry.attempt, [])
                self.attempts[entry.attempt] = row
                self.rows.append(row)
            row.spans.append([t, t])
            row.ok, row.outcome = True, ""
            self.running = row
        elif entry.kind in _ATTEMPT_ENDS:
            self.stop(t, entry)
            if entry.kind == "waiting":
                self.park(entry, t)
            elif entry.kind in _RUN_ENDS and self.parked is not None:
                wait, self.parked = self.parked, None
                wait.spans[-1][1] = t
                wait.ok, wait.outcome = False, f"run {_ended(entry)}"

    def stop(self, t: int, entry: TimelineEntry | None) -> None:
        """The executing attempt stops at ``t`` because of ``entry`` (None: unknown)."""
        row, self.running = self.running, None
        if row is None:
            return
        row.spans[-1][1] = t
        if entry is None or entry.kind == "waiting":
            return
        detail = entry.detail or {}
        if entry.kind == "retrying":
            row.ok = False
            row.outcome = f"failed: {detail.get('error', '')}; retried after " + took(
                int(detail.get("delayMs", 0))
            )
        else:
            row.outcome = _ended(entry)
            row.ok = row.outcome == "completed"

    def park(self, entry: TimelineEntry, t: int) -> None:
        targets = entry.waiting_on or []
        ids = (entry.detail or {}).get("on", [])
        kinds = [target.kind for target in targets]
        label = _TARGET_LABELS.get(kinds[0], "wait") if len(set(kinds)) == 1 else "wait"
        if kinds.count("token") > 1 or "deadline" in kinds:
            label = "wait for tokens"
        elif kinds.count("run") > 1:
            label = f"wait for {kinds.count('run')} child runs"
        wait = _Draft("wait", label, entry.attempt, [[t, t]], outcome="waiting")
        if len(ids) == 1 and kinds == ["token"]:
            wait.label = f"wait for token …{ids[0][-6:]}"
            wait.href, wait.about = f"/ui/tokens/{ids[0]}", ids[0]
        self.rows.append(wait)
        self.parked = wait
        for target in targets:
            if target.kind == "run" and target.run_id:
                self.child(wait, target.run_id, self.ms(target.created_at), target)

    def resume(self, t: int) -> None:
        wait, self.parked = self.parked, None
        if wait is not None:
            wait.spans[-1][1] = t
            self.resumed = wait

    def child(
        self, wait: _Draft, run_id: str, start: int, target: WaitTarget | None = None
    ) -> _Draft:
        found = wait.children.get(run_id)
        if found is not None:
            return found
        row = _Draft(
            "child",
            f"↳ {run_id}",
            wait.attempt,
            [[start, start]],
            depth=1,
            href=f"/ui/runs/{run_id}",
            about=run_id,
            ended=False,
        )
        if target is not None and target.status is not WaitpointStatus.WAITING:
            row.outcome = "finished"
        after = self.rows.index(wait) + len(wait.children) + 1
        self.rows.insert(after, row)
        wait.children[run_id] = row
        return row

    def call(self, entry: TimelineEntry, t: int) -> None:
        resumed, self.resumed = self.resumed, None
        if entry.kind in _LEFT_OUT:
            return
        name = f"{entry.kind.replace('_', ' ')} {entry.name}".strip()
        children = entry.kind in ("trigger", "batch")
        if entry.kind in WAIT_KINDS and resumed is not None:
            self.settle(resumed, entry, name)
            return
        if entry.kind in WAIT_KINDS and not (children and not isinstance(entry.value, list)):
            self.settle(self.inline_wait(entry, t), entry, name)
            return
        start = max(0, t - (entry.duration_ms or 0))
        kind = "step" if entry.kind == "step" else "call"
        row = _Draft(kind, name, entry.attempt, [[start, t]], key=entry.key)
        if entry.error is not None:
            row.ok, row.outcome = False, f"{entry.error.name}: {entry.error.message}"
        elif children and isinstance(entry.value, dict):  # started, not waited on
            child_id = entry.value.get("id")
            if isinstance(child_id, str):
                row.href, row.about, row.outcome = f"/ui/runs/{child_id}", child_id, "started"
        self.rows.append(row)

    def inline_wait(self, entry: TimelineEntry, t: int) -> _Draft:
        wait = _Draft("wait", "", entry.attempt, [[t, t]])
        self.rows.append(wait)
        return wait

    def settle(self, wait: _Draft, entry: TimelineEntry, name: str) -> None:
        """What the journal entry of a wait says about how it ended."""
        wait.label, wait.key = name, entry.key
        wait.outcome, wait.ok = _outcome(entry)
        if entry.kind == "wait_for_token":  # ids share their first characters: the end
            wait.label = f"wait for token …{entry.name[-6:]}"
            wait.href, wait.about = f"/ui/tokens/{entry.name}", entry.name
        if entry.kind in ("trigger", "batch") and isinstance(entry.value, list):
            for waitpoint in entry.value:
                self.settle_child(wait, waitpoint, entry.name)

    def settle_child(self, wait: _Draft, waitpoint: Any, task: str) -> None:
        data = waitpoint.get("data") if isinstance(waitpoint, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("runId"), str):
            return
        start = _ms_of(waitpoint.get("createdAt"), self)
        row = self.child(wait, data["runId"], start if start is not None else wait.spans[-1][0])
        row.label = f"↳ {task}" if task else row.label
        end = _ms_of(waitpoint.get("completedAt"), self)
        if end is not None:
            row.spans[-1][1], row.ended = end, True
        status = str(data.get("status") or "")
        row.outcome, row.ok = status.lower().replace("_", " "), status == "COMPLETED"

    def finish(self, end: int, going: bool) -> list[Row]:
        """Close what is still open at ``end``; ``going``: the run goes on (else it ended, and
        what no entry closed stops where the picture stops)."""
        if self.running is not None:
            self.running.spans[-1][1] = end
            self.running.open, self.running.outcome = going, "executing" if going else ""
        if self.parked is not None:
            self.parked.spans[-1][1] = end
            self.parked.open = going
        for row in self.rows:
            if row.kind == "child" and not row.ended:
                row.spans[-1][1] = end
                row.open = going and not row.outcome
                row.outcome = row.outcome or "running"
        return [row.freeze() for row in self.rows]


def _ended(entry: TimelineEntry) -> str:
    """An event that ended an attempt or the run, in a word or two."""
    detail = entry.detail or {}
    if entry.kind == "finished":
        status = str(detail.get("status", "finished")).lower().replace("_", " ")
        error = detail.get("error")
        return f"{status}: {error}" if error else status
    return entry.kind.replace("_", " ")


def _ms_of(value: Any, builder: _Builder) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return builder.ms(datetime.fromisoformat(value))
    except ValueError:
        return None


def _outcome(entry: TimelineEntry) -> tuple[str, bool]:
    """How a wait ended, from the journal entry its run wrote when it resumed."""
    if entry.error is not None:
        return f"{entry.error.name}: {entry.error.message}", False
    token, value = entry.token, entry.value
    if entry.kind == "wait_for_token" and token is not None:
        if token.status is WaitpointStatus.COMPLETED:
            via = token.completed_via
            return ("completed via " + via.value if via else "completed"), True
        return _CLOSED.get(token.status, token.status.value.lower()), False
    if isinstance(value, list):  # children waited on: their statuses
        statuses = Counter(
            str((item.get("data") or {}).get("status", "?")).lower().replace("_", " ")
            for item in value
            if isinstance(item, dict)
        )
        words = ", ".join(f"{n} {status}" if n > 1 else status for status, n in statuses.items())
        return words, set(statuses) <= {"completed"}
    if not isinstance(value, dict):
        return "done", True
    if value.get("timedOut"):
        return "timed out", False
    if entry.kind == "approval":
        return ("approved" if value.get("approved") else "rejected"), True
    if entry.kind == "receive":
        return f"message {value['n']}" if "n" in value else "received", True
    if entry.kind == "sleep":
        since, until = value.get("createdAt"), value.get("expiresAt")
        if not isinstance(since, str) or not isinstance(until, str):
            return "slept", True
        try:
            length = datetime.fromisoformat(until) - datetime.fromisoformat(since)
        except ValueError:
            return "slept", True
        return f"slept {took(length // timedelta(milliseconds=1))}", True
    return "completed", True


def rows_of(timeline: Sequence[TimelineEntry], now: datetime | None = None) -> Bars:
    """What each bar spans. ``now``: the run goes on (what it executes or waits on reaches
    ``now``); None: it is finished, and the axis ends at its last entry."""
    if not timeline:
        return Bars((), 1)
    builder = _Builder(timeline[0].at)
    for entry in timeline:
        builder.add(entry)
    end = builder.ms(timeline[-1].at)
    if now is not None:
        end = max(end, builder.ms(now))
    rows = builder.finish(end, now is not None)
    end = max([end, 1, *(span.end_ms for row in rows for span in row.spans)])
    return Bars(tuple(rows), end)


_SHARED = {
    "step": ("steps", "failed"),
    "wait": ("waits", "did not complete"),
    "child": ("child runs", "did not complete"),
}
"""Rows that may share one past ``MAX_ROWS``: what a shared row is called, and its bad ones."""


def grouped(rows: Sequence[Row], limit: int = MAX_ROWS) -> tuple[list[Row], int]:
    """At most ``limit`` rows: past it, runs of consecutive steps (or waits, or child runs of
    one wait) of one attempt share a row (each keeps its bar), then the rows still past the
    limit are left out. Returns the rows and how many rows of ``rows`` are not drawn."""
    if len(rows) <= limit:
        return list(rows), 0
    runs: list[list[Row]] = []
    for row in rows:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and row.kind in _SHARED
            and (row.kind, row.depth, row.attempt) == (last.kind, last.depth, last.attempt)
            and not row.open
        ):
            runs[-1].append(row)
        else:
            runs.append([row])
    merged = [run[0] if len(run) == 1 else _shared(run) for run in runs]
    kept = merged[:limit]
    return kept, len(rows) - sum(row.count for row in kept)


def _shared(rows: list[Row]) -> Row:
    """One row for ``rows`` (of one kind): every bar, how many there are, how many failed."""
    first = rows[0]
    noun, bad = _SHARED[first.kind]
    failed = sum(row.failures for row in rows)
    return replace(
        first,
        label=f"{len(rows)} {noun}",
        spans=tuple(span for row in rows for span in row.spans),
        ok=failed == 0,
        outcome=f"{failed} {bad}" if failed else "",
        href=None,
        key=None,
        about=f"attempt {first.attempt}",
        count=len(rows),
        failed=failed,
    )


@dataclass(frozen=True)
class Box:
    """A bar, placed: its real duration in ``ms`` (its width may be ``MIN_BAR`` instead)."""

    x: float
    width: float
    start_ms: int
    ms: int
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    text: str
    anchor: str = "start"
    inside: bool = False
    """Written over its bar (no room beside it)."""


@dataclass(frozen=True)
class PlacedRow:
    row: Row
    y: float
    """The top of its bars."""
    label: Label
    boxes: tuple[Box, ...]
    outcome: Label | None


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Waterfall:
    """Everything the template draws, in SVG user units (``width`` by ``height``)."""

    rows: tuple[PlacedRow, ...]
    ticks: tuple[Tick, ...]
    width: int
    height: int
    summary: str
    """The picture in one sentence: the SVG's ``aria-label``."""
    left_out: int
    """Rows not drawn (past ``MAX_ROWS``, after grouping)."""
    shared: bool
    """Some rows stand for several steps or waits."""
    bar_height: int = BAR_HEIGHT
    plot_left: int = PLOT_LEFT
    axis_y: int = AXIS_HEIGHT


def lay_out(bars: Bars, limit: int = MAX_ROWS) -> Waterfall:
    """Positions: widths proportional to durations on one scale (``MIN_BAR`` at least)."""
    rows, left_out = grouped(bars.rows, limit)
    scale = (PLOT_RIGHT - PLOT_LEFT) / bars.end_ms
    placed = []
    for index, row in enumerate(rows):
        y = AXIS_HEIGHT + index * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
        boxes = _boxes(row, scale)
        indent = row.depth * INDENT
        label = Label(8 + indent, _fit(row.label, (LABEL_WIDTH - 8 - indent) / CHAR_WIDTH))
        placed.append(PlacedRow(row, round(y, 1), label, boxes, _outcome_label(row, boxes)))
    height = AXIS_HEIGHT + len(rows) * ROW_HEIGHT + 6
    return Waterfall(
        rows=tuple(placed),
        ticks=ticks(bars.end_ms, scale),
        width=WIDTH,
        height=height,
        summary=summary(bars),
        left_out=left_out,
        shared=any(row.count > 1 for row in rows),
    )


def _boxes(row: Row, scale: float) -> tuple[Box, ...]:
    """A bar per span; on a shared row, bars less than a pixel apart become one."""
    boxes: list[Box] = []
    for span in sorted(row.spans, key=lambda s: s.start_ms):
        x = PLOT_LEFT + span.start_ms * scale
        width = max(span.ms * scale, MIN_BAR)
        x = min(x, PLOT_RIGHT - width)  # a minimum-width bar at the right edge stays inside
        last = boxes[-1] if boxes else None
        if last is not None and row.count > 1 and x <= last.x + last.width + 1:
            right = max(last.x + last.width, x + width)
            boxes[-1] = replace(last, width=right - last.x, ms=last.ms + span.ms)
            continue
        boxes.append(Box(x, width, span.start_ms, span.ms, ""))
    return tuple(
        Box(
            round(box.x, 2),
            round(box.width, 2),
            box.start_ms,
            box.ms,
            row.title if len(boxes) == 1 or row.count > 1 else f"{row.label}: {took(box.ms)}",
        )
        for box in boxes
    )


def _outcome_label(row: Row, boxes: tuple[Box, ...]) -> Label | None:
    """How the row ended, told next to where it ended: after its last bar, else before it
    (after the bar before it, if any), else inside it; where none holds all of it, wherever
    most of it fits."""
    if not row.outcome or not boxes:
        return None
    last = boxes[-1]
    after = last.x + last.width + 4
    before = last.x - 4
    left = boxes[-2].x + boxes[-2].width + 4 if len(boxes) > 1 else PLOT_LEFT
    places = [
        (WIDTH - 2 - after, Label(round(after, 2), "")),
        (before - left, Label(round(before, 2), "", "end")),
        (last.width - 12, Label(round(last.x + 6, 2), "", inside=True)),
    ]
    wanted = len(row.outcome) * CHAR_WIDTH
    room, place = next(((r, p) for r, p in places if wanted <= r), max(places, key=_room))
    return replace(place, text=_fit(row.outcome, room / CHAR_WIDTH))


def _room(place: tuple[float, Label]) -> float:
    return place[0]


def _fit(text: str, chars: float) -> str:
    limit = int(chars)
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…" if limit > 1 else ""


def ticks(end_ms: int, scale: float) -> tuple[Tick, ...]:
    """At most ``MAX_TICKS`` + 1 round moments (1 s, 2 s, 5 s, 10 s, 1 min...) from 0."""
    step = next((s for s in _TICK_STEPS_MS if end_ms / s <= MAX_TICKS), None)
    if step is None:  # longer than MAX_TICKS years: years apart
        step = -(-end_ms // (MAX_TICKS * _TICK_STEPS_MS[-1])) * _TICK_STEPS_MS[-1]
    return tuple(
        Tick(round(PLOT_LEFT + moment * scale, 2), tick_label(moment))
        for moment in range(0, end_ms + 1, step)
    )


def tick_label(ms: int) -> str:
    """``0``, ``500ms``, ``1.5s``, ``2m30s``, ``1h30m``, ``2d``."""
    if ms == 0:
        return "0"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    parts = []
    rest = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        if len(parts) == 2:
            break
    return "".join(parts)


def summary(bars: Bars) -> str:
    """The picture in words, for a screen reader (the table below has every detail)."""
    kinds = Counter(row.kind for row in bars.rows)
    failed = sum(1 for row in bars.rows if row.kind == "step" and not row.ok)
    parts = [
        _count(kinds["attempt"], "attempt"),
        _count(kinds["step"], "step") + (f" ({failed} failed)" if failed else ""),
        _count(kinds["wait"], "wait"),
    ]
    if kinds["child"]:
        parts.append(_count(kinds["child"], "child run"))
    return f"Waterfall of the run over {took(bars.end_ms)}: {', '.join(parts)}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def waterfall(timeline: Sequence[TimelineEntry], now: datetime | None = None) -> Waterfall | None:
    """The run's picture, or None when its timeline has nothing to draw (not started)."""
    bars = rows_of(timeline, now)
    if not bars.rows:
        return None
    return lay_out(bars)
