"""Fraud pipeline against the real stack: a high-value transfer gets an alert and a
freeze, committed together."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from fastapi.testclient import TestClient

from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.commands import reversal_command_id
from paystream.settings import Settings
from pipelines.compensation.domain import unfreeze_command_id
from pipelines.fraud.domain import alert_id, freeze_command_id
from pipelines.fraud.reviews import decision_id
from pipelines.notifications.domain import notification_id
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


# ------------------------------------------------------------------ review queue


@pytest.fixture(scope="module")
def reviews_worker(db: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("reviews", log_dir).start()
    yield comp
    comp.stop()


@pytest.fixture(scope="module")
def compensation(stack: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("compensation", log_dir, env=INSTANCE).start()
    yield comp
    comp.stop()



def bearer(settings: Settings, role: str = "admin", user: str | None = None) -> dict[str, str]:
    from gateway.security import issue_token

    return {"Authorization": f"Bearer {issue_token(settings, user or str(uuid.uuid4()), role)}"}


def give_numbers(settings: Settings, *account_ids: str) -> dict[str, str]:
    """Account numbers for accounts opened on Kafka directly, as the gateway's registry
    would hold them had they been opened over HTTP (the API shows accounts by number)."""
    import psycopg

    from gateway.security import new_account_number

    owner = str(uuid.uuid4())
    numbers = {a: new_account_number() for a in account_ids}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (user_id, email, password_hash, name, role) VALUES (%s, %s, 'x', 'T', 'user')",
                     (owner, f"{owner}@example.com"))
        for a, number in numbers.items():
            conn.execute("INSERT INTO gateway_accounts (account_number, account_id, owner_id, currency)"
                         " VALUES (%s, %s, %s, 'USD')", (number, a, owner))
    return numbers


def wait_review(api: TestClient, headers: dict[str, str], aid: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"/v1/admin/reviews/{aid}", headers=headers)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404, r.text
        if time.monotonic() > deadline:
            raise TimeoutError(f"review {aid} never appeared")
        time.sleep(0.2)


def drain(reader: EventReader, seconds: float) -> None:
    """Read whatever arrives during `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for m in reader.consumer.consume(1000, 0.2):
            if not m.error():
                reader.events.append(reader.codec.decode(reader.topic, m.value()))


def committed_past(settings: Settings, group: str, topic: str, partition: int, offset: int,
                   timeout: float = 60) -> None:
    """Wait until `group` committed beyond `offset` (the message was processed)."""
    c = kafka.consumer(settings, group)
    try:
        deadline = time.monotonic() + timeout
        while True:
            (tp,) = c.committed([TopicPartition(topic, partition)], timeout=10)
            if tp.offset > offset:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} did not pass {topic}[{partition}]@{offset}")
            time.sleep(0.2)
    finally:
        c.close()


def test_reject_reverses_once_and_approve_unfreezes(stack, db, codec, ledger, fraud, reviews_worker,
                                                     compensation, api, log_dir):
    notifier = Component("notifications", log_dir, env=INSTANCE).start()
    events = EventReader(stack, codec)
    decisions = EventReader(stack, codec, topic="fraud.decisions")
    notes = EventReader(stack, codec, topic="notifications")
    a, b, c, d = open_funded(stack, codec, events, 4, 5_000_000)
    t1 = C.transfer(a, b, 1_200_000, "USD")
    t2 = C.transfer(c, d, 1_500_000, "USD")
    send(stack, codec, [t1, t2])
    a1, a2 = alert_id(t1["command_id"]), alert_id(t2["command_id"])
    events.terminals([freeze_command_id(a1), freeze_command_id(a2)], timeout=240)

    admin = bearer(stack)
    number = give_numbers(stack, a, b)
    r1 = wait_review(api, admin, a1)
    wait_review(api, admin, a2)
    # the API's conventions: a decimal amount, account numbers (never the ledger's ids)
    assert r1["id"] == a1 and r1["object"] == "review" and r1["status"] == "open" and r1["risk"] == "HIGH"
    assert (r1["from_account"], r1["to_account"]) == (number[a], number[b])
    assert (r1["amount"], r1["currency"]) == ("12000.00", "USD")
    assert a not in str(r1) and b not in str(r1), r1
    assert api.get(f"/v1/admin/reviews/{a1}").status_code == 401
    assert api.get(f"/v1/admin/reviews/{a1}", headers=bearer(stack, "user")).status_code == 403
    assert api.get("/v1/admin/reviews/not-an-id", headers=admin).json()["code"] == "review_not_found"
    # the one list envelope and cursor
    page = api.get("/v1/admin/reviews", params={"account": number[a], "status": "open"}, headers=admin).json()
    assert page["object"] == "list" and [r["id"] for r in page["data"]] == [a1] and page["has_more"] is False
    first = api.get("/v1/admin/reviews", params={"risk": "HIGH", "limit": 1}, headers=admin).json()
    assert first["has_more"] is True
    second = api.get("/v1/admin/reviews", params={"risk": "HIGH", "limit": 1,
                                                  "starting_after": first["data"][0]["id"]}, headers=admin).json()
    assert first["data"][0]["id"] != second["data"][0]["id"]
    assert first["data"][0]["detected_at"] >= second["data"][0]["detected_at"]
    for params, status, code in (({"account": a}, 422, "validation_error"),  # an id is not a number
                                 ({"account": "PS0000000000"}, 404, "account_not_found"),
                                 ({"starting_after": "x"}, 400, "invalid_cursor"),
                                 ({"starting_after": str(uuid.uuid4())}, 400, "invalid_cursor")):
        r = api.get("/v1/admin/reviews", params=params, headers=admin)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert r.headers["content-type"].startswith("application/problem+json")

    internal = "mule account per AML case 4411"
    rej = api.post(f"/v1/admin/reviews/{a1}/reject", json={"note": internal}, headers=admin)
    assert rej.status_code == 200, rej.text
    assert rej.json()["status"] == "rejected" and rej.json()["note"] == internal
    again = api.post(f"/v1/admin/reviews/{a1}/reject", json={"note": "again"}, headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "review_already_decided"
    assert again.json()["review"]["status"] == "rejected"
    assert api.post(f"/v1/admin/reviews/{a1}/approve", headers=admin).status_code == 409
    assert api.post(f"/v1/admin/reviews/{a2}/approve", headers=admin).status_code == 200

    rev_id = reversal_command_id(t1["command_id"])
    done = events.terminals([rev_id, unfreeze_command_id(a1), unfreeze_command_id(a2)], timeout=60)
    assert done[rev_id]["type"] == "TRANSFER_REVERSED" and done[rev_id]["account_id"] == a
    assert done[rev_id]["balance_after"] == 5_000_000
    assert done[unfreeze_command_id(a1)]["type"] == "ACCOUNT_UNFROZEN"
    assert done[unfreeze_command_id(a2)]["type"] == "ACCOUNT_UNFROZEN"
    on_b = [e for e in events.events if e["command_id"] == rev_id and e["account_id"] == b]
    assert sorted(e["type"] for e in on_b) == ["ACCOUNT_FROZEN", "REVERSAL_DEBITED"]
    assert not any(e["payment_id"] == t2["command_id"] and e["type"] == "REVERSAL_DEBITED"
                   for e in events.events)

    # the decision event delivered twice: no second reversal, no second unfreeze
    decisions.poll_until(lambda evs: any(e["alert_id"] == a1 for e in evs), timeout=30)
    (dec,) = [e for e in decisions.events if e["alert_id"] == a1]
    assert dec["decision"] == "REJECTED" and dec["decision_id"] == decision_id(a1)
    p = kafka.producer(stack)
    sent: list = []
    p.produce("fraud.decisions", key=a.encode(), value=codec.encode("fraud.decisions", dec),
              on_delivery=lambda err, msg: sent.append(msg))
    assert p.flush(10) == 0
    committed_past(stack, "paystream-compensation", "fraud.decisions", sent[0].partition(),
                   sent[0].offset())
    time.sleep(2)  # anything compensation emitted would reach the ledger by now
    drain(events, 2)
    mine = [e for e in events.events if e["command_id"] in (rev_id, unfreeze_command_id(a1))]
    assert not any(e["replay"] for e in mine)
    assert sum(1 for e in mine if e["type"] == "TRANSFER_REVERSED") == 1

    # each sender's owner hears the verdict on their payment (the alert carried the owner);
    # the redelivered decision may be told again, with the same id (receivers de-duplicate)
    assert dec["sender_owner_id"] == f"owner-{a}"
    told = {decision_id(a1): ("REJECTED", f"owner-{a}", t1), decision_id(a2): ("APPROVED",
                                                                            f"owner-{c}", t2)}

    def decided(evs: list) -> list:
        return [e for e in evs if e["kind"] == "REVIEW_DECIDED" and e["source_event_id"] in told]

    notes.poll_until(lambda evs: {e["source_event_id"] for e in decided(evs)} == set(told), 240)
    drain(notes, 2)
    for n in decided(notes.events):
        verdict, owner, t = told[n["source_event_id"]]
        assert (n["reason"], n["user_id"], n["payment_id"], n["account_id"]) == (
            verdict, owner, t["command_id"], t["account_id"])
        assert n["notification_id"] == notification_id(n["source_event_id"], owner)
    assert len({n["notification_id"] for n in decided(notes.events)}) == 2
    # the reversal, the receiver's freeze and the sender's unfreeze are told to the
    # parties with generic reasons: the admin's note stays in the review
    told_events = {e["event_id"]: e for e in events.events
                   if e["command_id"] in (rev_id, unfreeze_command_id(a1))}
    notes.poll_until(lambda evs: set(told_events) <= {e["source_event_id"] for e in evs}, 240)
    about = [n for n in notes.events if n["source_event_id"] in told_events]
    assert {n["kind"] for n in about} == {"PAYMENT_REVERSED", "ACCOUNT_FROZEN", "ACCOUNT_UNFROZEN"}
    assert all("AML" not in str(n) for n in about), about
    assert {n["reason"] for n in about if n["kind"] == "ACCOUNT_FROZEN"} == {"ACCOUNT_UNDER_REVIEW"}
    notifier.stop()
    events.close()
    decisions.close()
    notes.close()
