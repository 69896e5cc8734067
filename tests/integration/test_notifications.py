"""Notifications and webhooks against the real stack, and exactly-once output of the
fraud and notification pipelines across a hard stop."""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops.lab.webhook_receiver import Receiver
from paystream import commands as C
from paystream import webhooks as signing
from paystream.codec import Codec
from paystream.settings import Settings
from pipelines.fraud import config as fconfig
from pipelines.fraud.domain import freeze_command_id, on_account_opened, on_transfer, transfer_from_event
from pipelines.notifications.domain import notification_for
from tests.conftest import Component
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration

ENV = {"PAYSTREAM_FRAUD_INSTANCE": f"test-{os.getpid()}",
       "PAYSTREAM_NOTIFICATIONS_INSTANCE": f"test-{os.getpid()}"}
BACKOFF = {"PAYSTREAM_WEBHOOK_BACKOFF_BASE_SECONDS": "0.2",
           "PAYSTREAM_WEBHOOK_BACKOFF_CAP_SECONDS": "2",
           "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
           "PAYSTREAM_WEBHOOK_INSTANCE": f"test-{os.getpid()}"}


@pytest.fixture(scope="module")
def notifications(stack: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("notifications", log_dir, env=ENV).start()
    yield comp
    comp.stop()


@pytest.fixture(scope="module")
def webhooks(db: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("webhooks", log_dir, env=BACKOFF).start()
    yield comp
    comp.stop()



def token(settings: Settings, user: str) -> dict[str, str]:
    from gateway.security import issue_token

    return {"Authorization": f"Bearer {issue_token(settings, user, 'user')}"}


def open_accounts(stack: Settings, codec: Codec, events: EventReader, owners: dict[str, str],
                  funds: dict[str, int], currency: str = "USD") -> None:
    opens = [C.open_account(a, external_number=a[:12], owner_id=o, currency=currency)
             for a, o in owners.items()]
    send(stack, codec, opens)
    events.terminals([c["command_id"] for c in opens], timeout=120)
    deps = [C.deposit(a, amount, currency) for a, amount in funds.items()]
    send(stack, codec, deps)
    events.terminals([c["command_id"] for c in deps], timeout=120)


def expected_notifications(events: list[dict[str, Any]], owners: dict[str, str]) -> set[str]:
    out = set()
    for ev in events:
        n = notification_for(owners.get(ev["account_id"]), ev)
        if n is not None and ev["account_id"] in owners:
            out.add(n["notification_id"])
    return out


def test_webhooks_retry_with_backoff_until_delivered(stack, db, codec, ledger, notifications,
                                                     webhooks, api):
    receiver = Receiver(failing_seconds=3.0)
    user = str(uuid.uuid4())
    r = api.post("/v1/webhooks", json={"url": receiver.url}, headers=token(stack, user))
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    listed = api.get("/v1/webhooks", headers=token(stack, user)).json()
    assert [e["endpoint_id"] for e in listed] == [r.json()["endpoint_id"]]
    assert "secret" not in listed[0]
    assert api.post("/v1/webhooks", json={"url": receiver.url}).status_code == 401

    events = EventReader(stack, codec)
    notes = EventReader(stack, codec, topic="notifications")
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    owners = {a: user, b: str(uuid.uuid4())}  # b's owner has no endpoint
    open_accounts(stack, codec, events, owners, {a: 10_000})
    transfers = [C.transfer(a, b, 1_000 + i, "USD") for i in range(6)]  # the 6th bounces
    send(stack, codec, transfers)
    events.terminals([t["command_id"] for t in transfers])
    expected = expected_notifications([e for e in events.events if e["account_id"] == a], owners)
    assert len(expected) == 6  # 5 sent + 1 failed (insufficient funds)

    # a fresh consumer group first catches up with the whole shared journal
    notes.poll_until(lambda evs: expected <= {e["notification_id"] for e in evs}, timeout=400)
    deadline = time.monotonic() + 90
    while True:
        ok = {q["headers"]["Paystream-Event-Id"] for q in receiver.requests if q["status"] == 200}
        if expected <= ok:
            break
        assert time.monotonic() < deadline, f"delivered {len(ok & expected)}/{len(expected)}"
        time.sleep(0.2)
    receiver.close()
    notes.close()
    events.close()

    for q in receiver.requests:
        assert signing.verify(q["body"], q["headers"][signing.HEADER], secret)
        body = json.loads(q["body"])
        assert body["id"] == q["headers"]["Paystream-Event-Id"] and body["data"]["user_id"] == user
    assert {q["headers"]["Paystream-Event-Id"] for q in receiver.requests} == expected
    assert any(q["status"] == 500 for q in receiver.requests)

    with psycopg.connect(db.postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT d.notification_id, d.status, a.attempt, extract(epoch FROM a.started_at),"
            " a.status_code FROM webhook_deliveries d JOIN webhook_attempts a USING (delivery_id)"
            " WHERE d.user_id = %s ORDER BY d.notification_id, a.attempt", (user,)).fetchall()
    attempts: dict[str, list[tuple[int, float, int | None]]] = defaultdict(list)
    for nid, status, attempt, started, code in rows:
        assert status == "delivered"
        attempts[str(nid)].append((attempt, float(started), code))
    assert set(attempts) == expected
    retried = 0
    for series in attempts.values():
        assert [s[0] for s in series] == list(range(1, len(series) + 1))
        assert series[-1][2] == 200 and all(s[2] == 500 for s in series[:-1])
        for (k, t0, _), (_, t1, _) in itertools.pairwise(series):
            step = min(2.0, 0.2 * 2 ** (k - 1))
            assert t1 - t0 >= step / 2 - 0.05, (k, t1 - t0)  # equal jitter: at least half a step
            retried += 1
    assert retried > 0


def test_pipelines_stopped_during_traffic_emit_everything_exactly_once(
        stack, codec, ledger, notifications, log_dir):
    cfg = fconfig.load(fconfig.DEFAULT_PATH)
    fraud = Component("fraud", log_dir, env=ENV).start()
    rnd = random.Random(5)
    events = EventReader(stack, codec)
    alerts = EventReader(stack, codec, topic="fraud.alerts")
    notes = EventReader(stack, codec, topic="notifications")
    senders = [str(uuid.uuid4()) for _ in range(100)]
    receivers = [str(uuid.uuid4()) for _ in range(100)]
    owners = {a: f"user-{a}" for a in senders + receivers}
    open_accounts(stack, codec, events, owners, {s: 2_000_000 for s in senders})

    # warm up: both pipelines have caught up with the journal before they are stopped
    warm = C.transfer(senders[0], receivers[0], 300_000, "USD")  # new account: MEDIUM
    send(stack, codec, [warm])
    events.terminals([warm["command_id"]])
    alerts.poll_until(lambda evs: any(e["payment_id"] == warm["command_id"] for e in evs), 240)
    notes.poll_until(lambda evs: any(e["payment_id"] == warm["command_id"] for e in evs), 240)

    fraud.kill9()
    notifications.kill9()
    traffic = [C.transfer(senders[i], receivers[i], 1_200_000, "USD") for i in range(1, 11)]
    traffic += [C.transfer(rnd.choice(senders), rnd.choice(receivers), rnd.randint(100, 5_000),
                           "USD") for _ in range(5_000)]
    send(stack, codec, traffic)
    events.terminals([t["command_id"] for t in traffic], timeout=180)
    fraud.start()
    notifications.start()
    # ... and fraud killed again mid-stream, with changed accounts not yet written
    # (it writes them once per checkpoint): its first committed alerts of the traffic
    # show it has begun, and the 5,000 transfers after them are still to come.
    sent = {t["command_id"] for t in traffic}
    alerts.poll_until(lambda evs: any(e["payment_id"] in sent for e in evs), 240)
    fraud.kill9()
    fraud.start()

    # what the rules must have said, folded per sender in ledger order
    mine = [e for e in events.events if e["account_id"] in owners]
    mine.sort(key=lambda e: (e["account_id"], e["sequence"]))
    state: dict[str, Any] = {}
    expected_alerts: dict[str, dict[str, Any]] = {}
    for ev in mine:
        acct = ev["account_id"]
        if ev["type"] == "ACCOUNT_OPENED" and not ev["replay"]:
            state[acct] = on_account_opened(state.get(acct), ev["occurred_at"],
                                            ev["account"]["owner_id"])
        elif (t := transfer_from_event(ev)) is not None:
            state[acct], _, alert = on_transfer(cfg, state.get(acct), t, fresh=True)
            if alert is not None:
                expected_alerts[alert["alert_id"]] = alert
    highs = [a for a in expected_alerts.values() if a["risk"] == "HIGH"]
    assert len(highs) == 10 and len(expected_alerts) > 10

    alerts.poll_until(lambda evs: set(expected_alerts) <= {e["alert_id"] for e in evs}, 240)
    freezes = [freeze_command_id(a["alert_id"]) for a in highs]
    events.terminals(freezes, timeout=120)
    want = expected_notifications([e for e in events.events if e["account_id"] in owners], owners)
    notes.poll_until(lambda evs: want <= {e["notification_id"] for e in evs}, 240)
    time.sleep(3)  # anything extra (a duplicate) would show up by now
    for r in (events, alerts, notes):
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for m in r.consumer.consume(1000, 0.2):
                if not m.error():
                    r.events.append(r.codec.decode(r.topic, m.value()))
    fraud.stop()

    got_alerts = Counter(e["alert_id"] for e in alerts.events if e["account_id"] in owners)
    assert set(got_alerts) == set(expected_alerts)
    assert max(got_alerts.values()) == 1
    for e in alerts.events:
        if e["alert_id"] in expected_alerts:
            assert e == expected_alerts[e["alert_id"]]
    users = set(owners.values())
    got_notes = Counter(e["notification_id"] for e in notes.events if e["user_id"] in users)
    want = expected_notifications([e for e in events.events if e["account_id"] in owners], owners)
    assert set(got_notes) == want
    assert max(got_notes.values()) == 1
    froze = [e for e in events.events if e["command_id"] in set(freezes)]
    assert Counter(e["command_id"] for e in froze if not e["replay"]) == Counter(freezes)
    assert not any(e["replay"] for e in froze)
    for r in (events, alerts, notes):
        r.close()
