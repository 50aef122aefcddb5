"""The figures that exist only in this process (how long claims, attempts, waits and
transactions take; how late timers fire; how many runs were rescued; how full SQLite's group
commits are), recorded where they happen and shown by the API's ``GET /metrics``
(``engine.api.metrics``, which adds the database's own figures, read at each scrape).

Recording is off until ``enable()``, which the API does when ``WAITPOINT_METRICS=1``. Every
recording site tests ``metrics.on`` before it measures anything, so with metrics off (the
default) the hot path pays one module attribute read per site, less than a call::

    if metrics.on:
        metrics.claimed(anyio.current_time() - asked)

Only the API server exposes ``/metrics``: ``waitpoint dev`` runs a worker and the API in one
process, so its worker's figures are shown; a worker started alone (``waitpoint worker``)
never enables recording, as nothing would read what it recorded. The database's figures
(runs, queues, tokens, workers) do not depend on which process is scraped.

prometheus-client is an optional extra (``pip install 'waitpoint[metrics]'``): it is imported
by ``enable()`` only, so this module costs nothing where metrics are not used. Its objects
live here, in no registry (not the library's global default one): the API's exposition asks
them for their samples (``Figures.collect``) at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

INSTALL = "pip install 'waitpoint[metrics]'"

on: bool = False
"""Whether this process records its figures (``enable``); test it before measuring."""

_figures: Figures | None = None

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of a database round trip or a few (seconds)."""
_ATTEMPT = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_WAIT = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86_400.0, 7 * 86_400.0)
"""A wait lasts from a webhook's second to an approver's week."""
_LATENESS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class Figures:
    """This process's histograms and counters (prometheus_client objects in no registry)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        def histogram(
            name: str, text: str, labels: Sequence[str] = (), buckets: Sequence[float] = _FAST
        ) -> Histogram:
            return Histogram(name, text, labels, registry=None, buckets=buckets)

        self.claim: Histogram = histogram(
            "waitpoint_claim_duration_seconds",
            "How long a worker's claim of due runs took (one claim_runs call, in this process).",
        )
        self.attempt: Histogram = histogram(
            "waitpoint_attempt_duration_seconds",
            "How long attempts executed, from claim to end, by task and outcome (completed,"
            " failed, timed_out, retrying, released: parked or handed back, stopped, crashed).",
            ("task", "outcome"),
            _ATTEMPT,
        )
        self.wait: Histogram = histogram(
            "waitpoint_wait_duration_seconds",
            "How long runs stayed parked on a wait, from parking to the attempt that went on"
            " past it, by kind of waitpoint (recorded by the process that resumed it).",
            ("kind",),
            _WAIT,
        )
        self.lateness: Histogram = histogram(
            "waitpoint_timer_lateness_seconds",
            "How late the timers this process fired were, past their due time: waitpoint"
            " deadlines (token timeouts, sleeps), delayed runs, runs' time to live.",
            ("timer",),
            _LATENESS,
        )
        self.rescues: Counter = Counter(
            "waitpoint_lease_rescues",
            "Runs this process's worker took back from workers that fell silent.",
            registry=None,
        )
        self.transaction: Histogram = histogram(
            "waitpoint_storage_transaction_duration_seconds",
            "How long this process's write transactions took, queueing for the writer"
            " included, by backend and storage operation.",
            ("backend", "operation"),
        )
        self.batch: Histogram = histogram(
            "waitpoint_sqlite_group_commit_operations",
            "Write operations committed together in one SQLite transaction (group commit).",
            (),
            _BATCH,
        )
        self._all: list[Counter | Histogram] = [
            self.claim,
            self.attempt,
            self.wait,
            self.lateness,
            self.rescues,
            self.transaction,
            self.batch,
        ]

    def collect(self) -> Iterator[Metric]:
        """The samples of every figure, as a prometheus_client collector gives them."""
        for figure in self._all:
            yield from figure.collect()


def enable() -> Figures:
    """Start recording in this process (kept from then on: counters must never go back);
    ``ConfigurationError`` without prometheus-client."""
    global on, _figures
    try:
        import prometheus_client  # noqa: F401  (checked at each call: the API's start)
    except ImportError:
        raise ConfigurationError(
            f"WAITPOINT_METRICS=1 needs the prometheus-client package: {INSTALL}"
        ) from None
    if _figures is None:
        _figures = Figures()
    on = True
    return _figures


def disable() -> None:
    """Stop recording (tests); what was recorded stays for the next ``enable``."""
    global on
    on = False


def figures() -> Figures | None:
    """The figures, once recording was enabled in this process."""
    return _figures


# -- recording: called only where ``on`` was seen True --------------------------------------


def claimed(seconds: float) -> None:
    if _figures is not None:
        _figures.claim.observe(seconds)


def attempted(task_id: str, outcome: str, seconds: float) -> None:
    if _figures is not None:
        _figures.attempt.labels(task_id, outcome).observe(seconds)


def waited(kind: str, seconds: float) -> None:
    if _figures is not None:
        _figures.wait.labels(kind).observe(max(0.0, seconds))


def fired(timer: str, late_ms: Sequence[int]) -> None:
    """Timers of one kind fired: how late each was, in milliseconds."""
    if _figures is not None and late_ms:
        histogram = _figures.lateness.labels(timer)
        for late in late_ms:
            histogram.observe(max(0, late) / 1000)


def rescued(runs: int) -> None:
    if _figures is not None:
        _figures.rescues.inc(runs)


def transaction(backend: str, op: Callable[..., Any], seconds: float) -> None:
    if _figures is not None:
        _figures.transaction.labels(backend, operation_name(op)).observe(seconds)


def committed_together(operations: int) -> None:
    if _figures is not None:
        _figures.batch.observe(operations)


_OPERATIONS: dict[str, str] = {}


def operation_name(op: Callable[..., Any]) -> str:
    """The storage method an operation was made in: ``claim_runs`` for the ``op`` defined
    in ``Runs.claim_runs`` (its ``__qualname__`` is ``Runs.claim_runs.<locals>.op``), so
    the label's values are the storage's methods, a bounded set."""
    qualname = getattr(op, "__qualname__", None) or type(op).__name__
    name = _OPERATIONS.get(qualname)
    if name is None:
        name = qualname.split(".<locals>", 1)[0].rsplit(".", 1)[-1]
        if len(_OPERATIONS) < 1000:
            _OPERATIONS[qualname] = name
    return name
