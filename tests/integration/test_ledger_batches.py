"""Batches of commands against the real ledger: each item is applied as if it came
alone, a misrouted item is dead-lettered, a producer with a wrong partition count
cannot overspend, and an undecodable batch goes to the dead-letter topic whole."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from paystream import commands as C
from paystream import kafka
from paystream.batching import COMMAND_BATCH, CommandBatcher, assemble
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.partitioning import key_for_partition, partition_for
from paystream.settings import Settings
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration
PARTITIONS = 8


@pytest.fixture
def reader(stack: Settings, codec: Codec):
    r = EventReader(stack, codec)
    yield r
    r.close()


class DeadLetters:
    def __init__(self, stack: Settings, codec: Codec) -> None:
        self.codec = codec
        self.consumer = kafka.consumer(stack, f"test-{uuid.uuid4()}")
        parts = self.consumer.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC].partitions
        self.consumer.assign([
            TopicPartition(DLQ_TOPIC, p, self.consumer.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p))[1])
            for p in parts
        ])
        self.letters: list[dict[str, Any]] = []

    def until(self, n: int, timeout: float = 45) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.letters) < n and time.monotonic() < deadline:
            for m in self.consumer.consume(50, 0.5):
                if not m.error():
                    self.letters.append(self.codec.decode(DLQ_TOPIC, m.value()))
        return self.letters

    def close(self) -> None:
        self.consumer.close()


def _open_funded(stack: Settings, codec: Codec, reader: EventReader, n: int, amount: int) -> list[str]:
    accounts = [str(uuid.uuid4()) for _ in range(n)]
    opens = [C.open_account(a, external_number=a[:12], owner_id="t", currency="USD") for a in accounts]
    deps = [C.deposit(a, amount, "USD") for a in accounts]
    send(stack, codec, opens)
    send(stack, codec, deps)
    reader.terminals([d["command_id"] for d in deps], timeout=90)
    return accounts


def _batch(codec: Codec, partition: int, partitions: int, cmds: list[dict[str, Any]]) -> bytes:
    bodies = [codec.encode_body(C.COMMANDS_TOPIC, c) for c in cmds]
    return assemble(codec.header(C.COMMANDS_TOPIC, COMMAND_BATCH), str(uuid.uuid4()), partition, partitions, bodies)


def test_batched_and_single_commands_give_one_outcome_each(stack, codec, ledger, reader):
    accounts = _open_funded(stack, codec, reader, 12, 100_000)
    producer = kafka.producer(stack)
    batcher = CommandBatcher(producer, header=codec.header(C.COMMANDS_TOPIC, COMMAND_BATCH),
                             command_schema_id=codec.schema_id(C.COMMANDS_TOPIC), partitions=PARTITIONS,
                             max_items=32, linger_ms=5)
    cmds = [C.transfer(accounts[i % 12], accounts[(i * 7 + 1) % 12], 1_000, "USD") for i in range(300)]
    cmds = [c for c in cmds if c["account_id"] != c["movement"]["counterparty_id"]]
    overdraw = C.transfer(accounts[0], accounts[1], 10**9, "USD")  # refused alone, its neighbours go on
    cmds.insert(17, overdraw)
    for c in cmds[:150]:
        batcher.send(c["account_id"], codec.encode(C.COMMANDS_TOPIC, c))
    batcher.flush()
    send(stack, codec, cmds[150:200])  # singles interleave with batches
    for c in cmds[200:]:
        batcher.send(c["account_id"], codec.encode(C.COMMANDS_TOPIC, c))
    batcher.close()
    assert producer.flush(10) == 0
    assert batcher.batches < len(cmds) - 50
    out = reader.terminals([c["command_id"] for c in cmds], timeout=90)
    assert out[overdraw["command_id"]]["reason"] == "INSUFFICIENT_FUNDS"
    assert sum(1 for e in out.values() if e["type"] == "TRANSFER_COMPLETED") == len(cmds) - 1
    mine = {c["command_id"] for c in cmds}
    posted = [p for e in reader.events if e["command_id"] in mine for p in e["postings"]]
    assert sum(p["amount"] for p in posted) == 0
    assert sum(1 for e in reader.events if e["command_id"] in mine and e["terminal"] and not e["replay"]) == len(cmds)
    # balances: each account's last balance equals deposits plus its postings
    last: dict[str, int] = {}
    for e in reader.events:
        if e["account_id"] in accounts and e["balance_after"] is not None:
            last[e["account_id"]] = e["balance_after"]
    for a in accounts:
        assert last[a] == 100_000 + sum(p["amount"] for p in posted if p["account_id"] == a)


def test_misrouted_items_are_dead_lettered_and_a_wrong_partition_count_cannot_overspend(stack, codec, ledger, reader):
    """A producer that believes the topic has 4 partitions puts an account on the
    wrong partition. Had the ledger applied it there, a second writer (with the
    account's state empty or stale) would hold the same account and could let it
    spend twice. The ledger refuses every item that is not its own."""
    dead = DeadLetters(stack, codec)
    (rich, poor) = _open_funded(stack, codec, reader, 2, 10_000)
    right = partition_for(rich, PARTITIONS)
    wrong = next(p for p in range(PARTITIONS) if p != right)
    spend = [C.transfer(rich, poor, 10_000, "USD") for _ in range(2)]  # each alone spends everything
    producer = kafka.producer(stack)
    producer.produce(C.COMMANDS_TOPIC, value=_batch(codec, wrong, 4, [spend[0]]),
                     key=key_for_partition(wrong, PARTITIONS), partition=wrong)
    producer.produce(C.COMMANDS_TOPIC, value=_batch(codec, right, PARTITIONS, [spend[1]]),
                     key=key_for_partition(right, PARTITIONS), partition=right)
    assert producer.flush(10) == 0
    out = reader.terminals([spend[1]["command_id"]])
    assert out[spend[1]["command_id"]]["type"] == "TRANSFER_COMPLETED"
    letters = [d for d in dead.until(1) if d["reason_code"] == "MISROUTED"]
    dead.close()
    assert len(letters) == 1 and letters[0]["key"] == rich.encode()
    assert codec.decode(C.COMMANDS_TOPIC, letters[0]["value"])["command_id"] == spend[0]["command_id"]
    assert f"belongs to partition {right} of {PARTITIONS}" in letters[0]["reason"]
    time.sleep(2)
    assert not any(e["command_id"] == spend[0]["command_id"] for e in reader.events)
    debits = [e for e in reader.events if e["account_id"] == rich and e["type"] == "TRANSFER_DEBITED"]
    assert len(debits) == 1 and debits[0]["balance_after"] == 0


def test_bad_items_and_undecodable_batches(stack, codec, ledger, reader):
    dead = DeadLetters(stack, codec)
    (a, b) = _open_funded(stack, codec, reader, 2, 10_000)
    p = partition_for(a, PARTITIONS)
    good = C.transfer(a, b, 100, "USD")
    invalid = C.transfer(a, b, 100, "USD")
    invalid["movement"] = None
    producer = kafka.producer(stack)
    producer.produce(C.COMMANDS_TOPIC, value=_batch(codec, p, PARTITIONS, [invalid, good]),
                     key=key_for_partition(p, PARTITIONS), partition=p)
    truncated = _batch(codec, p, PARTITIONS, [C.transfer(a, b, 5, "USD")])[:-7]
    producer.produce(C.COMMANDS_TOPIC, value=truncated, key=key_for_partition(p, PARTITIONS), partition=p)
    garbage = codec.header(C.COMMANDS_TOPIC, COMMAND_BATCH) + b"\xff" * 40  # a varint that never ends
    producer.produce(C.COMMANDS_TOPIC, value=garbage, key=key_for_partition(p, PARTITIONS), partition=p)
    assert producer.flush(10) == 0
    assert reader.terminals([good["command_id"]])[good["command_id"]]["type"] == "TRANSFER_COMPLETED"
    letters = dead.until(3)
    dead.close()
    by_code: dict[str, list[dict[str, Any]]] = {}
    for d in letters:
        by_code.setdefault(d["reason_code"], []).append(d)
    (item,) = by_code["INVALID"]
    assert "needs the `movement` field" in item["reason"] and item["key"] == a.encode()
    assert codec.decode(C.COMMANDS_TOPIC, item["value"])["command_id"] == invalid["command_id"]
    whole = sorted(d["value"] for d in by_code["UNDECODABLE"])
    assert whole == sorted([truncated, garbage])


def test_a_single_command_on_the_wrong_partition_is_dead_lettered(stack, codec, ledger, reader):
    """librdkafka's default partitioner is not Kafka's murmur2: a direct producer that
    kept it would put an account on a partition that is not its writer's."""
    dead = DeadLetters(stack, codec)
    (a, b) = _open_funded(stack, codec, reader, 2, 10_000)
    wrong = (partition_for(a, PARTITIONS) + 1) % PARTITIONS
    t = C.transfer(a, b, 10_000, "USD")
    producer = kafka.producer(stack)
    producer.produce(C.COMMANDS_TOPIC, value=codec.encode(C.COMMANDS_TOPIC, t), key=a.encode(), partition=wrong)
    assert producer.flush(10) == 0
    letters = [d for d in dead.until(1) if d["reason_code"] == "MISROUTED"]
    dead.close()
    assert len(letters) == 1 and letters[0]["key"] == a.encode()
    assert f"belongs to partition {partition_for(a, PARTITIONS)}" in letters[0]["reason"]
    time.sleep(2)
    assert not any(e["command_id"] == t["command_id"] for e in reader.events)


def test_a_forged_refund_to_a_non_account_is_dead_lettered_and_the_ledger_goes_on(stack, codec, ledger, reader):
    """Legs come only from the ledger, but until the broker authenticates producers
    anyone can write one. A REFUND to a key that never sent used to stop the ledger
    on that record for ever (an uncaught AssertionError); now it is a dead letter
    with a reason, alone and in a batch, and the partition keeps moving."""
    dead = DeadLetters(stack, codec)
    (a, b) = _open_funded(stack, codec, reader, 2, 10_000)
    nobody = str(uuid.uuid4())
    while partition_for(nobody, PARTITIONS) != partition_for(a, PARTITIONS):
        nobody = str(uuid.uuid4())
    forged = {"leg_id": str(uuid.uuid4()), "kind": "REFUND", "command_id": str(uuid.uuid4()),
              "payment_id": str(uuid.uuid4()), "account_id": nobody, "counterparty_id": b,
              "amount": 10**15, "currency": "USD", "reason": None, "requested_by": "forger", "issued_at": 0}
    producer = kafka.producer(stack)
    p = partition_for(nobody, PARTITIONS)
    producer.produce("ledger.legs", value=codec.encode("ledger.legs", forged), key=nobody.encode(), partition=p)
    assert producer.flush(10) == 0
    t = C.transfer(a, b, 100, "USD")
    send(stack, codec, [t])
    assert reader.terminals([t["command_id"]])[t["command_id"]]["type"] == "TRANSFER_COMPLETED"
    letters = [d for d in dead.until(1) if d["reason_code"] == "INVALID" and d["key"] == nobody.encode()]
    dead.close()
    assert len(letters) == 1 and "not an account" in letters[0]["reason"]
    assert codec.decode("ledger.legs", letters[0]["value"])["leg_id"] == forged["leg_id"]
    assert not any(e["account_id"] == nobody for e in reader.events)
