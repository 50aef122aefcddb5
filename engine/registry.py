"""``@task``: turning ``async def fn(payload)`` into a task a worker can run, and finding tasks.

Decorated functions land in ``REGISTRY`` when their module is imported; ``load_tasks`` imports
a module or a whole package (``tasks/`` by default) so a worker knows what it can run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, get_type_hints, overload

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import Unpack

from .cron import Cron, clean_catch_up
from .durations import duration_ms, to_timedelta
from .errors import ConfigurationError, ValidationError
from .models import CatchUp, Run, RunResult, TaskInfo
from .options import TriggerOptions
from .validation import clean_version

TaskFunction = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class Retry:
    """How often a failed run is tried again, and how long to wait between attempts.

    The delay before attempt n+1 is ``min_delay * factor**(n-1)``, capped at ``max_delay``,
    with up to half of it taken off at random when ``jitter`` is on (so that many runs failing
    together do not come back together).
    """

    max_attempts: int = 1
    factor: float = 2.0
    min_delay: str | timedelta = "1s"
    max_delay: str | timedelta = "1m"
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValidationError("Retry.max_attempts must be at least 1")
        if self.factor < 1:
            raise ValidationError("Retry.factor must be at least 1")
        to_timedelta(self.min_delay)
        to_timedelta(self.max_delay)

    def delay_ms(self, attempt: int) -> int:
        """Milliseconds to wait after ``attempt`` (1-based) failed."""
        low = to_timedelta(self.min_delay).total_seconds()
        high = to_timedelta(self.max_delay).total_seconds()
        seconds = min(high, low * self.factor ** max(attempt - 1, 0))
        if self.jitter:
            seconds -= random.uniform(0, seconds / 2)
        return int(seconds * 1000)


MAX_RATE = 1_000_000_000
"""The most runs a ``RateLimit`` lets start per period (it is stored as a 32-bit integer)."""


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs of a queue start per ``period`` ("1m", "1h", a timedelta),
    across every worker on the database (``Queue(rate_limit=)``).

    A token bucket stored in the database: it holds up to ``limit`` tokens, starts full and
    refills continuously at ``limit`` per ``period``; each run a worker claims takes one
    token, in the claim's own transaction. So a queue idle for a period may start ``limit``
    runs at once, and never more than ``limit + limit * t / period`` in any ``t``.
    Triggering with a ``rate_limit_key`` gives each key (a tenant) its own bucket.
    """

    limit: int
    period: str | timedelta

    def __post_init__(self) -> None:
        limit = self.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RATE:
            raise ValidationError(
                f"RateLimit.limit must be a whole number from 1 to {MAX_RATE:,}, got {limit!r}"
            )
        try:
            period = to_timedelta(self.period)
        except ValidationError as exc:
            raise ValidationError(f"RateLimit.period: {exc}") from None
        if period < timedelta(milliseconds=1):
            raise ValidationError(f"RateLimit.period must be at least 1 ms, got {self.period!r}")

    @property
    def period_ms(self) -> int:
        return duration_ms(self.period)


@dataclass(frozen=True)
class Queue:
    """Runs of the tasks sharing a queue execute at most ``concurrency_limit`` at a time,
    and start at most ``rate_limit.limit`` per ``rate_limit.period``.

    Both limits hold across every worker on the database. Triggering with a
    ``concurrency_key`` (a tenant, a user) gives each key its own copy of the concurrency
    limit; with a ``rate_limit_key``, its own rate limit bucket.
    """

    name: str
    concurrency_limit: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("a queue needs a name")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValidationError("concurrency_limit must be at least 1")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ValidationError(
                "rate_limit must be a RateLimit(limit=..., period=...),"
                f" got {type(self.rate_limit).__name__}"
            )


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task. Calling it directly runs the function (handy in unit tests)."""

    id: str
    fn: TaskFunction
    retry: Retry = field(default_factory=Retry)
    payload_model: type[BaseModel] | None = None
    max_duration_ms: int | None = None
    """Executing time (waits excluded, all attempts together) after which the run TIMED_OUT."""
    queue: Queue | None = None
    version: str | None = None
    """The version of this task's code (``@task(version=)``): the runs a worker starts on it
    record it, and a worker claims only runs of the version it serves (or of none), so that
    a run never resumes on code it did not start on unless it is migrated (``runs migrate``).
    None: the worker's version (``waitpoint worker --version``), if it has one."""
    cron: Cron | None = None
    """Its declared schedule (``@task(cron=..., timezone=...)``): the workers serving the task
    keep it in the database, and each tick makes one run (``engine.schedules``)."""
    catch_up: CatchUp = CatchUp.LAST
    """What its declared schedule runs for the ticks missed while no worker was up."""

    def __post_init__(self) -> None:
        if self.version is not None:
            clean_version(self.version, "version")

    async def __call__(self, payload: Any) -> Any:
        return await self.fn(payload)

    async def trigger(self, payload: Any = None, **options: Unpack[TriggerOptions]) -> Run:
        """Start a run of this task. Inside a run it is journaled: replay returns the same
        child; the child keeps running on its own (``trigger_and_wait`` waits for it)."""
        from .children import trigger_child

        return await trigger_child(self, payload, options)

    async def trigger_and_wait(
        self, payload: Any = None, **options: Unpack[TriggerOptions]
    ) -> RunResult:
        """Start a child run and park this run until it finishes (only inside a run)."""
        from .children import trigger_children_and_wait

        [result] = await trigger_children_and_wait(self, [payload], options, batch=False)
        return result

    async def batch_trigger_and_wait(
        self, payloads: list[Any], **options: Unpack[TriggerOptions]
    ) -> list[RunResult]:
        """Start one child run per payload and park until all of them finished."""
        from .children import trigger_children_and_wait

        return await trigger_children_and_wait(self, list(payloads), options, batch=True)

    @property
    def queue_name(self) -> str:
        return self.queue.name if self.queue else self.id

    @property
    def info(self) -> TaskInfo:
        schema = self.payload_model.model_json_schema() if self.payload_model else None
        limit = self.queue.concurrency_limit if self.queue else None
        rate = self.queue.rate_limit if self.queue else None
        if rate is None:
            return TaskInfo(self.id, schema, self.queue_name, limit)
        return TaskInfo(self.id, schema, self.queue_name, limit, rate.limit, rate.period_ms)

    def validate_payload(self, payload: Any) -> Any:
        """The payload as stored (JSON); a typed task's payload is validated here, at trigger."""
        if self.payload_model is None:
            return payload
        if isinstance(payload, self.payload_model):
            return payload.model_dump(mode="json")
        try:
            return self.payload_model.model_validate(payload).model_dump(mode="json")
        except PydanticValidationError as exc:
            raise ValidationError(
                f"invalid payload for task {self.id!r}: {_describe(exc)}"
            ) from exc

    def parse_payload(self, stored: Any) -> Any:
        """What the task function receives: the model instance for typed tasks."""
        if self.payload_model is None:
            return stored
        return self.payload_model.model_validate(stored)


REGISTRY: dict[str, TaskDefinition] = {}


@overload
def task(id: TaskFunction, /) -> TaskDefinition: ...


@overload
def task(
    id: str | None = None,
    /,
    *,
    retry: Retry | None = None,
    max_duration: str | timedelta | None = None,
    queue: Queue | None = None,
    version: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    catch_up: CatchUp | str = CatchUp.LAST,
) -> Callable[[TaskFunction], TaskDefinition]: ...


def task(
    id: str | TaskFunction | None = None,
    /,
    *,
    retry: Retry | None = None,
    max_duration: str | timedelta | None = None,
    queue: Queue | None = None,
    version: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    catch_up: CatchUp | str = CatchUp.LAST,
) -> TaskDefinition | Callable[[TaskFunction], TaskDefinition]:
    """Register ``async def fn(payload)`` as a task: ``@task``, ``@task()`` or ``@task("id")``.

    Without an id the function's name is used, with ``_`` turned into ``-``. Annotate the
    payload with a pydantic model to have it validated when the run is triggered.
    ``max_duration`` bounds the time the run spends executing (waiting does not count);
    ``queue`` limits how many runs of it execute at once; ``version`` ("2024-06-01") is
    recorded by the runs it starts, which only workers serving that version resume.
    ``cron`` ("0 9 * * MON-FRI", read in ``timezone``, UTC by default) declares a schedule:
    each tick makes one run, whose payload is a ``ScheduledPayload``; ``catch_up`` ("last"
    or "all") says what runs for the ticks missed while no worker of the task was up.
    """
    limit = None if max_duration is None else duration_ms(max_duration)
    schedule = _declared_schedule(cron, timezone)
    caught_up = clean_catch_up(catch_up)
    if callable(id):
        return _register(id, None, retry, limit, queue, version, schedule, caught_up)

    def decorator(fn: TaskFunction) -> TaskDefinition:
        return _register(fn, id, retry, limit, queue, version, schedule, caught_up)

    return decorator


def _declared_schedule(cron: str | None, timezone: str | None) -> Cron | None:
    if cron is None:
        if timezone is not None:
            raise ConfigurationError("@task(timezone=...) is the time zone of a cron=: give both")
        return None
    return Cron.of(cron, timezone)


def _register(
    fn: TaskFunction,
    task_id: str | None,
    retry: Retry | None,
    max_duration_ms: int | None,
    queue: Queue | None,
    version: str | None,
    cron: Cron | None = None,
    catch_up: CatchUp = CatchUp.LAST,
) -> TaskDefinition:
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"@task needs an async def function; {fn.__qualname__} is not")
    name = task_id or fn.__name__.replace("_", "-")
    existing = REGISTRY.get(name)
    if existing is not None and _origin(existing.fn) != _origin(fn):
        raise ConfigurationError(
            f"task id {name!r} is used twice: {_origin(existing.fn)} and {_origin(fn)}"
        )
    definition = TaskDefinition(
        name,
        fn,
        retry or Retry(),
        _payload_model(fn),
        max_duration_ms,
        queue,
        version,
        cron,
        catch_up,
    )
    REGISTRY[name] = definition
    return definition


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _payload_model(fn: TaskFunction) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters)
    if len(params) != 1:
        raise ConfigurationError(
            f"a task takes exactly one argument, the payload; {fn.__qualname__} takes {len(params)}"
        )
    hint = get_type_hints(fn).get(params[0])
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


def load_tasks(module: str) -> dict[str, TaskDefinition]:
    """Import ``module`` (and, for a package, every submodule); return the tasks it defines."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        root = importlib.import_module(module)
        if hasattr(root, "__path__"):
            for info in pkgutil.walk_packages(root.__path__, prefix=f"{module}."):
                importlib.import_module(info.name)
    except Exception as exc:  # a syntax error in a task file is a configuration problem too
        raise ConfigurationError(
            f"cannot import tasks module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc
    found = {
        name: definition
        for name, definition in REGISTRY.items()
        if definition.fn.__module__ == module or definition.fn.__module__.startswith(f"{module}.")
    }
    return found


def _describe(exc: PydanticValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
