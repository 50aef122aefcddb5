"""One wait on a token, a message and a child run: ``wait_for_any([token, receive_op("cancel"),
child], timeout=...)`` ("approve, or a cancel message, or 24 hours").

Real workers on a real database (both backends). Whichever member closes first closes the
group, with its result at ``result.index``; a message is taken only when the group closes with
it, so one that loses the race (or comes later) waits for the next ``receive``.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    Engine,
    RunNotFoundError,
    TaskDefinition,
    ValidationError,
    create_token,
    current_run,
    receive,
    receive_op,
    update_metadata,
    wait_for_any,
    wait_for_tokens,
)

from .conftest import StartWorker, wait_for_status


async def reviewer(payload: Any) -> Any:
    """The child: ends with what it is told on "finish"."""
    return (await receive("finish")).output


REVIEWER = TaskDefinition(id="any-reviewer", fn=reviewer)


async def approval(payload: dict[str, Any]) -> dict[str, Any]:
    token = await create_token(timeout="1h")
    child = await REVIEWER.trigger()
    await update_metadata({"token": token.id, "child": child.id})
    got = await wait_for_any(
        [token, receive_op("cancel"), child], timeout=payload.get("timeout", "1h")
    )
    outcome: dict[str, Any] = {
        "index": got.index,
        "first": got.first,
        "ok": got.ok,
        "timed_out": got.timed_out,
        "open": [item is None for item in got.items],
        "output": got.items[got.index].output if got.index is not None else None,
    }
    if payload.get("then_receive"):  # a cancel that did not close the group is still there
        outcome["next_cancel"] = (await receive("cancel", timeout="5s")).output
    return outcome


class Cancel(BaseModel):
    reason: str


async def typed(payload: Any) -> Any:
    token = await create_token(timeout="1h")
    got = await wait_for_tokens([token, receive_op("cancel", schema=Cancel)], mode="all")
    cancel = got.items[1]
    assert cancel is not None
    return {"token": got.results[token.id].output, "reason": cancel.output.reason}  # type: ignore[union-attr]


async def misuse(payload: str) -> str:
    token = await create_token(timeout="1h")
    try:
        if payload == "topic twice":
            await wait_for_any([receive_op("a"), token, receive_op("a")])
        elif payload == "a number":
            await wait_for_any([token, 7])  # type: ignore[list-item]
        elif payload == "own run":
            from engine import Run

            me = Run.model_validate(await _self_as_run())
            await wait_for_any([me])
        else:
            from engine import Run

            ghost = Run.model_validate({**(await _self_as_run()), "id": "run_ghost"})
            await wait_for_any([token, ghost])
    except (ValidationError, RunNotFoundError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def _self_as_run() -> dict[str, Any]:
    from engine.current import current_engine

    run = await current_engine().runs.retrieve(current_run().id)
    return run.model_dump(mode="json", by_alias=True)


APPROVAL = TaskDefinition(id="any-approval", fn=approval)
TYPED = TaskDefinition(id="any-typed", fn=typed)
MISUSE = TaskDefinition(id="any-misuse", fn=misuse)
TASKS = [APPROVAL, REVIEWER, TYPED, MISUSE]


async def _waiting(engine: Engine, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    run = await engine.trigger(APPROVAL.id, payload)
    await wait_for_status(engine, run.id, "WAITING", timeout=20)
    metadata = (await engine.runs.retrieve(run.id)).metadata or {}
    return run.id, metadata


async def test_the_token_closes_the_group_and_a_later_cancel_waits_for_the_next_receive(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, ids = await _waiting(engine, {"then_receive": True})
    await engine.tokens.complete(ids["token"], {"approved": True})
    await wait_for_status(engine, run_id, "WAITING", timeout=20)  # now in its next receive
    await engine.runs.send(run_id, "cancel", "too late")
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output == {
        "index": 0,
        "first": ids["token"],
        "ok": True,
        "timed_out": False,
        "open": [False, True, True],
        "output": {"approved": True},
        "next_cancel": "too late",
    }
    await engine.runs.send(ids["child"], "finish", "done")  # the child is not cancelled


async def test_a_cancel_message_closes_the_group_and_is_delivered_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, ids = await _waiting(engine, {})
    await engine.runs.send(run_id, "cancel", {"by": "ops"})
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["index"] == 1 and done.output["first"] == "cancel"
    assert done.output["output"] == {"by": "ops"}
    assert done.output["open"] == [True, False, True]
    token = await engine.tokens.retrieve(ids["token"])
    assert token.status == "WAITING"  # with any, the other members stay as they are
    timeline = await engine.runs.timeline(run_id)
    groups = [e for e in timeline if e.kind == "wait_for_tokens"]
    assert len(groups) == 1 and groups[0].value["kinds"] == ["token", "message", "run"]


async def test_the_child_run_ending_closes_the_group_with_its_result(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run_id, ids = await _waiting(engine, {})
    await engine.runs.send(ids["child"], "finish", "reviewed")
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["index"] == 2 and done.output["first"] == ids["child"]
    assert done.output["output"] == "reviewed" and done.output["ok"] is True


async def test_the_timeout_closes_the_group_when_nothing_came(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(APPROVAL.id, {"timeout": "1s"})
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output["timed_out"] is True and done.output["index"] is None
    assert done.output["open"] == [True, True, True] and done.output["ok"] is False


async def test_a_message_that_came_while_the_run_was_away_loses_to_an_earlier_token(
    engine: Engine, start_worker: StartWorker
) -> None:
    """Both closed before the run looked again: the earlier one closes the group, and the
    message is left for the next receive, not swallowed."""
    worker = await start_worker(TASKS)
    run_id, ids = await _waiting(engine, {"then_receive": True})
    worker.stop(graceful=True)
    await engine.tokens.complete(ids["token"], "first")
    await engine.runs.send(run_id, "cancel", "second")
    await start_worker(TASKS)
    done = await engine.wait_for_run(run_id, timeout=20)
    assert done.output["index"] == 0 and done.output["output"] == "first"
    assert done.output["next_cancel"] == "second"


async def test_a_message_sent_before_the_group_closes_it_at_once(
    engine: Engine, start_worker: StartWorker
) -> None:
    from engine.models import TaskInfo

    await engine.storage.register_tasks([TaskInfo(APPROVAL.id)])
    run = await engine.trigger(APPROVAL.id, {})
    await engine.runs.send(run.id, "cancel", "early")  # before any worker ran it
    await start_worker(TASKS)
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output["index"] == 1 and done.output["output"] == "early"


async def test_all_mode_waits_for_the_token_and_a_typed_message(
    engine: Engine, start_worker: StartWorker
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(TYPED.id)
    await wait_for_status(engine, run.id, "WAITING", timeout=20)
    with pytest.raises(ValidationError, match="reason"):
        await engine.runs.send(run.id, "cancel", {"wrong": 1})  # the member's schema holds
    await engine.runs.send(run.id, "cancel", {"reason": "duplicate"})
    await wait_for_status(engine, run.id, "WAITING", timeout=20)  # all: the token too
    [token] = [t for t in (await engine.tokens.list()).data if t.status == "WAITING"]
    await engine.tokens.complete(token.id, "yes")
    done = await engine.wait_for_run(run.id, timeout=20)
    assert done.output == {"token": "yes", "reason": "duplicate"}


@pytest.mark.parametrize(
    ("misuse_of", "error"),
    [
        ("topic twice", "ValidationError: a group waits for one message per topic"),
        ("a number", "ValidationError: a group waits on tokens (or their ids)"),
        ("own run", "ValidationError: a run cannot wait for its own end"),
        ("unknown run", "RunNotFoundError: no run with id 'run_ghost' to wait for"),
    ],
)
async def test_a_group_of_what_cannot_be_waited_on_says_why(
    engine: Engine, start_worker: StartWorker, misuse_of: str, error: str
) -> None:
    await start_worker(TASKS)
    run = await engine.trigger(MISUSE.id, misuse_of)
    done = await engine.wait_for_run(run.id, timeout=20)
    assert isinstance(done.output, str) and done.output.startswith(error), done.output
