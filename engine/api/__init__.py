"""The REST API: Trigger.dev's wire protocol over the same ``Engine`` the CLI uses.

    app = create_app(engine, secret_key="...")   # an ASGI app; serve it with uvicorn

``waitpoint serve`` runs it alone, ``waitpoint dev`` next to a worker.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .. import tracing
from ..client import Engine
from ..settings import Settings
from .approvals import router as approvals_router
from .auth import Auth
from .body import BodyLimitMiddleware
from .cors import PublicRoutesCORS
from .docs import router as docs_router
from .limits import CredentialLimitMiddleware, FailureLimiter
from .metrics import install_metrics, stats_router
from .problems import install_problem_handlers
from .receipts import router as receipts_router
from .retention import router as retention_router
from .runs import router as runs_router
from .schedules import router as schedules_router
from .streams import router as streams_router
from .tokens import router as tokens_router
from .workers import router as workers_router

__all__ = ["create_app"]


def create_app(engine: Engine, *, secret_key: str, settings: Settings | None = None) -> FastAPI:
    """The API over an open ``engine``; the caller opens and closes the engine."""
    settings = settings or engine.settings
    app = FastAPI(
        title="Waitpoint",
        summary="Durable runs and waitpoint tokens, wire-compatible with the Trigger.dev SDK.",
        version="0.1.0",
        docs_url=None,  # ours, in .docs: FastAPI's loads Swagger UI from a CDN
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.auth = Auth(secret_key, previous_key=settings.previous_secret_key)
    app.state.settings = settings
    app.state.credential_limiter = FailureLimiter(settings.auth_failures_per_minute)
    install_problem_handlers(app)
    app.include_router(streams_router)  # before tokens: /tokens/stream is not a token id
    app.include_router(tokens_router)
    app.include_router(receipts_router)
    app.include_router(runs_router)
    app.include_router(workers_router)
    app.include_router(retention_router)
    app.include_router(schedules_router)
    app.include_router(approvals_router)
    app.include_router(stats_router)
    install_metrics(app, settings)  # GET /metrics, with WAITPOINT_METRICS=1 only
    app.include_router(docs_router)
    from ..ui import mount_ui  # late: engine.ui imports from this package

    mount_ui(app, secret_key=secret_key)

    @app.get("/healthz", tags=["health"], summary="Liveness: the API answers")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout_seconds,
    )
    app.add_middleware(CredentialLimitMiddleware, limiter=app.state.credential_limiter)
    app.add_middleware(PublicRoutesCORS)  # outermost: a 413 from a browser is readable too
    tracing.instrument_app(app)  # a span per request, when tracing is on (engine.tracing)
    return app
