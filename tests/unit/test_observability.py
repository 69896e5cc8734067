"""Logging, metrics and tracing helpers (paystream.logging, .metrics, .tracing)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from opentelemetry import context as otel_context
from prometheus_client import REGISTRY

from paystream import metrics, tracing
from paystream.settings import PROJECT_ROOT, Settings

STATS = {
    "topics": {
        "ledger.events": {
            "partitions": {
                "0": {"fetch_state": "active", "ls_offset": 120, "hi_offset": 125, "app_offset": 100,
                      "consumer_lag": 40},
                "1": {"fetch_state": "active", "ls_offset": 10, "hi_offset": 10, "app_offset": -1001,
                      "consumer_lag": 3},
                "2": {"fetch_state": "none", "ls_offset": 99, "app_offset": 1},
                "-1": {"fetch_state": "none"},
            }
        }
    }
}


def test_lag_is_last_stable_offset_minus_position() -> None:
    assert metrics.lag_from_stats(STATS) == {("ledger.events", 0): 20, ("ledger.events", 1): 3}


def test_lag_reporter_sets_and_drops_partitions() -> None:
    rep = metrics.LagReporter("unit-test")

    def lag(p: str) -> float | None:
        return REGISTRY.get_sample_value(
            "paystream_consumer_lag", {"component": "unit-test", "topic": "ledger.events", "partition": p})

    rep(json.dumps(STATS))
    assert lag("0") == 20 and lag("1") == 3
    only0 = {"topics": {"ledger.events": {"partitions": {"0": STATS["topics"]["ledger.events"]["partitions"]["0"]}}}}
    rep(json.dumps(only0))
    assert lag("0") == 20 and lag("1") is None
    rep("not json")  # ignored


def test_metrics_ports_come_from_settings() -> None:
    s = Settings(ledger_metrics_port=9999, webhooks_metrics_port=0)
    assert s.metrics_port("ledger") == 9999
    assert s.metrics_port("outbox-relay") == 9106
    assert s.metrics_port("webhooks") == 0
    assert s.metrics_port("gateway") == 0  # the gateway serves /metrics on its HTTP port
    cfg = metrics.quix_consumer_config("fraud", s, "7")
    assert cfg["client.id"] == "paystream-fraud-7" and callable(cfg["stats_cb"])


def test_trace_headers_round_trip() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [("other", b"x"), ("traceparent", tp.encode())]
    ctx = tracing.extract(headers)
    assert ctx is not None
    token = otel_context.attach(ctx)
    try:
        assert tracing.inject() == [("traceparent", tp.encode())]
    finally:
        otel_context.detach(token)
    assert tracing.trace_id_of(headers) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.extract([("other", b"x")]) is None and tracing.extract(None) is None
    new = [("traceparent", b"00-1-2-01")]
    assert tracing.replace_trace_headers(headers, new) == [("other", b"x"), ("traceparent", b"00-1-2-01")]


def test_disabled_tracing_leaves_processors_alone() -> None:
    assert not tracing.setup("unit", Settings(otel_enabled=False))

    def proc(*_: object) -> list[int]:
        return [1]

    fn, after = tracing.instrument_quix(proc, "unit")
    assert fn is proc and after("sdf") == "sdf"


def _run(code: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_logs_are_json_with_payment_fields_and_bound_context() -> None:
    lines = _run("""
        import logging, structlog
        from paystream import logging as plog
        plog.configure("ledger", "INFO", "json")
        logging.getLogger("paystream.x").debug("not shown")
        logging.getLogger("paystream.x").warning("dead-lettering %s", "p0",
            extra=plog.payment_fields("pay-1", "acct-1", reason_code="INVALID"))
        structlog.contextvars.bind_contextvars(trace_id="t" * 32, payment_id="pay-2", account="acct-2")
        structlog.get_logger("paystream.y").info("payment accepted", status=202)
        logging.getLogger("quixstreams").info("from quix")
    """)
    assert len(lines) == 3, lines
    a, b, c = lines
    assert a["event"] == "dead-lettering p0" and a["level"] == "warning" and a["component"] == "ledger"
    assert a["payment_id"] == "pay-1" and a["account"] == "acct-1" and a["reason_code"] == "INVALID"
    assert a["logger"] == "paystream.x" and "ts" in a
    assert b["payment_id"] == "pay-2" and b["account"] == "acct-2" and b["trace_id"] == "t" * 32
    assert b["status"] == 202
    assert c["logger"] == "quixstreams" and c["trace_id"] == "t" * 32


def test_a_recording_span_puts_its_trace_id_on_log_lines() -> None:
    lines = _run("""
        import logging
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from paystream import logging as plog
        trace.set_tracer_provider(TracerProvider())
        plog.configure("fraud", "INFO", "json")
        with trace.get_tracer("t").start_as_current_span("s") as span:
            logging.getLogger("paystream.fraud").info("alert")
            print('{"want": "%032x"}' % span.get_span_context().trace_id)
    """)
    assert lines[0]["trace_id"] == lines[1]["want"]


def test_local_metrics_expose_like_prometheus_client() -> None:
    from prometheus_client import generate_latest

    c = metrics.local_counter("paystream_unit_local_total", "x", ["k"])
    h = metrics.local_histogram("paystream_unit_local_seconds", "y", ["k"], buckets=(0.1, 1.0))
    c.labels("a").inc()
    c.labels("a").inc(2)
    for v in (0.05, 0.1, 0.5, 3.0):
        h.labels("a").observe(v)
    text = generate_latest().decode()
    assert 'paystream_unit_local_total{k="a"} 3.0' in text
    assert 'paystream_unit_local_seconds_bucket{k="a",le="0.1"} 2.0' in text
    assert 'paystream_unit_local_seconds_bucket{k="a",le="1.0"} 3.0' in text
    assert 'paystream_unit_local_seconds_bucket{k="a",le="+Inf"} 4.0' in text
    assert 'paystream_unit_local_seconds_count{k="a"} 4.0' in text
    assert REGISTRY.get_sample_value("paystream_unit_local_seconds_sum", {"k": "a"}) == 3.65
