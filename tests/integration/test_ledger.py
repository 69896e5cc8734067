"""The ledger against real Kafka: one process, exactly-once, Avro in and out."""

from __future__ import annotations

import copy
import os
import uuid

import pytest
from confluent_kafka import TopicPartition

from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.settings import Settings
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration


def new_accounts(n: int, currency: str = "USD") -> tuple[list[str], list[dict]]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    cmds = [C.open_account(a, external_number=a[:12], owner_id="t", currency=currency) for a in ids]
    return ids, cmds


@pytest.fixture
def reader(stack: Settings, codec: Codec):
    r = EventReader(stack, codec)
    yield r
    r.close()


def test_open_deposit_transfer(stack, codec, ledger, reader):
    (a, b), opens = new_accounts(2)
    dep = C.deposit(a, 100_000, "USD")
    t = C.transfer(a, b, 25_050, "USD")
    send(stack, codec, opens)
    reader.terminals([c["command_id"] for c in opens], timeout=90)
    send(stack, codec, [dep])
    reader.terminals([dep["command_id"]])
    send(stack, codec, [t])
    out = reader.terminals([t["command_id"]])
    done = out[t["command_id"]]
    assert done["type"] == "TRANSFER_COMPLETED" and done["account_id"] == b
    assert done["balance_after"] == 25_050
    debit = next(e for e in reader.events if e["command_id"] == t["command_id"] and e["type"] == "TRANSFER_DEBITED")
    assert debit["balance_after"] == 100_000 - 25_050
    assert sum(p["amount"] for p in debit["postings"] + done["postings"]) == 0


def test_a_transfer_to_another_currency_is_refunded(stack, codec, ledger, reader):
    """Kafka-direct: the ledger debits, the receiver's partition refuses
    (RECEIVER_CURRENCY_MISMATCH) and the sender gets all of it back."""
    (a,), opens = new_accounts(1)
    (e,), opens_eur = new_accounts(1, currency="EUR")
    dep = C.deposit(a, 10_000, "USD")
    send(stack, codec, [*opens, *opens_eur])
    reader.terminals([c["command_id"] for c in opens + opens_eur], timeout=90)
    send(stack, codec, [dep])
    reader.terminals([dep["command_id"]])
    t = C.transfer(a, e, 4_000, "USD")
    send(stack, codec, [t])
    failed = reader.terminals([t["command_id"]])[t["command_id"]]
    assert (failed["type"], failed["reason"], failed["account_id"]) == ("TRANSFER_FAILED",
                                                                         "RECEIVER_CURRENCY_MISMATCH", a)
    assert failed["balance_after"] == 10_000
    mine = [ev for ev in reader.events if ev["payment_id"] == t["command_id"]]
    assert not [ev for ev in mine if ev["account_id"] == e and ev["postings"]]  # nothing reached the receiver
    assert sum(p["amount"] for ev in mine for p in ev["postings"]) == 0


def test_overdraft_race(stack, codec, ledger, reader):
    (a, b), opens = new_accounts(2)
    dep = C.deposit(a, 100_000, "USD")
    send(stack, codec, [*opens, dep])
    reader.terminals([dep["command_id"]])
    races = [C.transfer(a, b, 80_000, "USD") for _ in range(20)]
    send(stack, codec, races)
    out = reader.terminals([c["command_id"] for c in races])
    kinds = sorted(e["type"] for e in out.values())
    assert kinds.count("TRANSFER_COMPLETED") == 1
    assert kinds.count("COMMAND_REJECTED") == 19
    assert {e["reason"] for e in out.values() if e["type"] == "COMMAND_REJECTED"} == {"INSUFFICIENT_FUNDS"}


def test_storm_between_a_pair(stack, codec, ledger, reader):
    (a, b), opens = new_accounts(2)
    deps = [C.deposit(a, 100_000, "USD"), C.deposit(b, 100_000, "USD")]
    send(stack, codec, [*opens, *deps])
    reader.terminals([d["command_id"] for d in deps])
    storm = []
    for i in range(400):
        storm.append(C.transfer(a, b, 100 + i, "USD") if i % 2 == 0 else C.transfer(b, a, 100 + i, "USD"))
    send(stack, codec, storm)
    out = reader.terminals([c["command_id"] for c in storm], timeout=120)
    assert all(e["type"] == "TRANSFER_COMPLETED" for e in out.values())
    last = {}
    for e in reader.events:
        if e["balance_after"] is not None and e["account_id"] in (a, b):
            last[e["account_id"]] = e["balance_after"]
    sent_ab = sum(100 + i for i in range(0, 400, 2))
    sent_ba = sum(100 + i for i in range(1, 400, 2))
    assert last[a] == 100_000 - sent_ab + sent_ba
    assert last[b] == 100_000 + sent_ab - sent_ba


def test_same_command_ten_times_and_reused_id(stack, codec, ledger, reader):
    (a, b), opens = new_accounts(2)
    dep = C.deposit(a, 10_000, "USD")
    send(stack, codec, [*opens, dep])
    reader.terminals([dep["command_id"]])
    t = C.transfer(a, b, 1_000, "USD")
    changed = copy.deepcopy(t)
    changed["movement"]["amount"] = 2_000
    send(stack, codec, [copy.deepcopy(t) for _ in range(10)] + [changed])
    reader.terminals([t["command_id"]])
    reader.poll_until(lambda evs: sum(1 for e in evs if e["command_id"] == t["command_id"] and e["replay"]) >= 10)
    mine = [e for e in reader.events if e["command_id"] == t["command_id"]]
    assert sum(1 for e in mine if e["postings"]) == 2  # one debit, one credit
    assert sum(1 for e in mine if e["type"] == "COMMAND_DUPLICATE") == 9
    assert [e["reason"] for e in mine if e["type"] == "COMMAND_REJECTED"] == ["ID_REUSED_WITH_DIFFERENT_FIELDS"]
    assert sum(1 for e in mine if e["terminal"] and not e["replay"]) == 1


def test_poison_and_invalid_commands_go_to_dead_letters(stack, codec, ledger, reader):
    (a,), opens = new_accounts(1)
    dlq = kafka.consumer(stack, f"test-{uuid.uuid4()}")
    parts = dlq.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC].partitions
    ends = {p: dlq.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p))[1] for p in parts}
    dlq.assign([TopicPartition(DLQ_TOPIC, p, end) for p, end in ends.items()])
    p = kafka.producer(stack)
    poison = b"\x01" + os.urandom(63)  # not Confluent wire format (magic byte 1)
    p.produce(C.COMMANDS_TOPIC, key=a.encode(), value=poison)
    invalid = C.transfer(a, str(uuid.uuid4()), 100, "USD")
    invalid["movement"] = None  # schema-valid, but a transfer without money
    p.produce(C.topic_for(invalid), key=a.encode(), value=codec.encode(C.topic_for(invalid), invalid))
    leg = {"leg_id": str(uuid.uuid4()), "kind": "CREDIT", "command_id": str(uuid.uuid4()),
           "payment_id": str(uuid.uuid4()), "account_id": a, "counterparty_id": str(uuid.uuid4()),
           "amount": 10**9, "currency": "USD", "reason": None, "requested_by": "mallory", "issued_at": 0}
    p.produce(C.COMMANDS_TOPIC, key=a.encode(), value=codec.encode("ledger.legs", leg))
    assert p.flush(10) == 0
    send(stack, codec, opens)
    reader.terminals([opens[0]["command_id"]])
    letters = []
    import time

    deadline = time.monotonic() + 30
    while len(letters) < 3 and time.monotonic() < deadline:
        for m in dlq.consume(10, 0.5):
            if not m.error():
                letters.append(codec.decode(DLQ_TOPIC, m.value()))
    dlq.close()
    by_code = {d["reason_code"]: d for d in letters if d["source_topic"] == C.COMMANDS_TOPIC}
    (bad,) = [d for d in letters if d["value"] == poison]
    # classified from the header alone: no registry lookup of an invented schema id
    assert bad["reason_code"] == "UNDECODABLE" and bad["key"] == a.encode()
    assert "needs the `movement` field" in by_code["INVALID"]["reason"]
    assert "io.paystream.ledger.Leg" in by_code["FORBIDDEN_TYPE"]["reason"]
    assert all(d["source_offset"] >= 0 for d in letters)
    # the forged credit moved no money
    opened = reader.terminals([opens[0]["command_id"]])[opens[0]["command_id"]]
    assert opened["type"] == "ACCOUNT_OPENED" and opened["balance_after"] == 0


def test_event_time_is_the_brokers_not_the_producers(stack, codec, ledger, reader):
    """Commands carry the broker's append time (LogAppendTime), and the legs the
    ledger writes carry their command's: a transfer a producer stamps a day old is
    stamped now on both sides, so fraud, which ages debits by their event time,
    scores it instead of skipping it as old."""
    import time

    (a, b), opens = new_accounts(2)
    send(stack, codec, [*opens, C.deposit(a, 10_000, "USD")])
    reader.terminals([c["command_id"] for c in opens], timeout=90)
    t = C.transfer(a, b, 100, "USD")
    day_ago = int(time.time() * 1000) - 86_400_000
    before = int(time.time() * 1000)
    p = kafka.producer(stack)
    p.produce(C.topic_for(t), key=a.encode(), value=codec.encode(C.topic_for(t), t), timestamp=day_ago)
    assert p.flush(10) == 0
    reader.terminals([t["command_id"]])
    stamped = [e["occurred_at"] for e in reader.events if e["command_id"] == t["command_id"]]
    assert len(stamped) == 2 and all(ts >= before - 5_000 for ts in stamped), (stamped, before)
