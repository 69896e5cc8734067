"""The gateway's metrics, request spans, log context, `/metrics` and the admin console.

`install(app, settings)` (called by `create_app`) adds:

* an ASGI middleware, outermost, that per request
  - counts `paystream_http_requests_total{method,route,status}` and observes
    `paystream_http_request_seconds{method,route}` (route = the path template,
    so ids never become labels);
  - observes `paystream_gateway_payment_seconds{kind,outcome}` for the routes that
    submit a payment and wait for it: request in → outcome out, as the client
    sees it (201 completed, 402 refused, 202 still pending);
  - opens the request's SERVER span when tracing is on (continuing an incoming
    W3C `traceparent`), and binds `trace_id` in structlog's context so every log
    line of the request carries it (`payment_id` and `account` are bound where the
    command is sent, `gateway.ledger_io`);
* `GET /metrics` (Prometheus text; `gateway_metrics_enabled`, default only in development);
* the admin console, static files under `/admin` (`gateway/admin/`): no build step,
  and it only calls the public `/v1` API with the admin's token.

Note: with `gateway_workers > 1` each uvicorn worker has its own registry, and
`/metrics` answers for whichever worker took the request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paystream import metrics, tracing
from paystream.settings import Settings

ADMIN_DIR = Path(__file__).resolve().parent / "admin"

REQUESTS = Counter("paystream_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "paystream_http_request_seconds", "time to answer an HTTP request", ["method", "route"],
    buckets=metrics.LATENCY_BUCKETS,
)  # fmt: skip
PAYMENT_SECONDS = Histogram(
    "paystream_gateway_payment_seconds",
    "payment request received to outcome answered (completed, refused, or pending when the wait ran out)",
    ["kind", "outcome"], buckets=metrics.LATENCY_BUCKETS,
)  # fmt: skip

PAYMENT_ROUTES = {
    "/v1/payments": "transfer",
    "/v1/accounts/{account_number}/deposits": "deposit",
    "/v1/accounts/{account_number}/withdrawals": "withdrawal",
}
_OUTCOMES = {201: "completed", 402: "refused", 202: "pending"}


# Routes that do not put themselves in the scope (plain routes, mounts): by exact path.
_PLAIN_ROUTES = {"/metrics", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


def _route(scope: Scope) -> str:
    """The matched route's path template (API routes record themselves in the scope);
    a known plain path; `/admin` for the console's files; else `unmatched`."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    raw = scope.get("path", "")
    if raw in _PLAIN_ROUTES:
        return str(raw)
    if raw == "/admin" or raw.startswith("/admin/"):
        return "/admin"
    return "unmatched"


def _new_trace_id() -> str:
    """A W3C trace id for the log lines of a request nobody traces. It correlates
    lines; it guards nothing, so it comes from `random` as OpenTelemetry's own id
    generator's do, not from a urandom call per request (2 % of the gateway's CPU)."""
    return f"{random.getrandbits(128) or 1:032x}"


def _incoming_trace_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            parts = value.decode("latin-1").split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                return parts[1]
    return None


class Observability:
    """Pure ASGI middleware (no body buffering, no per-request allocation beyond a closure)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                REQUESTS.labels(method, route, str(status)),
                REQUEST_SECONDS.labels(method, route),
            )
        pair[0].inc()
        pair[1].observe(seconds)
        kind = PAYMENT_ROUTES.get(route)
        if kind is not None and method == "POST":
            PAYMENT_SECONDS.labels(kind, _OUTCOMES.get(status, "error")).observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        try:
            if tracing.enabled():
                await self._traced(scope, receive, send_status, method, lambda: status)
            else:
                tid = _incoming_trace_id(scope) or _new_trace_id()
                with structlog.contextvars.bound_contextvars(trace_id=tid):
                    await self.app(scope, receive, send_status)
        finally:
            self._record(method, _route(scope), status, time.perf_counter() - t0)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, method: str, status: Callable[[], int]) -> None:
        headers = [
            (k.decode("latin-1"), v) for k, v in scope.get("headers", ()) if k in (b"traceparent", b"tracestate")
        ]
        with tracing.tracer().start_as_current_span(
            f"{method} {scope.get('path', '')}", context=tracing.extract(headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", ""),
                        "paystream.component": "gateway"},
        ) as span:  # fmt: skip
            try:
                with structlog.contextvars.bound_contextvars(trace_id=tracing.current_trace_id()):
                    await self.app(scope, receive, send)
            finally:
                route = _route(scope)
                code = status()
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", code)
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))


class AdminFiles(StaticFiles):
    """The console's static files, with headers that keep it to itself."""

    HEADERS = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        resp = super().file_response(*args, **kwargs)
        resp.headers.update(self.HEADERS)
        return resp


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, settings: Settings) -> None:
    tracing.setup("gateway", settings)
    metrics.UP.labels("gateway").set(1)
    if settings.gateway_serves_metrics:
        app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.mount("/admin", AdminFiles(directory=ADMIN_DIR, html=True), name="admin")
    app.add_middleware(Observability)
