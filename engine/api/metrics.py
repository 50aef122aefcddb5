"""``GET /metrics``: Prometheus metrics (``WAITPOINT_METRICS=1``); ``GET /api/v1/stats``: the
same database figures as JSON (ours, always there, secret key).

What a scrape shows, and where each figure comes from:

- the database's figures (``Storage.stats``: runs by task and status, queue depths and the
  age of each queue's oldest due run, waiting tokens and those expiring within the hour,
  waiting approvals, live workers), read at every scrape: every API process of a database
  reports the same numbers, so any one of them (or all, behind a load balancer) may be
  scraped;
- this process's open live-update streams (``streams``: the count its stream limits keep);
- the figures that exist only in this process (``engine.metrics``): claim latency, attempt
  durations, wait durations, timer lateness, lease rescues, storage transaction latency,
  SQLite group-commit sizes. ``waitpoint dev`` runs its worker in the API's process, so its
  worker's figures are here; ``waitpoint serve`` shows its own transactions only, and a
  worker started alone (``waitpoint worker``) has no ``/metrics`` at all.

The exposition uses a collector of its own per scrape (``ScrapeCollector``), never the
prometheus_client's global registry: nothing of another library's metrics (or of another app
in the same process) leaks into it. prometheus_client's ``collect()`` is synchronous and the
storage is not, so the route reads the database first and the collector turns what it read
into metric families.

Without ``WAITPOINT_METRICS=1`` the route does not exist (404). With it, it takes
``Authorization: Bearer`` with the secret key or ``WAITPOINT_METRICS_TOKEN`` (a credential
for the Prometheus server that opens nothing else); anything else is a 401, counted by the
wrong-credentials limit like every 401 of the API.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from .. import metrics as recording
from ..errors import AuthError
from ..models import RunStatus, StatsSnapshot
from ..settings import Settings
from .body import JSONGuardRoute
from .deps import EngineDep, SecretCaller, auth_of
from .watchers import StreamHub

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ScrapeCollector", "install_metrics", "stats_router"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text format, which every Prometheus server reads."""

stats_router = APIRouter(tags=["metrics"])
stats_router.route_class = JSONGuardRoute

_metrics_router = APIRouter(tags=["metrics"])

_bearer = HTTPBearer(auto_error=False, description="The secret key, or WAITPOINT_METRICS_TOKEN")


@stats_router.get(
    "/api/v1/stats",
    summary="Runs by task and status, queues, waiting tokens and approvals, live workers (ours)",
)
async def stats(engine: EngineDep, _: SecretCaller) -> dict[str, Any]:
    snapshot = await engine.stats()
    body: dict[str, Any] = snapshot.model_dump(mode="json", by_alias=True)
    return body


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Add ``GET /metrics`` to ``app`` if ``settings.metrics``, and start recording this
    process's figures; a ``ConfigurationError`` naming the extra to install if
    prometheus-client is missing (the server does not start)."""
    if not settings.metrics:
        return
    recording.enable()
    token = (settings.metrics_token or "").strip()
    app.state.metrics_token = token.encode() if token else None
    app.include_router(_metrics_router)


def scraper(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The secret key or the metrics token, else 401 (both compared in constant time, and
    both always, so the time taken tells neither apart)."""
    scheme, value = get_authorization_scheme_param(request.headers.get("authorization"))
    given = value.strip().encode() if scheme.lower() == "bearer" else b""
    token: bytes | None = request.app.state.metrics_token
    is_key = auth_of(request).is_secret_key(given)
    is_token = token is not None and hmac.compare_digest(given, token)
    if not given or not (is_key or is_token):
        raise AuthError(
            401, "Invalid credentials: send Authorization: Bearer <secret key or metrics token>"
        )


@_metrics_router.get(
    "/metrics",
    summary="Prometheus metrics: the database's figures and this process's (WAITPOINT_METRICS=1)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def scrape(
    request: Request, engine: EngineDep, _: Annotated[None, Depends(scraper)]
) -> Response:
    from prometheus_client import generate_latest

    started = time.perf_counter()
    snapshot = await engine.stats()
    read_seconds = time.perf_counter() - started
    settings: Settings = request.app.state.settings
    hub: StreamHub | None = getattr(request.app.state, "stream_hub", None)
    collector = ScrapeCollector(
        snapshot,
        streams_open=hub.slots.open if hub is not None else 0,
        streams_max=settings.max_streams,
        read_seconds=read_seconds,
        figures=recording.figures(),
    )
    return Response(generate_latest(collector), media_type=CONTENT_TYPE)


class ScrapeCollector:
    """A prometheus_client collector of one scrape: the database's figures as read for it,
    this process's streams, and this process's recorded figures."""

    def __init__(
        self,
        snapshot: StatsSnapshot,
        *,
        streams_open: int,
        streams_max: int,
        read_seconds: float,
        figures: recording.Figures | None,
    ) -> None:
        self.snapshot = snapshot
        self.streams_open = streams_open
        self.streams_max = streams_max
        self.read_seconds = read_seconds
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        snapshot = self.snapshot
        runs = GaugeMetricFamily(
            "waitpoint_runs",
            "Runs in the database by task and status (finished ones until they are purged).",
            labels=["task", "status"],
        )
        # every status of every task with runs, zeros too: a series that vanished would read
        # as "no data" where the answer is 0
        counts = {(r.task_id, r.status): r.count for r in snapshot.runs}
        for task in sorted({r.task_id for r in snapshot.runs}):
            for status in RunStatus:
                runs.add_metric([task, status.value], counts.get((task, status), 0))
        yield runs

        depth = GaugeMetricFamily(
            "waitpoint_queue_depth",
            "QUEUED runs by task and queue, due or not (a retry waits QUEUED for its delay).",
            labels=["task", "queue"],
        )
        due = GaugeMetricFamily(
            "waitpoint_queue_due",
            "QUEUED runs a worker may claim now, by task and queue.",
            labels=["task", "queue"],
        )
        age = GaugeMetricFamily(
            "waitpoint_queue_oldest_age_seconds",
            "How long the oldest due QUEUED run of the task and queue has waited to start.",
            labels=["task", "queue"],
        )
        for queue in snapshot.queues:
            labels = [queue.task_id, queue.queue]
            depth.add_metric(labels, queue.depth)
            due.add_metric(labels, queue.due)
            age.add_metric(labels, queue.oldest_age_seconds)
        yield from (depth, due, age)

        yield GaugeMetricFamily(
            "waitpoint_tokens_waiting", "Tokens WAITING.", value=snapshot.tokens_waiting
        )
        yield GaugeMetricFamily(
            "waitpoint_tokens_expiring_soon",
            "Tokens WAITING whose timeout falls within the next hour.",
            value=snapshot.tokens_expiring_soon,
        )
        yield GaugeMetricFamily(
            "waitpoint_approvals_waiting",
            "Approvals WAITING for their decision.",
            value=snapshot.approvals_waiting,
        )
        yield GaugeMetricFamily(
            "waitpoint_workers_live",
            "Workers with a recent heartbeat that have not stopped.",
            value=snapshot.live_workers,
        )
        yield GaugeMetricFamily(
            "waitpoint_stats_read_duration_seconds",
            "How long this scrape's read of the database's figures took.",
            value=self.read_seconds,
        )
        yield GaugeMetricFamily(
            "waitpoint_sse_streams_open",
            "Live-update streams (server-sent events) open on this API process.",
            value=self.streams_open,
        )
        yield GaugeMetricFamily(
            "waitpoint_sse_streams_max",
            "The live-update streams this API process keeps open at most (WAITPOINT_MAX_STREAMS).",
            value=self.streams_max,
        )
        if self.figures is not None:
            yield from self.figures.collect()
