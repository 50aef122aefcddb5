"""The pictures' arithmetic, without a browser: a run's timeline as waterfall bars (where each
bar starts and how wide it is), and the runs and tokens pages' counts.

The synthetic run steps, waits on a token, fails a step and is retried after a back-off,
then waits on a child run: entries as ``engine.runs.timeline`` gives them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.models import (
    CompletionSource,
    Run,
    RunError,
    RunStatus,
    TimelineEntry,
    Token,
    WaitpointStatus,
    WaitTarget,
)
from engine.ui import charts
from engine.ui.waterfall import (
    MAX_ROWS,
    MIN_BAR,
    PLOT_LEFT,
    PLOT_RIGHT,
    Bars,
    lay_out,
    rows_of,
    tick_label,
    waterfall,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "waitpoint_01jtoken000000000000abc123"
CHILD = "run_01jchild0000000000000000"
CHILD_WAIT = "waitpoint_01jchildwait00000000000"


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def event(ms: int, kind: str, attempt: int = 1, **detail: Any) -> TimelineEntry:
    return TimelineEntry(
        kind=kind, name="", attempt=attempt, at=at(ms), ok=True, detail=detail or None
    )


def call(ms: int, kind: str, name: str = "", attempt: int = 1, **fields: Any) -> TimelineEntry:
    key = f"{kind}:{name}#0" if name else f"{kind}#0"
    return TimelineEntry(
        kind=kind,
        name=name,
        attempt=attempt,
        at=at(ms),
        ok=fields.get("error") is None,
        key=key,
        **fields,
    )


def token(status: WaitpointStatus, via: CompletionSource | None = None) -> Token:
    return Token(
        id=TOKEN,
        status=status,
        url="",
        created_at=at(150),
        completed_at=at(1100),
        completed_via=via,
    )


def waiting(ms: int, attempt: int, *targets: WaitTarget) -> TimelineEntry:
    entry = event(ms, "waiting", attempt, on=[target.id for target in targets])
    return entry.model_copy(update={"waiting_on": list(targets)})


def the_run() -> list[TimelineEntry]:
    """Steps, a token wait completed through the API, a failed step retried after 1 s, a
    child run waited on; 5 s from creation to the end."""
    boom = RunError(name="ConnectionError", message="gateway timed out")
    child = {
        "id": CHILD_WAIT,
        "createdAt": at(2800).isoformat(),
        "completedAt": at(4700).isoformat(),
        "data": {"runId": CHILD, "status": "COMPLETED", "output": 1, "error": None},
    }
    return [
        event(0, "created", 0),
        event(0, "attempt_started", 1, worker="w1"),
        call(100, "step", "reserve", duration_ms=100, value=1),
        call(150, "create_token", token=token(WaitpointStatus.WAITING)),
        waiting(200, 1, WaitTarget(id=TOKEN, kind="token", status="COMPLETED", created_at=at(150))),
        event(1200, "attempt_started", 1, worker="w1"),
        call(
            1200,
            "wait_for_token",
            TOKEN,
            token=token(WaitpointStatus.COMPLETED, CompletionSource.API),
        ),
        call(1500, "step", "charge", duration_ms=300, error=boom),
        event(1500, "retrying", 1, error="gateway timed out", delayMs=1000),
        event(2500, "attempt_started", 2, worker="w1"),
        call(2800, "step", "charge", attempt=2, duration_ms=300, value="ch_1"),
        waiting(
            2800,
            2,
            WaitTarget(
                id=CHILD_WAIT, kind="run", status="COMPLETED", created_at=at(2800), run_id=CHILD
            ),
        ),
        event(4800, "attempt_started", 2, worker="w1"),
        call(4800, "trigger", "pack", attempt=2, value=[child]),
        event(5000, "finished", 2, status="COMPLETED"),
    ]


def spans(bars: Bars, kind: str) -> list[list[tuple[int, int]]]:
    return [[(s.start_ms, s.end_ms) for s in row.spans] for row in bars.rows if row.kind == kind]


def test_each_attempt_step_wait_and_child_run_gets_its_bars() -> None:
    bars = rows_of(the_run())
    assert bars.end_ms == 5000
    assert [(row.kind, row.label) for row in bars.rows] == [
        ("attempt", "attempt 1"),
        ("step", "step reserve"),
        ("wait", "wait for token …abc123"),
        ("step", "step charge"),
        ("attempt", "attempt 2"),
        ("step", "step charge"),
        ("wait", "trigger pack"),
        ("child", "↳ pack"),
    ]
    # an attempt executes in pieces: until it parks, from its resume until it fails
    assert spans(bars, "attempt") == [[(0, 200), (1200, 1500)], [(2500, 2800), (4800, 5000)]]
    # a step ends when its entry was written and lasted its duration_ms
    assert spans(bars, "step") == [[(0, 100)], [(1200, 1500)], [(2500, 2800)]]
    # a wait: from parking to resuming; its child: from its creation to its end
    assert spans(bars, "wait") == [[(200, 1200)], [(2800, 4800)]]
    assert spans(bars, "child") == [[(2800, 4700)]]


def test_rows_say_how_they_ended_and_link_to_what_they_are_about() -> None:
    rows = {(row.kind, row.attempt): row for row in rows_of(the_run()).rows if row.kind != "step"}
    first, second = rows["attempt", 1], rows["attempt", 2]
    assert not first.ok and first.outcome == "failed: gateway timed out; retried after 1.0 s"
    assert second.ok and second.outcome == "completed"
    token_wait = rows["wait", 1]
    assert token_wait.outcome == "completed via api"
    assert token_wait.href == f"/ui/tokens/{TOKEN}"
    assert token_wait.key == f"wait_for_token:{TOKEN}#0"
    child = rows["child", 2]
    assert child.href == f"/ui/runs/{CHILD}" and child.depth == 1
    assert child.outcome == "completed" and CHILD in child.title
    failed = [row for row in rows_of(the_run()).rows if row.kind == "step" and not row.ok]
    assert [row.outcome for row in failed] == ["ConnectionError: gateway timed out"]


def test_widths_are_proportional_to_durations_and_a_retry_leaves_a_gap() -> None:
    picture = lay_out(rows_of(the_run()))
    scale = (PLOT_RIGHT - PLOT_LEFT) / 5000
    for placed in picture.rows:
        for box in placed.boxes:
            assert box.x == pytest.approx(PLOT_LEFT + box.start_ms * scale, abs=0.01)
            assert box.width == pytest.approx(box.ms * scale, abs=0.01)
    by_label = {placed.row.label: placed for placed in picture.rows}
    token_wait = by_label["wait for token …abc123"].boxes[0]
    reserve = by_label["step reserve"].boxes[0]
    assert token_wait.width / reserve.width == pytest.approx(1000 / 100)
    first, second = by_label["attempt 1"].boxes, by_label["attempt 2"].boxes
    gap = second[0].x - (first[-1].x + first[-1].width)
    assert gap == pytest.approx(1000 * scale, abs=0.01)  # the back-off before attempt 2
    assert [tick.label for tick in picture.ticks] == ["0", "1s", "2s", "3s", "4s", "5s"]
    assert picture.ticks[-1].x == pytest.approx(PLOT_RIGHT)


def test_every_bar_has_a_title_and_the_picture_a_summary() -> None:
    picture = lay_out(rows_of(the_run()))
    assert all(box.title for placed in picture.rows for box in placed.boxes)
    assert picture.summary == (
        "Waterfall of the run over 5.0 s: 2 attempts, 3 steps (1 failed), 2 waits, 1 child run."
    )


def test_a_zero_length_step_is_drawn_narrow_and_titled_with_its_real_duration() -> None:
    timeline = [
        event(0, "attempt_started"),
        call(0, "step", "instant", duration_ms=0, value=None),
        call(1000, "step", "slow", duration_ms=1000, value=None),
        event(1000, "finished", status="COMPLETED"),
    ]
    picture = waterfall(timeline)
    assert picture is not None
    instant = next(p for p in picture.rows if p.row.label == "step instant").boxes[0]
    assert instant.width == MIN_BAR and instant.ms == 0
    assert instant.title == "step instant: 0 ms"


def test_how_a_row_ended_is_written_beside_its_bar_or_inside_it() -> None:
    timeline = [
        event(0, "attempt_started"),
        waiting(0, 1, WaitTarget(id=TOKEN, kind="token", status="COMPLETED", created_at=at(0))),
        event(9900, "attempt_started"),
        call(9900, "wait_for_token", TOKEN, token=token(WaitpointStatus.TIMED_OUT)),
        call(10_000, "step", "late", duration_ms=100, error=RunError(name="E", message="x")),
        event(10_000, "finished", status="FAILED", error="x"),
    ]
    picture = waterfall(timeline)
    assert picture is not None
    placed = {p.row.label: p for p in picture.rows}
    wait = placed["wait for token …abc123"]
    assert wait.outcome is not None and wait.outcome.text == "timed out"
    assert wait.outcome.inside and wait.outcome.x > wait.boxes[0].x  # no room beside it
    late = placed["step late"]  # at the right edge: its words go before it
    assert late.outcome is not None and late.outcome.anchor == "end"
    assert late.outcome.x < late.boxes[0].x and late.outcome.text == "E: x"


def test_a_run_still_waiting_reaches_now_with_an_open_bar() -> None:
    timeline = the_run()[:5]  # parked on the token
    now = at(3000)
    bars = rows_of(timeline, now)
    assert bars.end_ms == 3000
    wait = next(row for row in bars.rows if row.kind == "wait")
    assert wait.open
    assert [(s.start_ms, s.end_ms) for s in wait.spans] == [(200, 3000)]
    assert wait.outcome == "waiting"
    assert wait.title.startswith("wait for token …abc123: 2.8 s so far")


def test_a_wait_that_did_not_park_and_one_ended_by_a_cancel() -> None:
    timeline = [
        event(0, "attempt_started"),
        call(10, "sleep", value={"createdAt": at(10).isoformat(), "expiresAt": at(10).isoformat()}),
        waiting(20, 1, WaitTarget(id="wp", kind="message", status="WAITING", created_at=at(20))),
        event(900, "canceled"),
    ]
    rows = rows_of(timeline).rows
    inline, parked = [row for row in rows if row.kind == "wait"]
    assert [(s.start_ms, s.end_ms) for s in inline.spans] == [(10, 10)]
    assert inline.outcome == "slept 0 ms"
    assert parked.label == "receive" and not parked.ok and parked.outcome == "run canceled"
    assert [(s.start_ms, s.end_ms) for s in parked.spans] == [(20, 900)]


def test_a_thousand_entries_draw_a_bounded_picture_quickly() -> None:
    timeline = [event(0, "created", 0), event(0, "attempt_started")]
    for i in range(1000):
        timeline.append(call(10 * i + 10, "step", f"s{i}", duration_ms=10, value=i))
        timeline.append(call(10 * i + 10, "create_token", token=token(WaitpointStatus.WAITING)))
    timeline.append(event(10_010, "finished", status="COMPLETED"))
    started = time.perf_counter()
    picture = waterfall(timeline)
    took = time.perf_counter() - started
    assert picture is not None
    assert len(picture.rows) == 2 and picture.shared and picture.left_out == 0
    steps = picture.rows[1]
    assert steps.row.label == "1000 steps" and steps.row.count == 1000
    assert len(steps.boxes) == 1  # bars less than a pixel apart are one
    assert "1000 steps" in picture.summary
    assert took < 0.5


def test_past_the_limit_rows_that_cannot_share_are_counted_not_drawn() -> None:
    timeline = [event(0, "attempt_started")]
    for i in range(MAX_ROWS + 30):  # steps and waits alternate: nothing to share
        timeline.append(call(10 * i + 5, "step", f"s{i}", duration_ms=5, value=i))
        timeline.append(call(10 * i + 10, "sleep", value={}))
    picture = waterfall(timeline)
    assert picture is not None
    assert len(picture.rows) == MAX_ROWS
    assert picture.left_out == 1 + 2 * (MAX_ROWS + 30) - MAX_ROWS


@pytest.mark.parametrize(
    ("ms", "label"),
    [(0, "0"), (500, "500ms"), (1500, "1.5s"), (90_000, "1m30s"), (5_400_000, "1h30m")],
)
def test_tick_labels(ms: int, label: str) -> None:
    assert tick_label(ms) == label


def test_nothing_to_draw_before_the_run_starts() -> None:
    assert waterfall([event(0, "created", 0)]) is None
    assert waterfall([]) is None


NOW = datetime(2025, 3, 1, 12, 30, 20, tzinfo=UTC)


def run(status: RunStatus, finished: datetime | None) -> Run:
    return Run(
        id=f"run_{finished}",
        task_identifier="t",
        status=status,
        created_at=NOW - timedelta(hours=2),
        updated_at=NOW,
        finished_at=finished,
    )


def test_runs_finished_per_minute_stack_by_status() -> None:
    runs = [
        run(RunStatus.COMPLETED, NOW - timedelta(seconds=5)),  # 12:30, the minute going on
        run(RunStatus.COMPLETED, NOW - timedelta(seconds=10)),
        run(RunStatus.FAILED, NOW - timedelta(seconds=15)),
        run(RunStatus.CANCELED, NOW - timedelta(minutes=30)),  # 12:00
        run(RunStatus.COMPLETED, NOW - timedelta(minutes=61)),  # before the hour: left out
        run(RunStatus.WAITING, None),
    ]
    chart = charts.finished_per_minute(runs, NOW)
    assert [(p.status, p.count, p.title) for p in chart.pieces] == [
        ("CANCELED", 1, "12:00 UTC: 1 canceled"),
        ("COMPLETED", 2, "12:30 UTC: 2 completed"),
        ("FAILED", 1, "12:30 UTC: 1 failed"),
    ]
    completed, failed = chart.pieces[1:]
    assert completed.x == failed.x and failed.y + failed.height == pytest.approx(completed.y)
    assert completed.height == pytest.approx(2 * failed.height)
    assert chart.totals == (("COMPLETED", 2), ("FAILED", 1), ("CANCELED", 1))
    assert [mark.label for mark in chart.counts] == ["0", "5"]  # 3 at most: up to 5
    assert chart.times[0].label == "11:31" and chart.times[-1].label == "12:31"
    assert chart.summary == (
        "Runs finished per minute from 11:31 to 12:31 UTC: 2 completed, 1 failed, 1 canceled;"
        " at most 3 in a minute (12:30)."
    )
    assert charts.finished_per_minute([], NOW).summary.endswith(": none.")


def test_waiting_tokens_expiring_within_the_hour_and_the_day() -> None:
    def waiting_token(expires_in: timedelta | None) -> Token:
        expires = None if expires_in is None else NOW + expires_in
        return Token(id="t", status="WAITING", url="", created_at=NOW, expires_at=expires)

    tokens = [
        waiting_token(timedelta(minutes=-1)),  # overdue: its timer has not closed it yet
        waiting_token(timedelta(minutes=30)),
        waiting_token(timedelta(hours=5)),
        waiting_token(timedelta(days=3)),
        waiting_token(None),
    ]
    counted = charts.expiring(tokens, NOW, complete=True)
    assert (counted.within_hour, counted.within_day) == (2, 3)
