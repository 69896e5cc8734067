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

Each partition's accounts stay decoded in memory between messages (`_Partition`,
bounded by `fraud_account_memo`) and an account's state is written once per
checkpoint, just before it commits, not after every message: a busy account's state
is a window of up to `max_entries` per list, and reading, copying and writing it per
message was over 40 % of fraud's CPU (docs/FRAUD.md). The single writer per
partition is what makes this safe, as in the ledger.

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
from paystream.stream import quix_compat
from paystream.stream.memo import PartitionMemo
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
from pipelines.fraud.domain import flow_from_record, flow_record, freeze_command

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


class _Partition:
    """The accounts of one store partition, decoded, and those changed since the
    last commit with the state (of this checkpoint's transaction) to write them to.
    Lives as long as this process holds the partition (`quix_compat.partition_local`):
    a partition that comes back starts empty, so nothing another instance did to it
    meanwhile is hidden behind an old copy. A changed account stays until written."""

    __slots__ = ("accounts", "dirty")

    def __init__(self, limit: int) -> None:
        self.dirty: dict[str, State] = {}
        self.accounts: PartitionMemo[domain.Account] = PartitionMemo(limit, pinned=self.dirty)

    def get(self, key: str, state: State) -> domain.Account:
        a = self.accounts.get(key)
        if a is None:
            a = domain.Account(state.get(STATE_KEY))
            self.accounts.put(key, a)
        return a


class FraudProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec, cfg: FraudConfig, privileged: str = C.PRIVILEGED_TOPIC,
                 account_memo: int = 20_000) -> None:
        super().__init__(codec, log)
        self.cfg = cfg
        self.privileged = privileged  # freezes go to the settings' generation (docs/PARTITIONS.md)
        self.account_memo = max(1, account_memo)
        self._touched: dict[int, _Partition] = {}

    def __call__(self, value: bytes, key: bytes, timestamp: int, headers: Any, state: Any = None) -> list[Routed]:
        try:
            return super().__call__(value, key, timestamp, headers, state)
        except BaseException:
            self.discard_uncommitted()  # the rules may have changed an account in place
            raise

    # -- state, once per checkpoint --------------------------------------------------
    def _account(self, key: str, state: State) -> tuple[_Partition, domain.Account]:
        part = quix_compat.partition_local(state, lambda: _Partition(self.account_memo))
        return part, part.get(key, state)

    def _changed(self, part: _Partition, key: str, state: State) -> None:
        # The state of this message (this checkpoint's transaction), for `write_changed`.
        part.dirty[key] = state
        self._touched[id(part)] = part

    def write_changed(self) -> None:
        """Write every account changed in this checkpoint to its state, once; called
        just before the checkpoint commits, inside its transaction
        (`quix_compat.before_commit`), so the changelog carries it with the offsets."""
        for part in self._touched.values():
            accounts = part.accounts
            for key, state in part.dirty.items():
                state.set(STATE_KEY, accounts[key].state)
            part.dirty.clear()
        self._touched.clear()

    def discard_uncommitted(self) -> None:
        """After a message or a commit that failed (Quix stops the app): the decoded
        accounts may be ahead of the state that committed."""
        quix_compat.forget_partition_locals()
        self._touched.clear()

    def handle(self, topic: str, skey: str, rec: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        if topic == FLOWS:
            if rec["receiver_id"] != skey:
                return self.refuse("KEY_MISMATCH", "flow key differs from receiver_id", raw)
            part, a = self._account(skey, state)
            domain.inflow(self.cfg, a, flow_from_record(rec))
            self._changed(part, skey, state)
            return []
        etype = rec["type"]
        if etype == ACCOUNT_OPENED and not rec["replay"]:
            opened = int(rec["occurred_at"])
            owner = (rec.get("account") or {}).get("owner_id")
            part, a = self._account(skey, state)
            domain.account_opened(a, opened, owner)
            self._changed(part, skey, state)
            return []
        t = domain.transfer_from_event(rec)
        if t is None:
            return []
        if t.sender != skey:
            return self.refuse("KEY_MISMATCH", "debit key differs from account_id", raw)
        age_ms = time.time() * 1000 - t.ts
        fresh = age_ms <= self.cfg.processing.max_event_age_seconds * 1000
        part, a = self._account(skey, state)
        flow, alert = domain.transfer(self.cfg, a, t, fresh=fresh)
        self._changed(part, skey, state)
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
    processor = FraudProcessor(codec, cfg or get_config(), privileged, settings.fraud_account_memo)
    sdf = apply_processor(inputs(app, EVENTS, FLOWS), processor, COMPONENT)
    quix_compat.before_commit(app, processor.write_changed, processor.discard_uncommitted)
    route(app, sdf, [FLOWS, ALERTS, privileged, DLQ_TOPIC])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
