"""The fraud pipeline (`paystream run fraud`): a Quix Streams app, exactly-once.

Input is one stream over `ledger.events` (key = account) and the internal
`fraud.flows` (key = receiving account), concatenated so each account has one
state holding both its outgoing history and where its money came from.

* ``ACCOUNT_OPENED`` records the account's age.
* ``TRANSFER_DEBITED`` (on the sender's partition) is scored by the pure rules in
  `pipelines.fraud.domain`; it emits a `FundsFlow` to the receiver's key on
  `fraud.flows` (round-trip detection), a `FraudAlert` on `fraud.alerts` for
  MEDIUM/HIGH, and for HIGH a FREEZE command on `payments.commands`.
* A `FundsFlow` updates the receiver's inbound origins.

All of it — state, flows, alerts, freezes, input offsets — commits in one Kafka
transaction, so an alert exists if and only if its freeze was requested, and a
restart neither loses nor repeats either. Every id is derived from the payment
id, so even a replay from scratch produces the same records.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from quixstreams import Application
from quixstreams.state import State

from paystream import commands as C
from paystream import liveness, metrics, topics, tracing
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.records import ACCOUNT_OPENED, HIGH
from paystream.settings import Settings, get_settings
from paystream.stream.quixapp import (
    Processor,
    Raw,
    Routed,
    apply_processor,
    build_application,
    inputs,
    route,
)
from pipelines.fraud import domain
from pipelines.fraud.config import FraudConfig, get_config
from pipelines.fraud.domain import flow_from_record, flow_record, freeze_command, on_transfer

EVENTS = topics.EVENTS
FLOWS = topics.FLOWS
ALERTS = topics.ALERTS
COMPONENT = "fraud"
STATE_KEY = "f"

log = logging.getLogger("paystream.fraud")

# Single-writer metrics (updated by the one processing thread only): no lock per message.
ALERTS_RAISED = metrics.local_counter("paystream_fraud_alerts_total", "alerts raised", ["risk"])
RULE_HITS = metrics.local_counter("paystream_fraud_rule_hits_total", "rules that fired in raised alerts",
                                  ["rule", "risk"])
FREEZES = metrics.local_counter("paystream_fraud_freezes_total", "FREEZE commands sent for HIGH alerts").labels()
SCORED = metrics.local_counter("paystream_fraud_scored_total", "debits scored").labels()


class FraudProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec, cfg: FraudConfig, privileged: str = C.PRIVILEGED_TOPIC) -> None:
        super().__init__(codec, log)
        self.cfg = cfg
        self.privileged = privileged  # freezes go to the settings' generation (docs/PARTITIONS.md)

    def handle(self, topic: str, skey: str, rec: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        if topic == FLOWS:
            if rec["receiver_id"] != skey:
                return self.refuse("KEY_MISMATCH", "flow key differs from receiver_id", raw)
            flow = flow_from_record(rec)
            state.set(STATE_KEY, domain.on_inflow(self.cfg, state.get(STATE_KEY), flow))
            return []
        etype = rec["type"]
        if etype == ACCOUNT_OPENED and not rec["replay"]:
            opened = int(rec["occurred_at"])
            owner = (rec.get("account") or {}).get("owner_id")
            state.set(STATE_KEY, domain.on_account_opened(state.get(STATE_KEY), opened, owner))
            return []
        t = domain.transfer_from_event(rec)
        if t is None:
            return []
        if t.sender != skey:
            return self.refuse("KEY_MISMATCH", "debit key differs from account_id", raw)
        age_ms = time.time() * 1000 - t.ts
        fresh = age_ms <= self.cfg.processing.max_event_age_seconds * 1000
        new, flow, alert = on_transfer(self.cfg, state.get(STATE_KEY), t, fresh=fresh)
        state.set(STATE_KEY, new)
        SCORED.inc()
        tracing.annotate(payment_id=t.payment_id, account=t.sender)
        # Codec.encode takes dict[str, Any], which a TypedDict is not assignable to.
        out = [self.encode(FLOWS, t.receiver, cast("dict[str, Any]", flow_record(flow)))]
        if alert is not None:
            log.info("alert %s %s score=%s payment=%s sender=%s", alert["alert_id"], alert["risk"],
                     alert["score"], t.payment_id, t.sender,
                     extra=plog.payment_fields(t.payment_id, t.sender, alert_id=alert["alert_id"],
                                               risk=alert["risk"], score=alert["score"]))
            ALERTS_RAISED.labels(alert["risk"]).inc()
            for r in alert["reasons"]:
                RULE_HITS.labels(r["rule"], alert["risk"]).inc()
            out.append(self.encode(ALERTS, t.sender, cast("dict[str, Any]", alert)))
            if alert["risk"] == HIGH:
                FREEZES.inc()
                out.append(self.encode(self.privileged, t.sender, freeze_command(alert)))
        return out


def build_app(settings: Settings | None = None, cfg: FraudConfig | None = None) -> Application:
    settings = settings or get_settings()
    app = build_application(settings, component=COMPONENT, instance=settings.fraud_instance,
                            commit_interval=settings.downstream_commit_interval)
    codec = Codec(settings.registry_url)
    privileged = settings.ledger_topics.privileged
    sdf = apply_processor(inputs(app, EVENTS, FLOWS), FraudProcessor(codec, cfg or get_config(), privileged),
                          COMPONENT)
    route(app, sdf, [FLOWS, ALERTS, privileged, DLQ_TOPIC])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
