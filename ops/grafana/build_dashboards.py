"""Writes ops/grafana/dashboards/*.json (Grafana dashboards for paystream's Prometheus metrics).

The JSON files are committed; edit the panels here and run
`python ops/grafana/build_dashboards.py` to regenerate them. The metric names are the
ones paystream defines (tests/unit/test_dashboards.py checks that every name exists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}  # the otel-lgtm image's Prometheus datasource


def panel(title: str, exprs: dict[str, str], *, unit: str = "short", kind: str = "timeseries",
          w: int = 12, h: int = 8, desc: str = "") -> dict[str, Any]:
    return {
        "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 8}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + i)}
                    for i, (legend, e) in enumerate(exprs.items())],
    }


def quantiles(metric: str, by: str = "", where: str = "") -> dict[str, str]:
    sel = f"{{{where}}}" if where else ""
    group = f"le{', ' + by if by else ''}"
    suffix = f" {{{{{by}}}}}" if by else ""
    return {f"p{int(q * 100)}{suffix}":
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel}[$__rate_interval])))"
            for q in (0.5, 0.95, 0.99)}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    x = y = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        if x + p["gridPos"]["w"] > 24:
            x, y = 0, y + 8
        p["gridPos"].update({"x": x, "y": y})
        x += p["gridPos"]["w"]
    return {
        "uid": uid, "title": title, "tags": ["paystream"], "timezone": "utc", "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


RATE = "[$__rate_interval]"

DASHBOARDS = {
    "paystream-throughput": dashboard("paystream-throughput", "paystream / throughput", [
        panel("HTTP requests by route", {"{{method}} {{route}}":
              f"sum by (method, route) (rate(paystream_http_requests_total{RATE}))"}, unit="reqps"),
        panel("Ledger outcomes by status", {"{{command_type}} {{status}}":
              f"sum by (command_type, status) (rate(paystream_ledger_outcomes_total{RATE}))"}, unit="ops"),
        panel("Messages processed by component", {"{{component}} ← {{topic}}":
              f"sum by (component, topic) (rate(paystream_messages_total{RATE}))"}, unit="ops"),
        panel("Read model (sink) writes", {"events": f"rate(paystream_sink_events_total{RATE})",
                                           "postings": f"rate(paystream_sink_postings_total{RATE})"}, unit="ops"),
        panel("Notifications by kind", {"{{kind}}":
              f"sum by (kind) (rate(paystream_notifications_total{RATE}))"}, unit="ops"),
        panel("Webhook attempts by result", {"{{result}}":
              f"sum by (result) (rate(paystream_webhook_attempts_total{RATE}))"}, unit="ops"),
    ]),
    "paystream-latency": dashboard("paystream-latency", "paystream / latency", [
        panel("Payment: request → outcome (gateway, completed)",
              quantiles("paystream_gateway_payment_seconds", where='outcome="completed"'), unit="s",
              desc="POST /v1/payments received to the ledger's outcome answered"),
        panel("Command produced → terminal outcome (ledger)",
              quantiles("paystream_ledger_e2e_seconds", by="command_type"), unit="s",
              desc="now minus the command's Kafka timestamp, at the ledger's terminal event"),
        panel("HTTP request latency p95 by route", {"{{route}}": "histogram_quantile(0.95, sum by (le, route) "
              f"(rate(paystream_http_request_seconds_bucket{RATE})))"}, unit="s"),
        panel("Processing time per message p99", {"{{component}}": "histogram_quantile(0.99, sum by "
              f"(le, component) (rate(paystream_process_seconds_bucket{RATE})))"}, unit="s"),
        panel("Checkpoint commit (Kafka transaction) p99", {"{{component}}": "histogram_quantile(0.99, sum by "
              f"(le, component) (rate(paystream_commit_seconds_bucket{RATE})))"}, unit="s"),
        panel("Sink batch write", quantiles("paystream_sink_batch_seconds"), unit="s"),
        panel("Webhook attempt duration", quantiles("paystream_webhook_attempt_seconds"), unit="s"),
    ]),
    "paystream-lag": dashboard("paystream-lag", "paystream / lag and backlogs", [
        panel("Consumer lag by component", {"{{component}} {{topic}}":
              "sum by (component, topic) (paystream_consumer_lag)"}),
        panel("Consumer lag by partition", {"{{component}} {{topic}}[{{partition}}]":
              "max by (component, topic, partition) (paystream_consumer_lag)"}),
        panel("Sink lag by partition", {"sink ledger.events[{{partition}}]": "paystream_sink_lag"}),
        panel("Outbox backlogs", {"{{outbox}}": "paystream_outbox_backlog"},
              desc="gateway: commands not yet published; reviews: decisions; webhooks: pending deliveries"),
        panel("Outbox publish rate", {"{{outbox}}":
              f"sum by (outbox) (rate(paystream_outbox_published_total{RATE}))"}, unit="ops"),
    ]),
    "paystream-fraud": dashboard("paystream-fraud", "paystream / fraud", [
        panel("Alerts by risk", {"{{risk}}": f"sum by (risk) (rate(paystream_fraud_alerts_total{RATE}))"},
              unit="ops"),
        panel("Rules fired (last hour)", {"{{rule}}":
              "sum by (rule) (increase(paystream_fraud_rule_hits_total[1h]))"}, kind="barchart"),
        panel("Debits scored", {"scored": f"rate(paystream_fraud_scored_total{RATE})",
                                "freezes": f"rate(paystream_fraud_freezes_total{RATE})"}, unit="ops"),
        panel("Compensation commands", {"{{type}}":
              f"sum by (type) (rate(paystream_compensation_commands_total{RATE}))"}, unit="ops"),
        panel("Review decisions pending publication", {"backlog": 'paystream_outbox_backlog{outbox="reviews"}'}),
    ]),
    "paystream-errors": dashboard("paystream-errors", "paystream / errors", [
        panel("Dead letters by component and reason", {
            "{{component}} {{reason}}": f"sum by (component, reason) (rate(paystream_dead_letters_total{RATE}))",
            "sink {{reason}}": f"sum by (reason) (rate(paystream_sink_dead_letters_total{RATE}))"}, unit="ops"),
        panel("HTTP 5xx by route", {"{{route}} {{status}}": "sum by (route, status) "
              f'(rate(paystream_http_requests_total{{status=~"5.."}}{RATE}))'}, unit="reqps"),
        panel("HTTP 4xx by status", {"{{status}}": "sum by (status) "
              f'(rate(paystream_http_requests_total{{status=~"4.."}}{RATE}))'}, unit="reqps"),
        panel("Ledger refusals by reason", {"{{command_type}} {{reason}}": "sum by (command_type, reason) "
              f'(rate(paystream_ledger_outcomes_total{{status=~"REJECTED|FAILED"}}{RATE}))'}, unit="ops"),
        panel("Webhook retries and dead deliveries", {
            "retries": f"rate(paystream_webhook_retries_total{RATE})",
            "dead": f'rate(paystream_webhook_attempts_total{{result="dead"}}{RATE})'}, unit="ops"),
        panel("Sink recoveries (reconnect + re-seek)",
              {"recoveries": f"increase(paystream_sink_recoveries_total{RATE})"}),
        panel("Processes up (scrape)", {"{{job}} {{instance}}": 'up{job=~"paystream.*"}'}, w=24),
    ]),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, doc in DASHBOARDS.items():
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {OUT / name}.json")


if __name__ == "__main__":
    main()
