"""What task code awaits. Each function is a thin delegate to the current ``RunContext``.

Inside a run these calls are journaled through ``RunContext.durable_call`` (the one owner of
the replay protocol, ``engine.context``): on replay they return what they returned the first
time, without running anything again. ``create_token``, ``complete_token`` and
``Task.trigger`` also work outside a run, through the ``Engine`` entered with
``async with Engine() as engine``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from typing_extensions import Unpack

from . import completion, tracing
from .clock import to_ms
from .context import Recorded, RunContext
from .current import current_engine
from .durations import Deadline, Timeout, duration_ms
from .errors import (
    AbortTaskRunError,
    DurableCallInStepError,
    StorageError,
    ValidationError,
    WaitpointTimeoutError,
)
from .journal import encode_error
from .logs import get_logger
from .models import (
    CompletionResult,
    CompletionSource,
    GroupResult,
    Run,
    RunResult,
    Token,
    WaitResult,
)
from .options import TokenOptions
from .registry import Retry
from .requests import token_request
from .storage import GroupMember, JournalWrite
from .validation import clean_topic

log = get_logger("engine.durable")


async def step(
    name: str, fn: Callable[..., Any], /, *args: Any, retry: Retry | None = None, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)`` once per run and journal its result (or its error).

    ``fn`` may be sync (run in a worker thread) or async. The result must be JSON-serialisable
    and is returned as JSON values (a pydantic model comes back as a dict), the same on the
    first execution as on every replay. An error is journaled too and the task gets it
    rebuilt from the journal (same class, ``args`` and JSON attributes; the original is its
    ``__cause__`` on the first execution), so ``except`` branches behave the same before and
    after a resume. ``retry`` tries a failing body again in place, with the policy's back-off,
    before the error is journaled. The body runs at least once: if the worker dies after it
    ran and before the result was recorded, it runs again, so give external calls an
    idempotency key such as ``f"{current_run().id}:{name}"``. Durable calls inside the body
    are refused (``DurableCallInStepError``).
    """
    context = RunContext.current()

    async def execute(write: JournalWrite) -> Recorded:
        started = time.monotonic()
        try:
            with context.step_body(write.key):
                result = await _call(name, fn, args, kwargs, retry)
        except Exception as exc:
            recorded = Recorded(encode_error(exc), is_error=True, cause=exc)
        else:
            recorded = Recorded(_json_result(name, result))
        context.refuse_when_stopped()  # the attempt ended while the body ran: record nothing
        took = int((time.monotonic() - started) * 1000)
        await context.storage.append_journal(
            replace(write, value=recorded.value, is_error=recorded.is_error, duration_ms=took)
        )
        return recorded

    return await context.durable_call("step", name, execute=execute, decode=_as_is)


_ONCE = Retry()
"""A step without ``retry=`` is tried once (made once: a ``Retry`` parses its delays)."""


async def _call(
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry: Retry | None,
) -> Any:
    """The step's body, tried again in place under ``retry`` (never after an abort)."""
    policy = retry or _ONCE
    attempt = 1
    while True:
        try:
            if tracing.tracer() is None:
                return await _call_once(fn, args, kwargs)
            attributes = {"waitpoint.step": name, "waitpoint.try": attempt}
            with tracing.span(f"step {name}", attributes=attributes):
                return await _call_once(fn, args, kwargs)
        except Exception as exc:
            if attempt >= policy.max_attempts or isinstance(exc, _NOT_RETRIED):
                raise
            delay = policy.delay_ms(attempt)
            log.warning("step.retrying", step=name, error=str(exc), delay_ms=delay)
            await asyncio.sleep(delay / 1000)
            attempt += 1


async def _call_once(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result


_NOT_RETRIED = (AbortTaskRunError, DurableCallInStepError)


def _json_result(name: str, result: Any) -> Any:
    try:
        return to_jsonable_python(result)
    except Exception as exc:
        raise ValidationError(
            f"step {name!r} returned a value that is not JSON-serialisable: {exc}"
        ) from exc


def _as_is(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class RunInfo:
    """The run this code is part of: for idempotency keys, logs and links.

    ``metadata`` is the run's JSON object as it is now (set at trigger, changed with
    ``update_metadata``).
    """

    id: str
    task_id: str
    attempt: int
    metadata: dict[str, Any]


def current_run() -> RunInfo:
    """The run being executed (``NotInRunError`` outside a task)."""
    context = RunContext.current()
    run = context.run
    return RunInfo(run.id, run.task_id, run.attempt, dict(context.metadata))


async def update_metadata(changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the run's metadata and store it; returns the new metadata.

    Readers (``engine.runs.retrieve``, the API) see it at once, e.g. a progress counter. Not
    journaled: a replay applies the same change again, so set values rather than increment.
    """
    if not isinstance(changes, dict):
        raise ValidationError("update_metadata takes a dict of changes")
    context = RunContext.current()
    context.refuse_when_stopped()
    merged = {**context.metadata, **changes}
    try:
        if not context.checking:  # a replay check writes nothing
            await context.storage.set_metadata(context.run.id, context.run.epoch, merged)
    except StorageError as exc:
        raise context.interrupted(exc) from exc
    context.metadata = merged
    return dict(merged)


async def create_token(**options: Unpack[TokenOptions]) -> Token:
    """Create a waitpoint token that a run can wait on until someone completes it.

    Inside a run the token is journaled: replay returns the same token, never a second one,
    and the first execution returns it as replays will (as journaled: ``is_cached`` and
    ``data_schema`` are not kept, so code cannot branch on them differently when replayed).
    ``schema`` makes completion data validated when it arrives and parsed into the model by
    ``wait_for_token``. ``title`` ("Refund order 42", at most 200 characters),
    ``description`` (plain text, at most 4,000) and ``context`` (a JSON object such as
    ``{"amount": 19.99}``, at most 16 KiB) tell the reviewer what they approve: the approval
    page and the inbox show them.
    """
    run = RunContext.find()
    if run is None:
        return await current_engine().tokens.create(**options)
    storage = run.storage

    async def execute(write: JournalWrite) -> Recorded:
        new = token_request(storage.now_ms(), **options)
        made = await storage.create_token(new, write)  # journaled as storage returns it
        log.info("token.created", token_id=made.id, cached=made.is_cached)
        return Recorded(_json_of(made))

    def presented(value: Any) -> Token:
        """The journaled token with its callback URL, the same on every execution."""
        return run.signer.present(_token(value))

    token = await run.durable_call("create_token", execute=execute, decode=presented)
    schema = options.get("schema")
    if isinstance(schema, type):
        token._data_model = schema
    return token


async def wait_for_token(token: Token | str) -> WaitResult[Any]:
    """Park the run until the token completes, times out or is cancelled.

    While the run waits nothing of it stays in memory; it resumes (on any worker, after any
    restart) with ``WaitResult.ok`` and ``output`` set to the completion data, parsed into the
    token's schema model when it was created with one.
    """
    context = RunContext.current()
    token_id = token.id if isinstance(token, Token) else token
    model = token._data_model if isinstance(token, Token) else None

    async def execute(write: JournalWrite) -> Recorded | None:
        closed = context.run.closed_tokens.get(token_id)  # the claim found it closed
        found = await context.storage.wait_on_token(token_id, write, context.elapsed_ms(), closed)
        if found is None:
            log.info("run.suspended", token_id=token_id)
            return None
        _trace_wait("token", [found])
        return Recorded(_json_of(found))

    closed = await context.durable_call(
        "wait_for_token", token_id, execute=execute, decode=_token, waits="wait_for_token"
    )
    return WaitResult.from_token(closed, model.model_validate if model else None)


def _trace_wait(kind: str, closed: list[Token]) -> None:
    """The span of a wait that just ended (tracing on): from when its first waitpoint was
    made to now, linked (as the attempt that goes on is) to the requests that completed its
    tokens."""
    if tracing.tracer() is None:
        return
    now = RunContext.current().storage.now_ms()
    since = min((to_ms(t.created_at) for t in closed), default=now)
    attributes: dict[str, Any] = {"waitpoint.wait": kind}
    if len(closed) == 1:
        token = closed[0]
        attributes["waitpoint.token_id"] = token.id
        attributes["waitpoint.status"] = token.status.value
        if token.completed_via is not None:
            attributes["waitpoint.completed_via"] = token.completed_via.value
    completers = [t.completed_trace for t in closed if t.completed_trace]
    tracing.emit(
        f"wait {kind}", start_ms=since, end_ms=now, attributes=attributes, links_to=completers
    )
    for completer in completers:
        tracing.link_current(completer)


async def patched(patch_id: str) -> bool:
    """Whether this run takes the new code of patch ``patch_id``: how to change a task's
    durable calls while runs of it wait.

        if await patched("use-new-pricing"):
            price = await step("price-v2", price_v2, order)
        else:
            price = await step("price", price_v1, order)

    A run that reaches this point on code with the patch records a marker and takes the new
    branch, on this execution and on every replay. A run that got past this point before the
    deploy (its journal holds later calls and no marker) takes the old branch, so its replay
    meets the calls it recorded. A run answers the same for one id every time it asks. Once no
    run that started before the patch is left, keep only the new branch and replace the call
    by ``deprecate_patch``; remove that too once no run that recorded the marker is left.

    It is awaited because the marker is journaled before any call after it: a run that crashes
    later replays with the same answer.
    """
    context = RunContext.current()
    known = context.patches.get(patch_id)
    if known is not None:
        return known
    _check_patch_id(patch_id)
    taken = context.patch_state(patch_id) is not False
    if taken:  # replays the recorded marker (in its place in the journal), or records it now
        await context.durable_call("patch", patch_id, execute=_record_marker, decode=_as_is)
    context.patches[patch_id] = taken
    return taken


async def deprecate_patch(patch_id: str) -> None:
    """Patch ``patch_id``'s old branch is gone from the code: a run that recorded the marker
    replays past it, and a new run records none (see ``patched``)."""
    context = RunContext.current()
    if patch_id in context.patches:
        return
    _check_patch_id(patch_id)
    if context.patch_state(patch_id) is True:
        await context.durable_call("patch", patch_id, execute=_record_marker, decode=_as_is)
    context.patches[patch_id] = True


async def _record_marker(write: JournalWrite) -> Recorded:
    await RunContext.current().storage.append_journal(replace(write, value=True))
    return Recorded(True)


def _check_patch_id(patch_id: str) -> None:
    if not isinstance(patch_id, str) or not patch_id.strip() or "#" in patch_id:
        raise ValidationError(f"a patch id is a non-empty string without '#': {patch_id!r}")


async def sleep(duration: str | timedelta) -> None:
    """Park the run for ``duration`` ("30s", "1h30m", "7d" or a timedelta), durably.

    The run is checkpointed and leaves memory; it resumes on any worker once the deadline
    passes by the database clock, never before, even across restarts and downtime. A sleep of
    zero returns at once; a fraction of a millisecond counts as a whole one.
    """
    await _sleep(Deadline(after_ms=duration_ms(duration, allow_zero=True)))


async def sleep_until(when: datetime) -> None:
    """Park the run until ``when`` (a timezone-aware datetime); a past moment returns at once."""
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValidationError("sleep_until needs a timezone-aware datetime")
    await _sleep(Deadline(at_ms=to_ms(when)))


async def _sleep(deadline: Deadline) -> None:
    context = RunContext.current()

    async def execute(write: JournalWrite) -> Recorded | None:
        if await context.storage.sleep_until(deadline, write, context.elapsed_ms()):
            return Recorded(None)
        log.info("run.sleeping", deadline=deadline)
        return None

    await context.durable_call("sleep", execute=execute, decode=_nothing, waits="sleep")


@dataclass(frozen=True)
class ReceiveOp:
    """The next message on ``topic``, as a member of a group wait (``receive_op``)."""

    topic: str
    schema: type[BaseModel] | None = None


def receive_op(topic: str, *, schema: type[BaseModel] | None = None) -> ReceiveOp:
    """A ``receive(topic)`` to wait on alongside tokens and runs, in ``wait_for_any`` or
    ``wait_for_tokens``: ``wait_for_any([token, receive_op("cancel"), child])``.

    The message is taken (delivered, exactly once) only if the group closes with it; when
    something else closes the group first, messages on the topic wait for the next
    ``receive``. ``schema`` works as ``receive``'s does.
    """
    return ReceiveOp(clean_topic(topic), schema)


Waitable = Token | str | ReceiveOp | Run
"""What a group waits on: a token (or its id), a message (``receive_op``), a run's end."""


async def wait_for_tokens(
    tokens: Sequence[Waitable], *, mode: str = "all", timeout: Timeout | None = None
) -> GroupResult:
    """Park the run until all (``mode="all"``) or any (``"any"``) of the members closed.

    Members are tokens (or their ids), messages (``receive_op(topic)``) and runs (a ``Run``,
    such as ``Task.trigger`` returns: it closes when that run finishes, with its
    ``RunResult``). With ``timeout`` (a duration from the first call, or an aware datetime)
    the group also closes when it runs out (``timed_out``): the deadline is fixed by the first
    execution, and a member closed at or after it counts as not answered, whenever the run
    looks. The result is a snapshot of the members as they were when the group closed; with
    ``any`` the other tokens stay WAITING for whoever else uses them.
    """
    if mode not in ("all", "any"):
        raise ValidationError(f"mode must be 'all' or 'any', not {mode!r}")
    if not tokens:
        raise ValidationError("wait_for_tokens needs at least one token")
    context = RunContext.current()
    members = [_member(item, context.run_id) for item in tokens]
    topics = [m.ref for m in members if isinstance(m, GroupMember) and m.kind == "message"]
    if len(set(topics)) < len(topics):
        raise ValidationError("a group waits for one message per topic: a topic is there twice")
    models = [_model_of(item) for item in tokens]
    deadline = None if timeout is None else Deadline.of(timeout)

    async def execute(write: JournalWrite) -> Recorded | None:
        snapshot = await context.storage.wait_on_group(
            members, mode, deadline, write, context.elapsed_ms()
        )
        if snapshot is None:
            log.info("run.suspended", members=[str(m) for m in members], mode=mode)
            return None
        _trace_wait("group", [Token.model_validate(item) for item in snapshot["tokens"]])
        return Recorded(snapshot)

    snapshot = await context.durable_call(
        "wait_for_tokens", execute=execute, decode=_as_is, waits="wait_for_tokens"
    )
    return _group_result(snapshot, mode, models)


async def wait_for_any(
    tokens: Sequence[Waitable], *, timeout: Timeout | None = None
) -> GroupResult:
    """Park the run until the first of its members closes, or ``timeout``: "approve, or a
    cancel message, or 24 hours" as one wait. ``wait_for_tokens(..., mode="any")``; the
    member that closed it is ``result.index`` (its place in ``tokens``) and its result
    ``result.items[result.index]``."""
    return await wait_for_tokens(tokens, mode="any", timeout=timeout)


def _member(item: Waitable, run_id: str) -> str | GroupMember:
    if isinstance(item, Token):
        return item.id
    if isinstance(item, str):
        return item
    if isinstance(item, ReceiveOp):
        schema = None if item.schema is None else item.schema.model_json_schema()
        return GroupMember("message", item.topic, schema)
    if isinstance(item, Run):
        if item.id == run_id:
            raise ValidationError("a run cannot wait for its own end")
        return GroupMember("run", item.id)
    raise ValidationError(
        "a group waits on tokens (or their ids), receive_op(topic) and runs,"
        f" not {type(item).__name__}"
    )


def _model_of(item: Waitable) -> type[BaseModel] | None:
    if isinstance(item, Token):
        return item._data_model
    if isinstance(item, ReceiveOp):
        return item.schema
    return None


def _group_result(
    snapshot: dict[str, Any], mode: str, models: list[type[BaseModel] | None]
) -> GroupResult:
    tokens = [Token.model_validate(item) for item in snapshot["tokens"]]
    kinds = snapshot.get("kinds") or ["token"] * len(tokens)
    keys = snapshot.get("keys") or [t.id for t in tokens]
    items: list[WaitResult[Any] | RunResult | None] = []
    for token, kind, model in zip(tokens, kinds, models, strict=True):
        items.append(None if token.is_waiting else _member_result(token, kind, model))
    first = snapshot.get("first")
    ids = [t.id for t in tokens]
    index = ids.index(first) if first in ids else None
    timed_out = bool(snapshot.get("timedOut"))
    if mode == "all":
        ok = not timed_out and all(r is not None and r.ok for r in items)
    else:
        first_result = items[index] if index is not None else None
        ok = first_result is not None and first_result.ok
    return GroupResult(
        ok=ok,
        results=dict(zip(keys, items, strict=True)),
        first=keys[index] if index is not None else None,
        timed_out=timed_out,
        items=items,
        index=index,
    )


def _member_result(
    token: Token, kind: str, model: type[BaseModel] | None
) -> WaitResult[Any] | RunResult:
    if kind == "run":
        return RunResult.from_waitpoint(token)
    if kind == "message":
        data = token.data["data"] if isinstance(token.data, dict) else None
        return WaitResult(ok=True, output=model.model_validate(data) if model else data)
    return WaitResult.from_token(token, model.model_validate if model is not None else None)


async def receive(
    topic: str, *, timeout: Timeout | None = None, schema: type[BaseModel] | None = None
) -> WaitResult[Any]:
    """Park the run until the next message on ``topic`` (``engine.runs.send(run_id, topic,
    data)``), or until ``timeout`` (a duration from the first call, or an aware datetime).

    Messages sent before the run gets here wait for it, in the order they were sent; each is
    delivered to exactly one ``receive``, once, whatever the run's crashes and replays. The
    result is ``ok`` with ``output`` (the data, parsed into ``schema`` if given), or, on a
    timeout, not ok with a ``WaitpointTimeoutError`` (``timed_out``); a message that comes
    later is kept for the next ``receive`` of its topic. ``schema`` (a pydantic model) is
    kept with the run: from then on ``send`` refuses data on the topic that does not match
    it, as a typed token's completion is refused; a message sent before is checked here.
    """
    topic = clean_topic(topic)
    context = RunContext.current()
    deadline = None if timeout is None else Deadline.of(timeout)
    declared = None if schema is None else schema.model_json_schema()

    async def execute(write: JournalWrite) -> Recorded | None:
        found = await context.storage.receive_message(
            topic, deadline, write, context.elapsed_ms(), declared
        )
        if found is None:
            log.info("run.suspended", topic=topic)
            return None
        return Recorded(found)

    got = await context.durable_call(
        "receive", topic, execute=execute, decode=_as_is, waits="receive"
    )
    if got.get("timedOut"):
        error = WaitpointTimeoutError(f"no message on {topic!r} came before the timeout")
        return WaitResult(ok=False, error=error)
    data = got.get("data")
    return WaitResult(ok=True, output=schema.model_validate(data) if schema else data)


async def complete_token(
    token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.PYTHON
) -> CompletionResult:
    """Complete a token with ``data``; the first completion wins, repeats change nothing.

    Raises ``TokenNotWaitingError`` if the token timed out or was cancelled. Not journaled:
    inside a run, wrap it in a ``step`` if it must happen once.
    """
    context = RunContext.find()
    if context is not None and context.checking:  # a replay check writes nothing
        token = context.signer.present(await context.storage.get_token(token_id))
        return CompletionResult(applied=False, token=token)
    if context is not None:
        return await completion.complete(context.storage, context.signer, token_id, data, source)
    return await current_engine().tokens.complete(token_id, data, source=source)


def _json_of(model: BaseModel) -> Any:
    """A model as the journal keeps it (and as every replay rebuilds it)."""
    return model.model_dump(mode="json", by_alias=True)


def _token(value: Any) -> Token:
    return Token.model_validate(value)


def _nothing(value: Any) -> None:
    return None


__all__ = [
    "RunInfo",
    "complete_token",
    "create_token",
    "current_run",
    "deprecate_patch",
    "patched",
    "receive",
    "receive_op",
    "sleep",
    "sleep_until",
    "step",
    "update_metadata",
    "wait_for_any",
    "wait_for_token",
    "wait_for_tokens",
]
