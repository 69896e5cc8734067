"""Compensation (`paystream run compensation`): review decisions become ledger
commands. A Quix Streams app, exactly-once.

Input is one stream over `fraud.alerts` and `fraud.decisions`, both keyed by the
sending account, so one state per sender knows which HIGH alerts still hold it
frozen. The decision logic is the pure `apply_alert` / `apply_decision` in
`domain.py`.

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
from typing import Any

from prometheus_client import Counter
from quixstreams import Application
from quixstreams.state import State

from paystream import commands as C
from paystream import liveness, topics
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
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
from pipelines.compensation.domain import apply_alert, apply_decision

ALERTS = topics.ALERTS
DECISIONS = topics.DECISIONS
COMPONENT = "compensation"
log = logging.getLogger("paystream.compensation")

COMMANDS_SENT = Counter("paystream_compensation_commands_total", "commands sent to the ledger", ["type"])

class CompensationProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec, privileged: str = C.PRIVILEGED_TOPIC) -> None:
        super().__init__(codec, log)
        self.privileged = privileged  # the settings' generation (docs/PARTITIONS.md)

    def handle(self, topic: str, skey: str, rec: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        sender = rec["account_id"] if topic == ALERTS else rec["sender_id"]
        if sender != skey:
            return self.refuse("KEY_MISMATCH", f"key differs from the sender on {topic}", raw)
        cmds = apply_alert(state, rec) if topic == ALERTS else apply_decision(state, rec)
        for k, c in cmds:
            log.info("%s %s on %s (command %s)", topic, c["type"], k, c["command_id"],
                     extra=plog.payment_fields(rec.get("payment_id"), k, command_id=c["command_id"]))
            COMMANDS_SENT.labels(c["type"]).inc()
        return [self.encode(self.privileged, k, c) for k, c in cmds]  # unfreezes, reversals


def build_app(settings: Settings | None = None) -> Application:
    settings = settings or get_settings()
    app = build_application(settings, component=COMPONENT, instance=settings.compensation_instance,
                            commit_interval=settings.downstream_commit_interval)
    codec = Codec(settings.registry_url)
    privileged = settings.ledger_topics.privileged
    sdf = apply_processor(inputs(app, ALERTS, DECISIONS), CompensationProcessor(codec, privileged), COMPONENT)
    route(app, sdf, [privileged, DLQ_TOPIC])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
