"""OpenTelemetry traces of runs: on when the ``otel`` extra is installed and configured, and
free (nothing imported, nothing done) otherwise.

On when either:

- the standard ``OTEL_*`` environment variables ask for an exporter
  (``OTEL_TRACES_EXPORTER=otlp|console``, or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``):
  the engine then sets up the SDK itself (a ``TracerProvider`` with the ``OTEL_SERVICE_NAME``
  resource, ``waitpoint`` by default, and a batch processor per exporter);
- or the application set a tracer provider of its own (it imported OpenTelemetry and called
  ``trace.set_tracer_provider``): the engine's spans go there.

A trace crosses the waits through the database: ``trigger()`` stores the W3C ``traceparent``
of the span it was called in (or of a new root ``trigger`` span) on the run, and every
attempt of the run, on any worker, hours or days later, continues that trace from it. A span
that lasted while no process held it (a run from trigger to end, a wait from park to resume)
is emitted afterwards with its real start time. A token completed inside a traced request
keeps that request's ``traceparent``, and the wait it ends links to it.

Spans: ``trigger <task>`` (a root, for a run triggered outside any trace), ``attempt
<task>`` per execution (attributes ``waitpoint.run_id``, ``waitpoint.task_id``,
``waitpoint.attempt``, ``waitpoint.resumed``), ``step <name>`` inside it, ``wait <kind>``
(a token, a group, a sleep, a child, a message, an approval: from when the run parked to when
it went on, with ``waitpoint.token_id`` and ``waitpoint.completed_via`` where they apply), and
``run <task>`` from the trigger to the terminal state, emitted when the run ends. The API's
requests get FastAPI's own spans (``opentelemetry-instrumentation-fastapi``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .logs import get_logger

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, Tracer

log = get_logger("engine.tracing")

SCOPE = "waitpoint"
"""The instrumentation scope of the engine's spans."""
_EXPORTERS = ("otlp", "console")

_configured: Tracer | None = None
_set_up = False


def tracer() -> Tracer | None:
    """The tracer spans go through, or None: tracing is off (the common, free case)."""
    global _configured, _set_up
    if _configured is not None:
        return _configured
    if not _set_up:
        _set_up = True
        if _asked_by_environment():
            _configured = _from_environment()
            if _configured is not None:
                return _configured
    if "opentelemetry.trace" not in sys.modules:  # no one imported it: off, and nothing paid
        return None
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # imported, never configured
    return trace.get_tracer(SCOPE)


def _asked_by_environment() -> bool:
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(exporters or endpoint)


def _from_environment() -> Tracer | None:
    """The SDK set up from ``OTEL_*`` (unless the application set a provider already)."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        log.warning(
            "tracing.unavailable",
            problem="OTEL_* asks for traces but OpenTelemetry is not installed:"
            " pip install 'waitpoint[otel]'",
        )
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return trace.get_tracer(SCOPE)
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name:
            log.warning("tracing.unknown_exporter", exporter=name, known=list(_EXPORTERS))
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "waitpoint"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(SCOPE)


def traceparent(root: str | None = None, attributes: Mapping[str, Any] | None = None) -> str | None:
    """The W3C ``traceparent`` of the current span; with none current and a ``root`` name,
    of a new root span of that name (ended at once: it only starts the trace). None when
    tracing is off, or with no current span and no ``root``."""
    found = tracer()
    if found is None:
        return None
    from opentelemetry import trace

    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return _format(current.trace_id, current.span_id, current.trace_flags)
    if root is None:
        return None
    with found.start_as_current_span(root, attributes=attributes) as started:
        made = started.get_span_context()
    return _format(made.trace_id, made.span_id, made.trace_flags)


def _format(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _context(parent: str | None) -> Any:
    """The OpenTelemetry context a ``traceparent`` names (None: the current one)."""
    if parent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": parent})


def _link(parent: str | None) -> list[Link]:
    if parent is None:
        return []
    from opentelemetry import trace

    context = trace.get_current_span(_context(parent)).get_span_context()
    return [trace.Link(context)] if context.is_valid else []


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    links_to: list[str] | None = None,
) -> Iterator[Span | None]:
    """A span around the block (current inside it), child of ``parent`` (a ``traceparent``)
    or of the current span; yields None and does nothing when tracing is off."""
    found = tracer()
    if found is None:
        yield None
        return
    links = [link for tp in links_to or [] for link in _link(tp)]
    with found.start_as_current_span(
        name, context=_context(parent), attributes=attributes, links=links
    ) as started:
        yield started


def emit(
    name: str,
    *,
    start_ms: int,
    end_ms: int,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    links_to: list[str] | None = None,
) -> None:
    """A span of the past (a wait, a run), with its real times; child of ``parent`` or of
    the current span. Nothing when tracing is off."""
    found = tracer()
    if found is None:
        return
    links = [link for tp in links_to or [] for link in _link(tp)]
    made = found.start_span(
        name,
        context=_context(parent),
        attributes=attributes,
        links=links,
        start_time=start_ms * 1_000_000,
    )
    made.end(end_time=max(end_ms, start_ms) * 1_000_000)


def link_current(parent: str | None) -> None:
    """Link the current span to ``parent`` (the request that completed what it waited on)."""
    if parent is None or tracer() is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for link in _link(parent):
        current.add_link(link.context, {"waitpoint.link": "completed-by"})


def instrument_app(app: Any) -> None:
    """FastAPI's spans for the API's requests, when tracing is on (and the instrumentation
    is installed)."""
    if tracer() is None:
        return
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        log.warning(
            "tracing.no_request_spans",
            problem="opentelemetry-instrumentation-fastapi is not installed:"
            " pip install 'waitpoint[otel]'",
        )
        return
    FastAPIInstrumentor.instrument_app(app)


def reset() -> None:
    """Forget what was found (tests that set a provider of their own)."""
    global _configured, _set_up
    _configured = None
    _set_up = False
