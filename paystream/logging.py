"""Structured logs: one JSON object per line on stdout, for every paystream process.

`configure(component)` sets up structlog and routes the standard library's
logging (ours, Quix Streams', librdkafka's, uvicorn's) through the same
renderer, so `log.info("...%s", x)` in existing code and
`structlog.get_logger().info("event", k=v)` both come out as JSON with the
same fields: `ts`, `level`, `logger`, `component`, `event`, plus whatever is
bound in the context.

Payment context. Lines about a payment carry `payment_id`, `account` and
`trace_id`. Request handlers and message processors bind them with
`structlog.contextvars.bind_contextvars` (the gateway does it per request);
stdlib calls pass them as `extra=payment_fields(...)`. Nothing here logs per
message: the hot paths log only what is unusual (dead letters, alerts).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

_configured: str | None = None

# Attributes of a LogRecord that are not user "extra" fields.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _add_component(component: str) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("component", component)
        return event

    return add


def _extra_fields(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """`extra={...}` of a stdlib call becomes top-level fields."""
    record: logging.LogRecord | None = event.get("_record")
    if record is not None:
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                event.setdefault(k, v)
    return event


def _trace_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The current OpenTelemetry trace id, when a span is recording and none is bound."""
    if "trace_id" not in event:
        from paystream.tracing import current_trace_id

        tid = current_trace_id()
        if tid:
            event["trace_id"] = tid
    return event


def configure(component: str, level: str | None = None, fmt: str | None = None) -> None:
    """Idempotent per process. `level`/`fmt` default to the settings."""
    global _configured
    if level is None or fmt is None:
        from paystream.settings import get_settings

        s = get_settings()
        level = level or s.log_level
        fmt = fmt or s.log_format
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_component(component),
        _trace_id,
    ]
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _extra_fields],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that install their own handlers would print twice or bypass JSON.
    for name in ("quixstreams", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = component


def configured() -> bool:
    """True once `configure` ran: Quix apps then leave logging to us (loglevel=None)."""
    return _configured is not None


def payment_fields(payment_id: str | None = None, account: str | None = None, **more: Any) -> dict[str, Any]:
    """`extra=` for a stdlib log call about a payment: the fields every such line carries."""
    fields: dict[str, Any] = {"payment_id": payment_id, "account": account, **more}
    from paystream.tracing import current_trace_id

    tid = current_trace_id()
    if tid:
        fields["trace_id"] = tid
    return fields


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
