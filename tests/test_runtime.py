"""The durable runtime, end to end through a real worker and a real SQLite file."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    CompletionSource,
    ConfigurationError,
    Engine,
    NotInRunError,
    Retry,
    RunFailedError,
    TaskNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    WaitpointCancelledError,
    WaitpointTimeoutError,
    complete_token,
    create_token,
    current_run,
    step,
    task,
    update_metadata,
    wait_for_token,
)
from engine.errors import LeaseLostError
from engine.storage import JournalWrite

from .conftest import StartWorker, wait_for_status

CALLS: Counter[str] = Counter()


def count(name: str) -> str:
    CALLS[name] += 1
    return name


async def waiting_token(engine: Engine, run_id: str) -> str:
    await wait_for_status(engine, run_id, "WAITING")
    run = await engine.runs.retrieve(run_id)
    assert len(run.waiting_on) == 1
    return run.waiting_on[0]


@task("rt-replay")
async def replay_task(payload: dict[str, Any]) -> dict[str, Any]:
    results = [await step(f"s{i}", count, f"{payload['tag']}-{i}") for i in range(3)]
    token = await create_token(timeout="1h")
    first = await wait_for_token(token)
    after = await step("after", count, f"{payload['tag']}-after")
    second = await wait_for_token(await create_token())
    return {"steps": results, "first": first.output, "after": after, "second": second.output}


async def test_replay_returns_journaled_results_without_rerunning_steps(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([replay_task])
    run = await engine.trigger("rt-replay", {"tag": "replay"})
    await engine.tokens.complete(await waiting_token(engine, run.id), 1)
    await engine.tokens.complete(await waiting_token(engine, run.id), 2)
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {
        "steps": ["replay-0", "replay-1", "replay-2"],
        "first": 1,
        "after": "replay-after",
        "second": 2,
    }
    assert {k: v for k, v in CALLS.items() if k.startswith("replay-")} == {
        "replay-0": 1,
        "replay-1": 1,
        "replay-2": 1,
        "replay-after": 1,
    }
    assert done.attempt_count == 1  # resuming after a wait is not a new attempt


STEP_NAME = {"value": "before"}


@task("rt-nondeterminism")
async def changing_task(payload: None) -> str:
    await step(STEP_NAME["value"], count, "nd")
    await wait_for_token(await create_token())
    return "done"


async def test_changed_code_fails_the_run_with_nondeterminism_error(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([changing_task])
    run = await engine.trigger("rt-nondeterminism")
    token_id = await waiting_token(engine, run.id)
    STEP_NAME["value"] = "after"  # the task is "edited" while the run waits
    try:
        await engine.tokens.complete(token_id, None)
        with pytest.raises(RunFailedError):
            await engine.wait_for_run(run.id, timeout=10)
    finally:
        STEP_NAME["value"] = "before"
    failed = await engine.runs.retrieve(run.id)
    assert failed.status == "FAILED"
    assert failed.error is not None
    assert failed.error.name == "engine.errors.NondeterminismError"
    assert "'step:before#0'" in failed.error.message
    assert "'step:after#0'" in failed.error.message
    assert failed.attempt_count == 1  # never retried


@task("rt-gather")
async def gather_task(payload: None) -> list[str]:
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return count("gather-slow")

    results = await asyncio.gather(step("slow", slow), step("fast", count, "gather-fast"))
    await wait_for_token(await create_token())
    return list(results)


async def test_gathered_steps_replay_whatever_order_they_finished_in(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([gather_task])
    run = await engine.trigger("rt-gather")
    await engine.tokens.complete(await waiting_token(engine, run.id))
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == ["gather-slow", "gather-fast"]
    assert CALLS["gather-slow"] == 1 and CALLS["gather-fast"] == 1


@task("rt-wait-on-id")
async def wait_on_id(payload: dict[str, str]) -> dict[str, Any]:
    result = await wait_for_token(payload["token"])
    return {"ok": result.ok, "output": result.output}


async def test_token_completed_before_the_wait_resumes_at_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    token = await engine.tokens.create()
    await engine.tokens.complete(token.id, {"early": True})
    await start_worker([wait_on_id])
    run = await engine.trigger("rt-wait-on-id", {"token": token.id})
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"ok": True, "output": {"early": True}}


@task("rt-timeout")
async def timeout_task(payload: None) -> dict[str, Any]:
    result = await wait_for_token(await create_token(timeout="1s"))
    try:
        result.unwrap()
    except WaitpointTimeoutError as exc:
        return {"ok": result.ok, "error": type(result.error).__name__, "unwrap": str(exc)}
    return {"ok": True}


async def test_timed_out_token_resumes_the_run_with_a_timeout_error(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([timeout_task])
    run = await engine.trigger("rt-timeout")
    token_id = await waiting_token(engine, run.id)
    done = await engine.wait_for_run(run.id, timeout=15)
    assert done.output["ok"] is False
    assert done.output["error"] == "WaitpointTimeoutError"
    assert "timed out at" in done.output["unwrap"]
    token = await engine.tokens.retrieve(token_id)
    assert token.status == "TIMED_OUT"
    assert token.completed_at is not None and token.expires_at is not None
    assert token.completed_at >= token.expires_at  # never early


@task("rt-cancel")
async def cancel_task(payload: None) -> dict[str, Any]:
    result = await wait_for_token(await create_token(timeout="1h"))
    return {"ok": result.ok, "cancelled": isinstance(result.error, WaitpointCancelledError)}


async def test_cancelled_token_resumes_the_run_with_a_cancelled_error(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([cancel_task])
    run = await engine.trigger("rt-cancel")
    cancelled = await engine.tokens.cancel(await waiting_token(engine, run.id))
    assert cancelled.applied and cancelled.token.status == "CANCELLED"
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"ok": False, "cancelled": True}


class Approval(BaseModel):
    approved: bool
    note: str = ""


@task("rt-typed")
async def typed_task(payload: None) -> dict[str, Any]:
    token = await create_token(schema=Approval, tags=["typed"])
    result = await wait_for_token(token)
    output = result.unwrap()
    return {"model": type(output).__name__, "approved": output.approved, "note": output.note}


async def test_typed_token_refuses_bad_data_and_parses_good_data_into_the_model(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([typed_task])
    run = await engine.trigger("rt-typed")
    token_id = await waiting_token(engine, run.id)
    with pytest.raises(ValidationError, match="approved"):
        await engine.tokens.complete(token_id, {"approved": "perhaps"})
    assert (await engine.tokens.retrieve(token_id)).status == "WAITING"
    await engine.tokens.complete(token_id, Approval(approved=True, note="ok"))
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"model": "Approval", "approved": True, "note": "ok"}


@task("rt-race")
async def race_task(payload: None) -> Any:
    return (await wait_for_token(await create_token())).output


async def test_concurrent_completions_apply_exactly_one_and_the_run_sees_it(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([race_task])
    run = await engine.trigger("rt-race")
    token_id = await waiting_token(engine, run.id)
    results = await asyncio.gather(
        *(engine.tokens.complete(token_id, {"by": i}) for i in range(10))
    )
    winners = [r for r in results if r.applied]
    assert len(winners) == 1
    assert all(r.token.data == winners[0].token.data for r in results)
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == winners[0].token.data


@task("rt-caught-step-error")
async def caught_error_task(payload: None) -> dict[str, Any]:
    def explode() -> None:
        CALLS["explode"] += 1
        raise KeyError("missing")

    try:
        await step("explode", explode)
        caught = "nothing"
    except KeyError as exc:
        caught = f"KeyError:{exc.args[0]}"
    await wait_for_token(await create_token())
    return {"caught": caught}


async def test_step_error_is_journaled_and_replayed_without_rerunning(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([caught_error_task])
    run = await engine.trigger("rt-caught-step-error")
    await engine.tokens.complete(await waiting_token(engine, run.id))
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"caught": "KeyError:missing"}
    assert CALLS["explode"] == 1


FLAKY = {"failures_left": 1}


def flaky() -> str:
    CALLS["flaky"] += 1
    if FLAKY["failures_left"] > 0:
        FLAKY["failures_left"] -= 1
        raise RuntimeError("transient")
    return "recovered"


@task("rt-retry", retry=Retry(max_attempts=3, min_delay=timedelta(milliseconds=10)))
async def retry_task(payload: None) -> list[str]:
    first = await step("stable", count, "retry-stable")
    second = await step("flaky", flaky)
    return [first, second]


async def test_retry_reruns_the_failed_step_but_not_completed_ones(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([retry_task])
    run = await engine.trigger("rt-retry")
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == ["retry-stable", "recovered"]
    assert CALLS["retry-stable"] == 1
    assert CALLS["flaky"] == 2
    assert done.attempt_count == 2


@task("rt-fails")
async def failing_task(payload: None) -> None:
    raise ValueError("the order does not exist")


async def test_a_failing_task_ends_failed_with_its_error(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([failing_task])
    run = await engine.trigger("rt-fails")
    with pytest.raises(RunFailedError, match="the order does not exist"):
        await engine.wait_for_run(run.id, timeout=10)
    failed = await engine.runs.retrieve(run.id)
    assert failed.status == "FAILED"
    assert failed.error is not None
    assert failed.error.name == "ValueError"
    assert "raise ValueError" in failed.error.stack_trace


@task("rt-bad-output")
async def bad_output_task(payload: None) -> object:
    return object()


async def test_a_non_json_return_value_fails_the_run_with_a_clear_error(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([bad_output_task])
    run = await engine.trigger("rt-bad-output")
    with pytest.raises(RunFailedError, match="not JSON-serialisable"):
        await engine.wait_for_run(run.id, timeout=10)


class Order(BaseModel):
    order_id: int


@task("rt-typed-payload")
async def typed_payload_task(payload: Order) -> int:
    return payload.order_id * 2


async def test_typed_payload_is_validated_at_trigger_and_parsed_for_the_task(
    engine: Engine, start_worker: StartWorker
) -> None:
    with pytest.raises(ValidationError, match="order_id"):
        await engine.trigger("rt-typed-payload", {"order_id": "not a number"})
    await start_worker([typed_payload_task])
    run = await engine.trigger("rt-typed-payload", {"order_id": 21})
    assert (await engine.wait_for_run(run.id, timeout=10)).output == 42


async def test_unknown_task_names_the_known_ones(engine: Engine) -> None:
    with pytest.raises(TaskNotFoundError, match="rt-replay"):
        await engine.trigger("no-such-task")


async def test_idempotent_trigger_returns_the_same_run(engine: Engine) -> None:
    first = await engine.trigger("rt-race", idempotency_key="once")
    again = await engine.trigger("rt-race", idempotency_key="once")
    assert again.id == first.id and again.is_cached and not first.is_cached


async def test_a_thousand_concurrent_triggers_all_land(engine: Engine) -> None:
    runs = await asyncio.gather(*(engine.trigger("rt-race", {"i": i}) for i in range(1000)))
    assert len({r.id for r in runs}) == 1000
    page = await engine.runs.list(status="QUEUED", limit=100)
    assert len(page.data) == 100 and page.next_cursor is not None
    seen = 0
    cursor: str | None = None
    while True:
        page = await engine.runs.list(limit=100, after=cursor)
        seen += len(page.data)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == 1000


async def test_cancelling_a_waiting_run_ends_it(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker([cancel_task])
    run = await engine.trigger("rt-cancel")
    token_id = await waiting_token(engine, run.id)
    cancelled = await engine.runs.cancel(run.id)
    assert cancelled.status == "CANCELED" and cancelled.finished_at is not None
    assert (await engine.tokens.retrieve(token_id)).status == "WAITING"  # others may use it
    again = await engine.runs.cancel(run.id)
    assert again.status == "CANCELED" and again.updated_at == cancelled.updated_at


async def test_stale_lease_epoch_writes_are_rejected(engine: Engine) -> None:
    run = await engine.trigger("rt-race")
    storage = engine.storage
    [first] = await storage.claim_runs("worker-a", 10, 1, ["rt-race"])
    await asyncio.sleep(0.01)  # the 1 ms lease runs out
    assert await storage.rescue_expired_leases() == 1
    [second] = await storage.claim_runs("worker-b", 10, 30_000, ["rt-race"])
    assert second.id == run.id and second.epoch > first.epoch  # the rescue and the claim
    write = JournalWrite(run.id, first.epoch, first.attempt, "step:x#0", 0, value=1)
    with pytest.raises(LeaseLostError):
        await storage.append_journal(write)
    await storage.append_journal(JournalWrite(run.id, second.epoch, 1, "step:x#0", 0, value=1))


async def test_durable_calls_outside_a_run_say_what_to_do(db_url: str) -> None:
    with pytest.raises(NotInRunError):
        await wait_for_token("waitpoint_x")
    with pytest.raises(NotInRunError):
        await step("x", count, "x")
    with pytest.raises(ConfigurationError, match="Engine"):
        await create_token()
    async with Engine(db_url):
        token = await create_token(timeout="1h")
        result = await complete_token(token.id, {"done": True})
        assert result.applied and result.token.completed_via == "python"
        assert not (await complete_token(token.id, {"done": False})).applied


@task("rt-max-duration", max_duration="1s")
async def bounded_task(payload: dict[str, Any]) -> str:
    await wait_for_token(payload["token"])  # waiting does not count toward max_duration
    await asyncio.sleep(payload["work_seconds"])
    return "finished"


async def test_time_spent_waiting_does_not_count_toward_max_duration(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([bounded_task])
    token = await engine.tokens.create()
    run = await engine.trigger("rt-max-duration", {"token": token.id, "work_seconds": 0})
    await wait_for_status(engine, run.id, "WAITING")
    await asyncio.sleep(1.2)  # longer than max_duration, but spent waiting
    await engine.tokens.complete(token.id)
    assert (await engine.wait_for_run(run.id, timeout=10)).output == "finished"


async def test_executing_past_max_duration_times_the_run_out_without_retry(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([bounded_task])
    token = await engine.tokens.create()
    await engine.tokens.complete(token.id)
    run = await engine.trigger("rt-max-duration", {"token": token.id, "work_seconds": 5})
    with pytest.raises(RunFailedError, match="TIMED_OUT"):
        await engine.wait_for_run(run.id, timeout=10)
    timed_out = await engine.runs.retrieve(run.id)
    assert timed_out.error is not None
    assert timed_out.error.name == "engine.errors.MaxDurationExceededError"
    assert timed_out.attempt_count == 1


async def test_timeline_shows_steps_tokens_and_how_each_wait_ended(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([caught_error_task])
    run = await engine.trigger("rt-caught-step-error")
    token_id = await waiting_token(engine, run.id)
    await engine.tokens.complete(token_id, {"approved": True}, source=CompletionSource.CLI)
    await engine.wait_for_run(run.id, timeout=10)
    everything = await engine.runs.timeline(run.id)
    assert [e.kind for e in everything] == [
        "created",
        "attempt_started",
        "step",
        "create_token",
        "waiting",
        "attempt_started",
        "wait_for_token",
        "finished",
    ]
    assert everything[-1].detail == {"status": "COMPLETED"}
    assert everything[1].detail is not None and "worker" in everything[1].detail
    timeline = [e for e in everything if e.key is not None]  # the durable calls
    assert [(e.kind, e.name, e.ok) for e in timeline] == [
        ("step", "explode", False),
        ("create_token", "", True),
        ("wait_for_token", token_id, True),
    ]
    assert timeline[0].error is not None and timeline[0].error.name == "KeyError"
    assert timeline[0].duration_ms is not None and timeline[0].duration_ms >= 0
    assert timeline[1].duration_ms is None  # only step bodies are timed
    wait = timeline[2].token
    assert wait is not None and wait.status == "COMPLETED" and wait.completed_via == "cli"
    assert wait.data == {"approved": True}
    assert timeline[0].at <= timeline[1].at <= timeline[2].at


@task("rt-quick")
async def quick_task(payload: Any) -> Any:
    return payload


async def test_delayed_run_waits_then_runs(engine: Engine, start_worker: StartWorker) -> None:
    await start_worker([quick_task])
    run = await engine.trigger("rt-quick", 1, delay=timedelta(milliseconds=600))
    assert run.status == "DELAYED" and run.delayed_until is not None
    assert (await engine.runs.retrieve(run.id)).status == "DELAYED"
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.started_at is not None and done.started_at >= run.delayed_until


async def test_run_not_started_within_its_ttl_expires(engine: Engine) -> None:
    run = await engine.trigger("rt-quick", 1, ttl="1s")  # no worker runs this task here
    assert run.ttl == "1s"
    await asyncio.sleep(1.1)
    assert await engine.storage.fire_due_timers(100) >= 1
    expired = await engine.runs.retrieve(run.id)
    assert expired.status == "EXPIRED" and expired.finished_at is not None
    with pytest.raises(RunFailedError, match="EXPIRED"):
        await engine.wait_for_run(run.id, timeout=1)


async def test_metadata_is_kept_on_the_run_and_must_be_an_object(engine: Engine) -> None:
    run = await engine.trigger("rt-quick", 1, metadata={"customer": "acme", "n": 2})
    assert (await engine.runs.retrieve(run.id)).metadata == {"customer": "acme", "n": 2}
    with pytest.raises(ValidationError, match="metadata"):
        await engine.trigger("rt-quick", 1, metadata=[1, 2])  # type: ignore[arg-type]


async def test_run_max_duration_option_overrides_the_task(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([bounded_task])
    token = await engine.tokens.create()
    await engine.tokens.complete(token.id)
    run = await engine.trigger(
        "rt-max-duration", {"token": token.id, "work_seconds": 0.5}, max_duration="1s"
    )
    assert (await engine.wait_for_run(run.id, timeout=10)).output == "finished"
    slow = await engine.trigger(
        "rt-max-duration",
        {"token": token.id, "work_seconds": 0.3},
        max_duration=timedelta(milliseconds=100),
    )
    with pytest.raises(RunFailedError, match="TIMED_OUT"):
        await engine.wait_for_run(slow.id, timeout=10)


FLAKY_STEP = {"failures_left": 2}


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    """Each test (and each backend's run of it) counts its own calls."""
    CALLS.clear()
    FLAKY["failures_left"] = 1
    FLAKY_STEP["failures_left"] = 2


def flaky_twice() -> str:
    CALLS["flaky-step"] += 1
    if FLAKY_STEP["failures_left"] > 0:
        FLAKY_STEP["failures_left"] -= 1
        raise ConnectionError("try again")
    return "third time lucky"


@task("rt-step-retry")
async def step_retry_task(payload: None) -> dict[str, Any]:
    value = await step(
        "flaky", flaky_twice, retry=Retry(max_attempts=3, min_delay=timedelta(milliseconds=5))
    )
    return {"value": value, "run": current_run().id}


async def test_step_retry_tries_the_step_again_in_place(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([step_retry_task])
    run = await engine.trigger("rt-step-retry")
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output == {"value": "third time lucky", "run": run.id}
    assert CALLS["flaky-step"] == 3
    assert done.attempt_count == 1  # retried inside the step, not as a new run attempt
    steps = [e for e in await engine.runs.timeline(run.id) if e.key is not None]
    assert [e.ok for e in steps] == [True]


async def read_metadata() -> dict[str, Any]:
    return current_run().metadata


@task("rt-metadata")
async def metadata_task(payload: None) -> dict[str, Any]:
    # metadata is live (a replay sees the latest value): read it in a step to pin it
    before = await step("read", read_metadata)
    await update_metadata({"progress": 50})
    await wait_for_token(await create_token())
    await update_metadata({"progress": 100})
    return {"before": before, "after": current_run().metadata}


async def test_a_task_reads_and_updates_its_run_metadata(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker([metadata_task])
    run = await engine.trigger("rt-metadata", metadata={"customer": "acme"})
    token_id = await waiting_token(engine, run.id)
    waiting = await engine.runs.retrieve(run.id)
    assert waiting.metadata == {"customer": "acme", "progress": 50}  # visible while it waits
    await engine.tokens.complete(token_id)
    done = await engine.wait_for_run(run.id, timeout=10)
    assert done.output["before"] == {"customer": "acme"}
    assert done.output["after"] == {"customer": "acme", "progress": 100}
    assert done.metadata == {"customer": "acme", "progress": 100}


async def test_two_concurrent_triggers_with_one_idempotency_key_make_one_run(
    db_url: str,
) -> None:
    async with Engine(db_url) as first, Engine(db_url) as second:  # two clients, one file
        runs = await asyncio.gather(
            *(
                client.trigger("rt-quick", i, idempotency_key="pay-once")
                for i, client in enumerate([first, second] * 5)
            )
        )
    assert len({run.id for run in runs}) == 1
    assert sum(not run.is_cached for run in runs) == 1


async def test_cancel_works_on_queued_and_delayed_runs(engine: Engine) -> None:
    queued = await engine.trigger("rt-quick", 1)
    delayed = await engine.trigger("rt-quick", 2, delay="1h")
    for run in (queued, delayed):
        canceled = await engine.runs.cancel(run.id)
        assert canceled.status == "CANCELED" and canceled.finished_at is not None
    assert await engine.storage.claim_runs("w", 10, 30_000, ["rt-quick"]) == []


async def test_a_completion_after_the_deadline_is_refused_even_before_the_timer_fires(
    engine: Engine,
) -> None:
    token = await engine.tokens.create(timeout="1s")
    await asyncio.sleep(1.1)  # no worker runs: nobody fired the timer
    with pytest.raises(TokenNotWaitingError, match="timed out"):
        await engine.tokens.complete(token.id, {"late": True})
    closed = await engine.tokens.retrieve(token.id)
    assert closed.status == "TIMED_OUT" and closed.data["code"] == "TRIGGER_WAITPOINT_TIMEOUT"
    assert closed.late_completions is not None and len(closed.late_completions) == 1
