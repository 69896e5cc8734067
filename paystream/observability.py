"""What `paystream run NAME` sets up before a component starts: JSON logs, traces
(when enabled), the component's metrics port and, for the processes that own an
outbox, the backlog counter. See docs/OBSERVABILITY.md."""

from __future__ import annotations

import atexit

from paystream import logging as plog
from paystream import metrics, tracing
from paystream.settings import Settings, get_settings

# Processes that serve metrics themselves: the gateway at /metrics on its HTTP
# port, the sink on `sink_metrics_port` (it starts its own server).
SELF_SERVED = {"gateway", "sink"}

BACKLOGS: dict[str, dict[str, str]] = {
    "outbox-relay": {"gateway": metrics.GATEWAY_OUTBOX},
    "reviews": {"reviews": metrics.REVIEW_OUTBOX},
    "webhooks": {"webhooks": metrics.WEBHOOK_PENDING},
}


def setup_process(component: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    plog.configure(component, settings.log_level, settings.log_format)
    if tracing.setup(component, settings):
        atexit.register(tracing.shutdown)
    if component not in SELF_SERVED:
        metrics.serve(component, settings)
    queries = BACKLOGS.get(component)
    if queries:
        metrics.start_backlog_poller(settings, queries)
