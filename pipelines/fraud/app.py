"""The fraud pipeline (`paystream run fraud`): a Quix Streams app, exactly-once.

Input is one stream over `ledger.events` (key = account) and the internal
`fraud.flows` (key = receiving account), concatenated so each account has one
state holding both its outgoing history and where its money came from.

* ``ACCOUNT_OPENED`` records the account's age.
* ``TRANSFER_DEBITED`` (on the sender's partition) is scored by the pure rules in
  `pipelines.fraud.rules`; it emits a `FundsFlow` to the receiver's key on
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
import uuid
from typing import Any, cast

from quixstreams import Application
from quixstreams.state import State

from paystream import commands as C
from paystream import ids, liveness, metrics, topics, tracing
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.records import ACCOUNT_OPENED, FREEZE, HIGH, Decoded, FraudAlert, FundsFlow
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
from pipelines.fraud import rules
from pipelines.fraud.config import FraudConfig, get_config

EVENTS = topics.EVENTS
FLOWS = topics.FLOWS
ALERTS = topics.ALERTS
COMPONENT = "fraud"
ACTOR = "fraud"
NAMESPACE = uuid.UUID("c6a7d3e2-4b1f-4d0a-9e57-2f8b1c3a9d40")
STATE_KEY = "f"

log = logging.getLogger("paystream.fraud")

# Single-writer metrics (updated by the one processing thread only): no lock per message.
ALERTS_RAISED = metrics.local_counter("paystream_fraud_alerts_total", "alerts raised", ["risk"])
RULE_HITS = metrics.local_counter("paystream_fraud_rule_hits_total", "rules that fired in raised alerts",
                                  ["rule", "risk"])
FREEZES = metrics.local_counter("paystream_fraud_freezes_total", "FREEZE commands sent for HIGH alerts").labels()
SCORED = metrics.local_counter("paystream_fraud_scored_total", "debits scored").labels()


def alert_id(payment_id: str) -> str:
    """One alert per payment, whoever computes it and however often."""
    return ids.uuid5(NAMESPACE, f"alert:{payment_id}")


def freeze_command_id(alert: str) -> str:
    """Deterministic, so a re-emitted freeze is a ledger duplicate, not a second freeze."""
    return ids.uuid5(NAMESPACE, f"freeze:{alert}")


def alert_record(t: rules.Transfer, v: rules.Verdict, owner: str | None = None) -> FraudAlert:
    return {
        "alert_id": alert_id(t.payment_id),
        "payment_id": t.payment_id,
        "account_id": t.sender,
        "counterparty_id": t.receiver,
        "amount": t.amount,
        "currency": t.currency,
        "score": v.score,
        "risk": v.risk,
        "reasons": [{"rule": h.rule, "score": h.score, "detail": h.detail} for h in v.hits],
        # Event time, not wall-clock: a reprocessed alert is byte-for-byte the same.
        "detected_at": t.ts,
        "sender_owner_id": owner,
    }


def freeze_command(alert: FraudAlert) -> dict[str, Any]:
    rules_fired = ",".join(r["rule"] for r in alert["reasons"])
    return C.status_change(
        FREEZE, alert["account_id"], actor=ACTOR, command_id=freeze_command_id(alert["alert_id"]),
        reason=f"fraud alert {alert['alert_id']} ({alert['risk']}: {rules_fired})",
    )  # fmt: skip


def flow_record(f: rules.Flow) -> FundsFlow:
    return {
        "payment_id": f.payment_id, "sender_id": f.sender, "receiver_id": f.receiver,
        "amount": f.amount, "currency": f.currency, "occurred_at": f.ts,
        "origins": [{"account_id": o.account, "hops": o.hops, "occurred_at": o.ts}
                    for o in f.origins],
    }  # fmt: skip


def flow_from_record(r: FundsFlow | Decoded) -> rules.Flow:
    return rules.Flow(
        r["payment_id"], r["sender_id"], r["receiver_id"], int(r["amount"]), r["currency"],
        int(r["occurred_at"]),
        tuple(rules.Origin(o["account_id"], int(o["occurred_at"]), int(o["hops"]))
              for o in r["origins"]),
    )  # fmt: skip


def on_transfer(cfg: FraudConfig, state: rules.State | None, t: rules.Transfer, *,
                fresh: bool) -> tuple[rules.State, rules.Flow, FraudAlert | None]:
    """Score a debit: (new state, flow for the receiver, alert or None). Pure, so the
    tests can compute exactly which alerts a sequence of events must produce."""
    flow = rules.flow_for(cfg, state, t)
    verdict, new = rules.evaluate(cfg, state, t)
    alert = None
    if fresh and rules.should_alert(cfg, new, verdict, t.ts):
        new = rules.alerted(new, verdict, t.ts)
        alert = alert_record(t, verdict, state.get("owner") if state else None)
    return new, flow, alert


class FraudProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec, cfg: FraudConfig) -> None:
        super().__init__(codec, log)
        self.cfg = cfg

    def handle(self, topic: str, skey: str, rec: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        if topic == FLOWS:
            if rec["receiver_id"] != skey:
                return self.refuse("KEY_MISMATCH", "flow key differs from receiver_id", raw)
            flow = flow_from_record(rec)
            state.set(STATE_KEY, rules.on_inflow(self.cfg, state.get(STATE_KEY), flow))
            return []
        etype = rec["type"]
        if etype == ACCOUNT_OPENED and not rec["replay"]:
            opened = int(rec["occurred_at"])
            owner = (rec.get("account") or {}).get("owner_id")
            state.set(STATE_KEY, rules.on_account_opened(state.get(STATE_KEY), opened, owner))
            return []
        t = rules.transfer_from_event(rec)
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
                out.append(self.encode(C.PRIVILEGED_TOPIC, t.sender, freeze_command(alert)))
        return out


def build_app(settings: Settings | None = None, cfg: FraudConfig | None = None) -> Application:
    settings = settings or get_settings()
    app = build_application(settings, component=COMPONENT, instance=settings.fraud_instance,
                            commit_interval=settings.downstream_commit_interval)
    codec = Codec(settings.registry_url)
    sdf = apply_processor(inputs(app, EVENTS, FLOWS), FraudProcessor(codec, cfg or get_config()), COMPONENT)
    route(app, sdf, [FLOWS, ALERTS, C.PRIVILEGED_TOPIC, DLQ_TOPIC])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
