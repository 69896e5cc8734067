"""The HTTP API: `paystream run gateway` serves `create_server_app()` with uvicorn.

This module only assembles the app; the routes are in `gateway/routes/`, what they
share in `gateway.deps`, and the ASGI middleware in `gateway.middleware`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.responses import Response

from gateway import problems
from gateway.deps import GatewayDep
from gateway.fastpath import PaymentsFastPath
from gateway.middleware import BodyLimit
from gateway.routes import api_router
from gateway.service import Gateway, json_response
from paystream import runtime
from paystream.settings import Settings, get_settings


def create_server_app() -> FastAPI:
    """What `paystream run gateway` serves: the app, plus process-wide tuning that
    in-process users of `create_app` (tests, tools) should not get."""
    app = create_app()
    app.state.server = True
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Refuse to start on a missing or weak JWT secret outside development (ConfigError),
    # now rather than at the first request.
    settings.jwt_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = Gateway(settings)
        await gw.start()
        app.state.gw = gw
        if getattr(app.state, "server", False):
            runtime.tune_gc()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="paystream gateway",
        version="1.0.0",
        lifespan=lifespan,
        # the API description and Swagger UI map every endpoint for an attacker; public
        # only in development unless PAYSTREAM_GATEWAY_DOCS_ENABLED says otherwise
        openapi_url="/openapi.json" if settings.gateway_serves_docs else None,
        docs_url="/docs" if settings.gateway_serves_docs else None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry instrumentation (on once a tracer provider exists)
        # is off: gateway/observability.py makes the one request span and the metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    problems.install(app)
    app.include_router(api_router)  # /v1/... (gateway/routes/)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(gw: GatewayDep) -> Response:
        """Liveness: the process answers (200 even while its listener catches up)."""
        return json_response(200, {"ok": gw.listener.ready.is_set(), "waiting": gw.listener.waiting})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(gw: GatewayDep) -> Response:
        """Readiness: 503 until the outcome listener has caught up, since a payment sent
        before then could not be answered with its outcome (a load balancer or a
        Kubernetes readiness probe keeps traffic away meanwhile)."""
        ready = gw.listener.ready.is_set()
        return json_response(200 if ready else 503, {"ok": ready, "waiting": gw.listener.waiting})

    app.add_middleware(PaymentsFastPath)  # inside BodyLimit: it reads the bounded body
    app.add_middleware(BodyLimit, limit=settings.gateway_max_body_bytes)
    from gateway import observability

    observability.install(app, settings)  # /metrics, request metrics and spans, /admin console
    return app
