"""The broker's trust boundary (docs/SECURITY.md): who may connect, who may write and
read what, and which commands the ledger takes from which topic."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from ops import kafka_auth
from paystream import commands as C
from paystream import kafka
from paystream.batching import COMMAND_BATCH, assemble
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.partitioning import key_for_partition, partition_for
from paystream.settings import Settings
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration

LEGS, EVENTS = "ledger.legs", "ledger.events"


def _produce(settings: Settings, topic: str, value: bytes = b"\x00", key: bytes = b"k") -> KafkaError | None:
    """The delivery error of one record (None: written)."""
    p = kafka.producer(settings, **{"message.timeout.ms": 10_000, "log_level": 0})
    reports: list[KafkaError | None] = []
    p.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: reports.append(err))
    p.flush(20)
    assert reports, f"no delivery report for {topic}"
    return reports[0]


def _denied(err: KafkaError | None) -> bool:
    return err is not None and err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                              KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                                              KafkaError.CLUSTER_AUTHORIZATION_FAILED)


@pytest.fixture
def reader(stack: Settings, codec: Codec) -> Iterator[EventReader]:
    r = EventReader(stack, codec)
    yield r
    r.close()


@pytest.fixture
def producer_principal(stack: Settings) -> Iterator[Settings]:
    """A Kafka-direct producer, as `paystream producers add` makes one."""
    name = f"t{uuid.uuid4().hex[:10]}"
    principal = kafka_auth.add_producer(stack, name)
    yield kafka_auth.as_principal(stack, principal)
    kafka_auth.remove_producer(stack, name)


def test_a_client_without_valid_credentials_is_refused(stack):
    anonymous = AdminClient({"bootstrap.servers": stack.bootstrap_servers, "log_level": 0})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=5)
    wrong = stack.model_copy(update={"kafka_principal": "ledger", "kafka_password": "not-the-password"})
    with pytest.raises(KafkaException):
        kafka.admin(wrong, log_level=0).list_topics(timeout=5)
    # while the real password works
    kafka.admin(kafka_auth.as_principal(stack, "ledger")).list_topics(timeout=10)


@pytest.mark.parametrize(("principal", "topic"), [
    ("gateway", LEGS), ("gateway", EVENTS),                  # the edge cannot forge a credit or an outcome
    ("fraud", LEGS), ("fraud", EVENTS), ("fraud", C.COMMANDS_TOPIC),
    ("compensation", LEGS), ("compensation", EVENTS),
    ("notifications", EVENTS), ("sink", EVENTS), ("webhooks", "notifications"),
    ("reviews", C.PRIVILEGED_TOPIC), ("outbox-relay", C.COMMANDS_TOPIC), ("outbox-relay", EVENTS),
    ("ledger", C.PRIVILEGED_TOPIC), ("ledger", "fraud.decisions"),
])  # fmt: skip
def test_each_component_may_write_only_the_topics_it_owns(stack, principal, topic):
    # nothing reaches the topic, so nothing downstream sees this byte
    assert _denied(_produce(kafka_auth.as_principal(stack, principal), topic))


def test_a_direct_producer_may_send_transfers_and_nothing_else(stack, codec, ledger, reader, producer_principal):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    opens = [C.open_account(x, external_number=x[:12], owner_id="t", currency="USD") for x in (a, b)]
    funding = C.deposit(a, 10_000, "USD")
    send(stack, codec, [*opens, funding])  # the operator (admin) opens and funds
    reader.terminals([funding["command_id"]])

    # money in, a freeze, a new account: the privileged topic is closed to it
    for cmd in (C.deposit(a, 10**15, "USD"), C.status_change("FREEZE", b, reason="x", actor="mallory"),
                C.open_account(str(uuid.uuid4()), external_number="X", owner_id="mallory", currency="USD")):
        err = _produce(producer_principal, C.PRIVILEGED_TOPIC, codec.encode(C.PRIVILEGED_TOPIC, cmd),
                       cmd["account_id"].encode())
        assert _denied(err), cmd["type"]
    # a leg (a credit with no debit) and an event (a fake outcome): closed too
    leg = {"leg_id": str(uuid.uuid4()), "kind": "CREDIT", "command_id": str(uuid.uuid4()),
           "payment_id": str(uuid.uuid4()), "account_id": b, "counterparty_id": a,
           "amount": 10**15, "currency": "USD", "reason": None, "requested_by": "mallory", "issued_at": 0}
    assert _denied(_produce(producer_principal, LEGS, codec.encode(LEGS, leg), b.encode()))
    assert _denied(_produce(producer_principal, EVENTS))

    # a deposit on the public topic is written, and dead-lettered, not applied
    forged = C.deposit(b, 10**15, "USD")
    dlq = _dlq_reader(stack)
    assert _produce(producer_principal, C.COMMANDS_TOPIC, codec.encode(C.COMMANDS_TOPIC, forged), b.encode()) is None
    # and its own transfer goes through
    pay = C.transfer(a, b, 2_500, "USD")
    assert _produce(producer_principal, C.COMMANDS_TOPIC, codec.encode(C.COMMANDS_TOPIC, pay), a.encode()) is None
    out = reader.terminals([pay["command_id"]])
    assert out[pay["command_id"]]["type"] == "TRANSFER_COMPLETED"
    (letter,) = _letters(dlq, codec, lambda d: d["key"] == b.encode(), 1)
    assert letter["reason_code"] == "UNPRIVILEGED" and letter["source_topic"] == C.COMMANDS_TOPIC
    assert codec.decode(C.COMMANDS_TOPIC, letter["value"])["command_id"] == forged["command_id"]
    assert forged["command_id"] not in {e["command_id"] for e in reader.events}
    # b holds the 2,500 it was paid, not 10^15
    assert _balance(reader, b, lambda v: v == 2_500) == 2_500

    # nor may it read anyone's outcomes
    consumer = kafka.consumer(producer_principal, f"t-{uuid.uuid4()}", log_level=0)
    try:
        consumer.assign([TopicPartition(EVENTS, 0, 0)])
        msgs = consumer.consume(1, 10)
        assert msgs and msgs[0].error() is not None
        assert msgs[0].error().code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)
    finally:
        consumer.close()


def test_a_privileged_item_in_a_public_batch_is_dead_lettered_alone(stack, codec, ledger, reader):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    opens = [C.open_account(x, external_number=x[:12], owner_id="t", currency="USD") for x in (a, b)]
    funding = C.deposit(a, 10_000, "USD")
    send(stack, codec, [*opens, funding])
    reader.terminals([funding["command_id"]])
    p = partition_for(a, 8)
    forged = C.deposit(a, 10**15, "USD")
    pays = [C.transfer(a, b, 100, "USD") for _ in range(2)]
    items = [pays[0], forged, pays[1]]
    batch = assemble(codec.header(C.COMMANDS_TOPIC, COMMAND_BATCH), str(uuid.uuid4()), p, 8,
                     [codec.encode_body(C.COMMANDS_TOPIC, c) for c in items])
    dlq = _dlq_reader(stack)
    producer = kafka.producer(stack)
    producer.produce(C.COMMANDS_TOPIC, value=batch, key=key_for_partition(p, 8), partition=p)
    assert producer.flush(10) == 0
    out = reader.terminals([c["command_id"] for c in pays])
    assert [out[c["command_id"]]["type"] for c in pays] == ["TRANSFER_COMPLETED"] * 2
    assert _balance(reader, a, lambda v: v <= 10_000 - 200) == 10_000 - 200
    (letter,) = _letters(dlq, codec, lambda d: d["key"] == a.encode(), 1)
    assert letter["reason_code"] == "UNPRIVILEGED"
    assert codec.decode(C.COMMANDS_TOPIC, letter["value"])["command_id"] == forged["command_id"]


def _balance(reader: EventReader, account: str, settled: Any) -> int:
    """The account's balance after its last posting, once `settled` holds (or the timeout)."""
    def last(evs: list[dict[str, Any]]) -> int | None:
        mine = [e["balance_after"] for e in evs if e["account_id"] == account and e["postings"]]
        return mine[-1] if mine else None

    with contextlib.suppress(TimeoutError):  # the assertion after it says what was there
        reader.poll_until(lambda evs: (v := last(evs)) is not None and settled(v), timeout=30)
    value = last(reader.events)
    assert value is not None
    return value


def _dlq_reader(stack: Settings) -> Any:
    dlq = kafka.consumer(stack, f"test-{uuid.uuid4()}")
    parts = dlq.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC].partitions
    ends = {p: dlq.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p))[1] for p in parts}
    dlq.assign([TopicPartition(DLQ_TOPIC, p, end) for p, end in ends.items()])
    return dlq


def _letters(dlq: Any, codec: Codec, mine: Any, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for m in dlq.consume(10, 0.5):
            if not m.error() and mine(d := codec.decode(DLQ_TOPIC, m.value())):
                out.append(d)
    dlq.close()
    return out
