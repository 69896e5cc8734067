"""Compensation (`paystream run compensation`): review decisions become ledger
commands. A Quix Streams app, exactly-once.

Input is one stream over `fraud.alerts` and `fraud.decisions`, both keyed by the
sending account, so one state per sender knows which HIGH alerts still hold it
frozen. The decision logic is the pure `apply_alert` / `apply_decision` below.

* REJECTED -> `REVERSE_TRANSFER` keyed by the receiver (freeze_receiver=True),
  command id `reversal_command_id(payment_id)`: a second request for the same
  payment is a ledger duplicate, never a second reversal.
* APPROVED or REJECTED of a HIGH alert -> `UNFREEZE` of the sender when no other
  open HIGH alert holds it (command id derived from the alert).

A decision delivered twice is recognised by its alert id and ignored; the
command ids make even a lost state harmless. A decision that overtakes its alert
(the two topics are read independently) is remembered, and the late HIGH alert
then releases the freeze it caused at once.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from prometheus_client import Counter
from quixstreams import Application
from quixstreams.state import State

from paystream import commands as C
from paystream import ids, liveness
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.records import HIGH, REJECTED, UNFREEZE, Decoded, FraudAlert, ReviewDecision
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
from paystream.stream.store import Store
from pipelines.fraud.reviews import ALERTS, DECISIONS

COMPONENT = "compensation"
NAMESPACE = uuid.UUID("9a2d6f1c-3e8b-4b7a-a1c5-7d0e2f4b6c83")
log = logging.getLogger("paystream.compensation")

COMMANDS_SENT = Counter("paystream_compensation_commands_total", "commands sent to the ledger", ["type"])

KeyedCommand = tuple[str, dict[str, Any]]  # (key, command)


def unfreeze_command_id(alert_id: str) -> str:
    return ids.uuid5(NAMESPACE, f"unfreeze:{alert_id}")


def _holding(store: Store) -> list[str]:
    return list(store.get("h", []))


def _unfreeze(sender: str, alert_id: str, actor: str, why: str) -> KeyedCommand:
    return sender, C.status_change(UNFREEZE, sender, actor=actor, reason=why,
                                   command_id=unfreeze_command_id(alert_id))


def apply_alert(store: Store, alert: FraudAlert | Decoded) -> list[KeyedCommand]:
    """Track a HIGH alert as holding its sender frozen until it is decided. The
    processor passes the codec's untyped dict (`paystream.records.Decoded`)."""
    if alert["risk"] != HIGH:
        return []
    aid, sender = alert["alert_id"], alert["account_id"]
    held = _holding(store)
    if aid in held:
        return []
    if store.get(f"d:{aid}") is not None:
        # decided before we saw it: its freeze is already unwanted
        why = f"review of alert {aid} decided before the alert arrived"
        return [] if held else [_unfreeze(sender, aid, "fraud-compensation", why)]
    store.set("h", [*held, aid])
    return []


def apply_decision(store: Store, d: ReviewDecision | Decoded) -> list[KeyedCommand]:
    aid, sender = d["alert_id"], d["sender_id"]
    if store.get(f"d:{aid}") is not None:
        return []  # a redelivered decision: already acted on
    store.set(f"d:{aid}", d["decision"])
    held = _holding(store)
    was_holding = aid in held
    if was_holding:
        held.remove(aid)
        store.set("h", held)
    out: list[KeyedCommand] = []
    why = f"fraud review {aid} {d['decision'].lower()}"
    if d.get("note"):
        why += f": {d['note']}"
    if d["decision"] == REJECTED:
        cmd = C.reverse_transfer(d["receiver_id"], d["payment_id"], reason=why,
                                 actor=d["decided_by"], freeze_receiver=True, sender_id=sender)
        out.append((d["receiver_id"], cmd))
    if was_holding and not held:
        out.append(_unfreeze(sender, aid, d["decided_by"], why))
    return out


class CompensationProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec, log)

    def handle(self, topic: str, skey: str, rec: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        sender = rec["account_id"] if topic == ALERTS else rec["sender_id"]
        if sender != skey:
            return self.refuse("KEY_MISMATCH", f"key differs from the sender on {topic}", raw)
        cmds = apply_alert(state, rec) if topic == ALERTS else apply_decision(state, rec)
        for k, c in cmds:
            log.info("%s %s on %s (command %s)", topic, c["type"], k, c["command_id"],
                     extra=plog.payment_fields(rec.get("payment_id"), k, command_id=c["command_id"]))
            COMMANDS_SENT.labels(c["type"]).inc()
        return [self.encode(C.PRIVILEGED_TOPIC, k, c) for k, c in cmds]  # unfreezes, reversals


def build_app(settings: Settings | None = None) -> Application:
    settings = settings or get_settings()
    app = build_application(settings, component=COMPONENT, instance=settings.compensation_instance,
                            commit_interval=settings.downstream_commit_interval)
    codec = Codec(settings.registry_url)
    sdf = apply_processor(inputs(app, ALERTS, DECISIONS), CompensationProcessor(codec), COMPONENT)
    route(app, sdf, [C.PRIVILEGED_TOPIC, DLQ_TOPIC])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
