"""OpenTelemetry traces, off unless `otel_enabled` (PAYSTREAM_OTEL_ENABLED=true).

One trace follows a payment across processes: the gateway's HTTP span puts a
W3C `traceparent` header on the command it produces; each Quix app
(`MessageTracer`) opens a span per input message whose parent is that header,
and puts its own span's `traceparent` on every message the input produced (the
ledger's events and legs, fraud's alerts and freezes, notifications), so the
next hop continues the same trace.

Disabled, nothing here costs anything on the hot path: apps do not wrap their
processors, the gateway adds no headers, and the API's no-op tracer is used.
Quix copies an input's headers to its outputs by default, so even a hop that is
not traced passes the trace on.

Spans go to `otel_endpoint` over OTLP/HTTP (protobuf), batched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from paystream.settings import Settings

log = logging.getLogger("paystream.tracing")

TRACE_HEADERS = ("traceparent", "tracestate")
_propagator = TraceContextTextMapPropagator()
_enabled = False
_provider: Any = None

Headers = Sequence[tuple[str, bytes | str | None]] | None


def setup(service: str, settings: Settings) -> bool:
    """Install the SDK's tracer provider for this process (once). True when tracing is on."""
    global _enabled, _provider
    if not settings.otel_enabled:
        return False
    if _enabled:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "paystream"}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    endpoint = settings.otel_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _enabled = True
    log.info("tracing to %s as %s", endpoint, service)
    return True


def shutdown() -> None:
    """Flush spans still queued (called at exit by the components)."""
    if _provider is not None:
        _provider.shutdown()


def enabled() -> bool:
    return _enabled


def tracer() -> trace.Tracer:
    return trace.get_tracer("paystream")


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def extract(headers: Headers) -> otel_context.Context | None:
    """The remote parent carried by Kafka headers (a list of (name, bytes)), if any."""
    if not headers:
        return None
    carrier: dict[str, str] = {}
    for k, v in headers:
        if k in TRACE_HEADERS and v is not None:
            carrier[k] = v.decode("latin-1") if isinstance(v, bytes) else v
    return _propagator.extract(carrier) if carrier else None


def inject() -> list[tuple[str, bytes]]:
    """W3C trace headers for the current span (empty when none is recording)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return [(k, v.encode("latin-1")) for k, v in carrier.items()]


def trace_id_of(headers: Headers) -> str | None:
    """The trace id in a message's traceparent (tests and tools)."""
    for k, v in headers or ():
        if k == "traceparent" and v:
            text = v.decode("latin-1") if isinstance(v, bytes) else v
            parts = text.split("-")
            if len(parts) >= 3:
                return parts[1]
    return None


def replace_trace_headers(headers: Iterable[tuple[str, Any]], new: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in headers if k not in TRACE_HEADERS] + new


class MessageTracer:
    """Wraps a Quix per-message function `(value, key, timestamp, headers, state)`
    in a CONSUMER span continuing the trace of the message's `traceparent`.

    `set_headers` (for `sdf.set_headers`, placed after the `apply`) puts the
    span's context on every output of that message, so the next hop's span is
    this one's child. Quix runs a message's outputs through the rest of the
    dataframe before it takes the next message, so remembering the last
    message's headers on the instance is enough.
    """

    def __init__(self, inner: Any, component: str) -> None:
        self.inner = inner
        self.component = component
        self.name = f"{component} process"
        self._out: list[tuple[str, bytes]] = []

    def __call__(self, value: Any, key: Any, timestamp: int, headers: Any, *rest: Any) -> Any:
        from quixstreams import message_context

        ctx = message_context()
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": ctx.topic,
            "messaging.destination.partition.id": str(ctx.partition),
            "messaging.kafka.offset": ctx.offset,
            "paystream.component": self.component,
        }
        with tracer().start_as_current_span(
            self.name, context=extract(headers), kind=SpanKind.CONSUMER, attributes=attributes
        ):
            out = self.inner(value, key, timestamp, headers, *rest)
            self._out = inject()
        return out

    def set_headers(self, value: Any, key: Any, timestamp: int, headers: Any) -> list[tuple[str, Any]]:
        return replace_trace_headers(headers or [], self._out)


def annotate(**attributes: Any) -> None:
    """Attributes on the current span (payment_id, account, ...); free when not recording."""
    span = trace.get_current_span()
    if span.is_recording():
        for k, v in attributes.items():
            if v is not None:
                span.set_attribute(k, v)


def instrument_quix(processor: Any, component: str) -> tuple[Any, Any]:
    """The function to `apply` and a hook to call on the applied dataframe:
    `fn, after = instrument_quix(...); sdf = after(sdf.apply(fn, ...))`."""
    if not _enabled:
        return processor, lambda s: s
    wrapped = MessageTracer(processor, component)
    return wrapped, lambda s: s.set_headers(wrapped.set_headers)
