"""Fraud pipeline against the real stack: a high-value transfer gets an alert and a
freeze, committed together."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from paystream import commands as C
from paystream.codec import Codec
from paystream.settings import Settings
from pipelines.fraud.app import alert_id, freeze_command_id
from tests.conftest import Component
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration

# One instance id per test session: concurrent sessions then share the partitions
# like scaled-out instances instead of fencing each other.
INSTANCE = {"PAYSTREAM_FRAUD_INSTANCE": f"test-{os.getpid()}",
            "PAYSTREAM_COMPENSATION_INSTANCE": f"test-{os.getpid()}",
            "PAYSTREAM_NOTIFICATIONS_INSTANCE": f"test-{os.getpid()}"}


@pytest.fixture(scope="module")
def fraud(stack: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("fraud", log_dir, env=INSTANCE).start()
    yield comp
    comp.stop()


def open_funded(stack: Settings, codec: Codec, events: EventReader, n: int, funds: int,
                currency: str = "USD") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    opens = [C.open_account(a, external_number=a[:12], owner_id=f"owner-{a}", currency=currency)
             for a in ids]
    deps = [C.deposit(a, funds, currency) for a in ids]
    send(stack, codec, opens)
    events.terminals([c["command_id"] for c in opens], timeout=90)
    send(stack, codec, deps)
    events.terminals([c["command_id"] for c in deps], timeout=90)
    return ids


def test_high_value_transfer_alerts_and_freezes(stack, codec, ledger, fraud: Component):
    events = EventReader(stack, codec)
    alerts = EventReader(stack, codec, topic="fraud.alerts")
    a, b = open_funded(stack, codec, events, 2, 5_000_000)
    small = C.transfer(a, b, 1_000, "USD")
    big = C.transfer(a, b, 1_200_000, "USD")  # >= USD high_value (1,000,000)
    send(stack, codec, [small, big])
    events.terminals([small["command_id"], big["command_id"]])
    aid = alert_id(big["command_id"])
    # the catch-up of a fresh consumer group over the shared journal can take a while
    alerts.poll_until(lambda evs: any(e["alert_id"] == aid for e in evs), timeout=240)
    alert = next(e for e in alerts.events if e["alert_id"] == aid)
    assert alert["risk"] == "HIGH" and alert["account_id"] == a and alert["counterparty_id"] == b
    assert "HIGH_VALUE" in {r["rule"] for r in alert["reasons"]}
    assert not any(e["payment_id"] == small["command_id"] for e in alerts.events)
    frozen = events.terminals([freeze_command_id(aid)], timeout=60)[freeze_command_id(aid)]
    assert frozen["type"] == "ACCOUNT_FROZEN" and frozen["account_id"] == a
    assert frozen["requested_by"] == "fraud"
    # a frozen sender can no longer move money
    after = C.transfer(a, b, 1_000, "USD")
    send(stack, codec, [after])
    out = events.terminals([after["command_id"]])[after["command_id"]]
    assert out["type"] == "COMMAND_REJECTED" and out["reason"] == "ACCOUNT_FROZEN"
    events.close()
    alerts.close()
