"""What task code awaits. Each function is a thin delegate to the current ``RunContext``.

Inside a run these calls are journaled: on replay they return what they returned the first
time, without running anything again. ``create_token`` and ``complete_token`` also work
outside a run, through the ``Engine`` entered with ``async with Engine() as engine``.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import importlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio.to_thread
import structlog
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .client import current_engine
from .clock import from_ms, to_ms
from .durations import Timeout, resolve_deadline, to_timedelta
from .errors import AbortTaskRunError, StepFailedError, Suspended, ValidationError
from .models import (
    CompletionResult,
    CompletionSource,
    GroupResult,
    Token,
    WaitResult,
)
from .registry import Retry
from .requests import token_request
from .runtime import RunContext, as_journaled, error_of

T = TypeVar("T")
log = structlog.get_logger("engine.durable")


async def step(
    name: str, fn: Callable[..., Any], /, *args: Any, retry: Retry | None = None, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)`` once per run and journal its result (or its error).

    ``fn`` may be sync (run in a worker thread) or async. The result must be JSON-serialisable
    and is returned as JSON values (a pydantic model comes back as a dict), the same on the
    first execution as on every replay. ``retry`` tries a failing body again in place, with
    the policy's back-off, before the error is journaled. The body runs at least once: if the
    worker dies after it ran and before the result was recorded, it runs again, so give
    external calls an idempotency key such as ``f"{current_run().id}:{name}"``.
    """
    context = RunContext.current()
    key, position = context.next_call("step", name)
    entry = context.recorded(key, position)
    if entry is not None:
        await asyncio.sleep(0)  # let sibling coroutines start in their original order
        if entry.is_error:
            raise _rebuild_error(entry.value)
        return entry.value
    policy = retry or Retry()
    attempt = 1
    started = time.monotonic()
    while True:
        try:
            result = await _call(fn, args, kwargs)
            break
        except Exception as exc:
            if attempt < policy.max_attempts and not isinstance(exc, AbortTaskRunError):
                delay = policy.delay_ms(attempt)
                log.warning("step.retrying", step=name, error=str(exc), delay_ms=delay)
                await asyncio.sleep(delay / 1000)
                attempt += 1
                continue
            took = int((time.monotonic() - started) * 1000)
            await context.record(
                key, position, _journaled_error(exc), is_error=True, duration_ms=took
            )
            raise
    try:
        value = to_jsonable_python(result)
    except Exception as exc:
        raise ValidationError(
            f"step {name!r} returned a value that is not JSON-serialisable: {exc}"
        ) from exc
    await context.record(key, position, value, duration_ms=int((time.monotonic() - started) * 1000))
    return value


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result


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
    merged = {**context.metadata, **changes}
    await context.storage.set_metadata(context.run.id, context.run.epoch, merged)
    context.metadata = merged
    return dict(merged)


async def create_token(
    *,
    timeout: Timeout | None = None,
    idempotency_key: str | None = None,
    idempotency_key_ttl: str | timedelta | None = None,
    tags: list[str] | str | None = None,
    schema: type[BaseModel] | None = None,
) -> Token:
    """Create a waitpoint token that a run can wait on until someone completes it.

    Inside a run the token is journaled: replay returns the same token, never a second one,
    and the first execution returns it as replays will (as journaled: ``is_cached`` and
    ``data_schema`` are not kept, so code cannot branch on them differently when replayed).
    ``schema`` makes completion data validated when it arrives and parsed into the model by
    ``wait_for_token``.
    """
    options = dict(
        timeout=timeout,
        idempotency_key=idempotency_key,
        idempotency_key_ttl=idempotency_key_ttl,
        tags=tags,
        schema=schema,
    )
    context = RunContext.find()
    if context is None:
        return await current_engine().tokens.create(**options)  # type: ignore[arg-type]
    key, position = context.next_call("create_token")
    entry = context.recorded(key, position)
    if entry is not None:
        token = Token.model_validate(entry.value)
    else:
        new = token_request(context.storage.now_ms(), **options)  # type: ignore[arg-type]
        made = await context.storage.create_token(new, context.journal_write(key, position, None))
        context.journaled()
        log.info("token.created", token_id=made.id, cached=made.is_cached)
        token = as_journaled(made)
    return _with_schema(token, schema)


async def wait_for_token(token: Token | str) -> WaitResult[Any]:
    """Park the run until the token completes, times out or is cancelled.

    While the run waits nothing of it stays in memory; it resumes (on any worker, after any
    restart) with ``WaitResult.ok`` and ``output`` set to the completion data, parsed into the
    token's schema model when it was created with one.
    """
    context = RunContext.current()
    token_id = token.id if isinstance(token, Token) else token
    model = _schema_of(token) if isinstance(token, Token) else None
    key, position = context.next_call("wait_for_token", token_id)
    with context.waiting("wait_for_token"):
        entry = context.recorded(key, position)
        if entry is not None:
            await asyncio.sleep(0)
            closed = Token.model_validate(entry.value)
        else:
            found = await context.storage.wait_on_token(
                token_id, context.journal_write(key, position, None), context.elapsed_ms()
            )
            if found is None:
                log.info("run.suspended", token_id=token_id)
                raise Suspended()
            context.journaled()
            closed = found
    return WaitResult.from_token(closed, model.model_validate if model else None)


async def sleep(duration: str | timedelta) -> None:
    """Park the run for ``duration`` ("30s", "1h30m", "7d" or a timedelta), durably.

    The run is checkpointed and leaves memory; it resumes on any worker once the deadline
    passes by the database clock, never before, even across restarts and downtime.
    """
    context = RunContext.current()
    await _sleep(context, context.storage.now_ms() + _duration_ms(duration))


async def sleep_until(when: datetime) -> None:
    """Park the run until ``when`` (a timezone-aware datetime); a past moment returns at once."""
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValidationError("sleep_until needs a timezone-aware datetime")
    await _sleep(RunContext.current(), to_ms(when))


async def _sleep(context: RunContext, until_ms: int) -> None:
    key, position = context.next_call("sleep")
    with context.waiting("sleep"):
        if context.recorded(key, position) is not None:
            await asyncio.sleep(0)
            return
        journal = context.journal_write(key, position, None)
        if not await context.storage.sleep_until(until_ms, journal, context.elapsed_ms()):
            log.info("run.sleeping", until=from_ms(until_ms).isoformat())
            raise Suspended()
        context.journaled()


def _duration_ms(duration: str | timedelta) -> int:
    return int(to_timedelta(duration).total_seconds() * 1000)


async def wait_for_tokens(
    tokens: Sequence[Token | str], *, mode: str = "all", timeout: Timeout | None = None
) -> GroupResult:
    """Park the run until all (``mode="all"``) or any (``"any"``) of the tokens closed.

    With ``timeout`` the group also closes when it runs out (``timed_out``). The result is a
    snapshot taken when the group closed; with ``any`` the other tokens stay WAITING for
    whoever else uses them.
    """
    if mode not in ("all", "any"):
        raise ValidationError(f"mode must be 'all' or 'any', not {mode!r}")
    if not tokens:
        raise ValidationError("wait_for_tokens needs at least one token")
    context = RunContext.current()
    ids = [t.id if isinstance(t, Token) else t for t in tokens]
    models = {t.id: _schema_of(t) for t in tokens if isinstance(t, Token)}
    key, position = context.next_call("wait_for_tokens")
    with context.waiting("wait_for_tokens"):
        entry = context.recorded(key, position)
        if entry is not None:
            await asyncio.sleep(0)
            snapshot = entry.value
        else:
            until = None
            if timeout is not None:
                deadline, _ = resolve_deadline(timeout, from_ms(context.storage.now_ms()))
                until = to_ms(deadline)
            journal = context.journal_write(key, position, None)
            snapshot = await context.storage.wait_on_group(
                ids, mode, until, journal, context.elapsed_ms()
            )
            if snapshot is None:
                log.info("run.suspended", tokens=ids, mode=mode)
                raise Suspended()
            context.journaled()
    return _group_result(snapshot, mode, models)


def _group_result(
    snapshot: dict[str, Any], mode: str, models: dict[str, type[BaseModel] | None]
) -> GroupResult:
    tokens = [Token.model_validate(item) for item in snapshot["tokens"]]
    results: dict[str, WaitResult[Any] | None] = {}
    for token in tokens:
        model = models.get(token.id)
        parse = model.model_validate if model is not None else None
        results[token.id] = None if token.is_waiting else WaitResult.from_token(token, parse)
    closed = sorted(
        (t for t in tokens if not t.is_waiting),
        key=lambda t: t.completed_at or datetime.max.replace(tzinfo=UTC),
    )
    first = closed[0].id if closed else None
    timed_out = bool(snapshot.get("timedOut"))
    if mode == "all":
        ok = not timed_out and all(r is not None and r.ok for r in results.values())
    else:
        first_result = results.get(first) if first else None
        ok = first_result is not None and first_result.ok
    return GroupResult(ok=ok, results=results, first=first, timed_out=timed_out)


async def complete_token(
    token_id: str, data: Any = None, *, source: CompletionSource = CompletionSource.PYTHON
) -> CompletionResult:
    """Complete a token with ``data``; the first completion wins, repeats change nothing.

    Raises ``TokenNotWaitingError`` if the token timed out or was cancelled. Not journaled:
    inside a run, wrap it in a ``step`` if it must happen once.
    """
    context = RunContext.find()
    if context is not None:
        from .client import Engine

        return await Engine.over(context.storage).tokens.complete(token_id, data, source=source)
    return await current_engine().tokens.complete(token_id, data, source=source)


def _with_schema(token: Token, schema: type[BaseModel] | None) -> Token:
    if schema is not None:
        token._data_model = schema
    return token


def _schema_of(token: Token) -> type[BaseModel] | None:
    return token._data_model


def _journaled_error(exc: Exception) -> dict[str, Any]:
    """The step's error as JSON, with its args and attributes when they are JSON too.

    Both are kept so a replay rebuilds the same exception without calling its ``__init__``
    again (which may take other arguments than it passes on as ``args``).
    """
    value: dict[str, Any] = error_of(exc).model_dump(by_alias=True)
    try:
        value["args"] = json.loads(json.dumps(exc.args))
    except (TypeError, ValueError):
        return value
    attrs: dict[str, Any] = {}
    for name, attr in vars(exc).items():
        try:
            attrs[name] = json.loads(json.dumps(attr))
        except (TypeError, ValueError):
            continue
    value["attrs"] = attrs
    return value


def _rebuild_error(value: Any) -> Exception:
    """The exception a step raised when it ran, rebuilt from the journal."""
    name = str(value.get("name", "Exception")) if isinstance(value, dict) else "Exception"
    message = str(value.get("message", "")) if isinstance(value, dict) else str(value)
    args = value.get("args") if isinstance(value, dict) else None
    module, _, qualname = name.rpartition(".")
    try:
        owner: Any = importlib.import_module(module) if module else builtins
        cls = owner
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            attrs = value.get("attrs") if isinstance(value, dict) else None
            if isinstance(args, list) and isinstance(attrs, dict):
                return _restored(cls, args, attrs)
            return cls(*args) if isinstance(args, list) else cls(message)
    except Exception:  # cannot import or construct it: fall back to a generic error
        pass
    return StepFailedError(message, name)


def _restored(cls: type[Exception], args: list[Any], attrs: dict[str, Any]) -> Exception:
    """The exception with its journaled args and attributes, ``__init__`` not called again."""
    try:
        exc = cls.__new__(cls, *args)
        exc.args = tuple(args)
    except Exception:  # a ``__new__`` that wants other arguments
        exc = cls(*args)
    exc.__dict__.update(attrs)
    return exc


__all__ = [
    "RunInfo",
    "complete_token",
    "create_token",
    "current_run",
    "sleep",
    "sleep_until",
    "step",
    "update_metadata",
    "wait_for_token",
    "wait_for_tokens",
]
