"""Batches of commands: wire layout, partitioning, and the client-side coalescer."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream import commands as C
from paystream.batching import CommandBatcher, assemble, body_of
from paystream.codec import SCHEMA_DIR
from paystream.partitioning import key_for_partition, murmur2, partition_for


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("batch", "single"), [("command_batch.avsc", "command.avsc"), ("leg_batch.avsc", "leg.avsc")])
def test_batch_items_are_exactly_the_single_record(batch: str, single: str) -> None:
    """The batch schema inlines the single one: they must never drift apart."""
    items = next(f for f in _schema(batch)["fields"] if f["name"] == "items")["type"]["items"]
    assert items == _schema(single)


@pytest.mark.parametrize(("key", "signed"), [
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])  # fmt: skip
def test_murmur2_matches_kafkas_test_vectors(key: bytes, signed: int) -> None:
    """Vectors from Kafka's UtilsTest.testMurmur2 (Java's signed int)."""
    assert murmur2(key) == signed & 0xFFFFFFFF


@given(st.integers(0, 63), st.integers(1, 64))
def test_key_for_partition_lands_on_its_partition(partition: int, partitions: int) -> None:
    partition %= partitions
    assert partition_for(key_for_partition(partition, partitions), partitions) == partition


def _command_schema() -> Any:
    return fastavro.parse_schema(_schema("command.avsc"))


def _wire(cmd: dict[str, Any], schema_id: int = 1) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _command_schema(), cmd)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def _decode_batch(value: bytes) -> dict[str, Any]:
    schema = fastavro.parse_schema(_schema("command_batch.avsc"))
    out = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
    assert isinstance(out, dict)
    return out


class FakeProducer:
    def __init__(self, full_times: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.full_times = full_times
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: str, partition: int, **_: Any) -> None:
        if self.full_times:
            self.full_times -= 1
            raise BufferError("queue full")
        self.sent.append({"topic": topic, "value": value, "key": key, "partition": partition})

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        return 0


def test_batcher_coalesces_per_partition_in_order_and_keeps_every_command() -> None:
    producer = FakeProducer()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=8,
                             max_items=16, linger_ms=10_000)
    accounts = [str(uuid.uuid4()) for _ in range(20)]
    cmds = [C.transfer(accounts[i % 20], accounts[(i + 1) % 20], 100 + i, "USD") for i in range(200)]
    for c in cmds:
        batcher.send(c["account_id"], _wire(c))
    batcher.close()
    seen: list[dict[str, Any]] = []
    for sent in producer.sent:
        batch = _decode_batch(sent["value"])
        assert sent["partition"] == batch["partition"]
        assert partition_for(sent["key"], 8) == sent["partition"]
        assert len(batch["items"]) <= 16
        assert all(partition_for(i["account_id"], 8) == sent["partition"] for i in batch["items"])
        seen.extend(batch["items"])
    assert sorted(c["command_id"] for c in seen) == sorted(c["command_id"] for c in cmds)
    for account in accounts:  # each account's commands keep their order
        assert [c["command_id"] for c in seen if c["account_id"] == account] == [
            c["command_id"] for c in cmds if c["account_id"] == account
        ]


def test_batcher_sends_a_partial_batch_after_the_linger() -> None:
    producer = FakeProducer()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=8,
                             max_items=100, linger_ms=20)
    c = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD")
    batcher.send(c["account_id"], _wire(c))
    deadline = time.monotonic() + 2
    while not producer.sent and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [i["command_id"] for i in _decode_batch(producer.sent[0]["value"])["items"]] == [c["command_id"]]
    batcher.close()


def test_batcher_sends_each_partition_when_its_own_linger_ends() -> None:
    """A first command for another partition wakes the loop; the older batch must
    still leave when its own window ends, not a whole window after that wake-up."""
    producer = FakeProducer()
    times: list[float] = []
    inner = producer.produce

    def timed(*args: Any, **kwargs: Any) -> None:
        times.append(time.monotonic())
        inner(*args, **kwargs)

    producer.produce = timed  # type: ignore[method-assign]
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=8,
                             max_items=100, linger_ms=200)
    first = next(a for a in (str(uuid.uuid4()) for _ in range(100)) if partition_for(a, 8) == 0)
    other = next(a for a in (str(uuid.uuid4()) for _ in range(100)) if partition_for(a, 8) == 1)
    start = time.monotonic()
    batcher.send(first, _wire(C.transfer(first, other, 5, "USD")))
    time.sleep(0.15)
    batcher.send(other, _wire(C.transfer(other, first, 5, "USD")))  # wakes the loop at 150 ms
    deadline = start + 2
    while len(producer.sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    batcher.close()
    assert [s["partition"] for s in producer.sent] == [0, 1]
    assert 0.19 <= times[0] - start < 0.3, f"partition 0 left after {times[0] - start:.3f}s (linger 0.2s)"


def test_batcher_waits_out_a_full_queue_instead_of_dropping() -> None:
    producer = FakeProducer(full_times=3)
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=4,
                             max_items=1, linger_ms=10_000)
    c = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD")
    batcher.send(c["account_id"], _wire(c))
    batcher.close()
    assert len(producer.sent) == 1 and producer.polls == 3


def test_batcher_refuses_a_command_written_with_another_schema() -> None:
    """Bodies written with another schema would make the batch unreadable."""
    batcher = CommandBatcher(FakeProducer(), header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=4)
    c = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD")
    with pytest.raises(ValueError, match="schema id 1"):
        batcher.send(c["account_id"], _wire(c, schema_id=2))
    batcher.close()


def test_body_of_strips_exactly_the_header() -> None:
    assert body_of(b"\x00\x00\x00\x00\x01abc", 1) == b"abc"
    assert assemble(b"H", "id", 0, 1, []) == b"H\x04id\x00\x02\x00"


def test_each_command_hears_its_batchs_delivery_report() -> None:
    class Reporting(FakeProducer):
        def produce(self, topic: str, value: bytes, key: str, partition: int, **kw: Any) -> None:
            super().produce(topic, value, key, partition)
            kw["on_delivery"](None if partition % 2 == 0 else "broker said no", None)

    batcher = CommandBatcher(Reporting(), header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=8,
                             max_items=1000, linger_ms=10_000)
    heard: dict[str, Any] = {}
    cmds = [C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD") for _ in range(40)]
    for c in cmds:
        def hear(err: Any, _msg: Any, cid: str = c["command_id"]) -> None:
            heard[cid] = err

        batcher.send(c["account_id"], _wire(c), on_delivery=hear)
    assert heard == {}
    batcher.close()
    assert heard == {
        c["command_id"]: (None if partition_for(c["account_id"], 8) % 2 == 0 else "broker said no") for c in cmds
    }


def test_one_partitions_batches_leave_in_order_whoever_sends_them() -> None:
    """The linger thread and `send` both produce batches; taking and producing under one
    lock keeps a partition's commands in the order they were sent."""

    class Slow(FakeProducer):
        def produce(self, topic: str, value: bytes, key: str, partition: int, **kw: Any) -> None:
            # the linger thread's produce is slow: a batch it has taken must still
            # leave before the next one the sender fills meanwhile
            if threading.current_thread().name == "command-batcher":
                time.sleep(0.02)
            super().produce(topic, value, key, partition)

    producer = Slow()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=2,
                             max_items=7, linger_ms=1)
    account = str(uuid.uuid4())
    cmds = [C.transfer(account, str(uuid.uuid4()), i + 1, "USD") for i in range(300)]
    for i, c in enumerate(cmds):
        batcher.send(account, _wire(c))
        if i % 13 == 0:
            time.sleep(0.003)  # let the linger thread take partial batches
    batcher.close()
    seen = [i["command_id"] for s in producer.sent for i in _decode_batch(s["value"])["items"]]
    assert seen == [c["command_id"] for c in cmds]


def test_a_batch_is_split_at_max_bytes() -> None:
    producer = FakeProducer()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=1,
                             max_items=1000, max_bytes=2_000, linger_ms=10_000)
    cmds = [C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD") for _ in range(100)]
    for c in cmds:
        batcher.send(c["account_id"], _wire(c))
    batcher.close()
    assert all(len(s["value"]) <= 2_000 + 200 for s in producer.sent) and len(producer.sent) > 5
    assert sum(len(_decode_batch(s["value"])["items"]) for s in producer.sent) == 100


def test_a_batch_that_cannot_be_produced_fails_its_commands_and_the_batcher_goes_on() -> None:
    class Refusing(FakeProducer):
        def produce(self, topic: str, value: bytes, key: str, partition: int, **kw: Any) -> None:
            if not self.sent and not getattr(self, "refused", False):
                self.refused = True
                raise RuntimeError("message too large")
            super().produce(topic, value, key, partition)

    producer = Refusing()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=1,
                             max_items=1, linger_ms=10_000)
    heard: list[Any] = []
    for _ in range(2):
        c = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD")
        batcher.send(c["account_id"], _wire(c), on_delivery=lambda err, _m: heard.append(err))
    batcher.close()
    assert isinstance(heard[0], RuntimeError) and len(producer.sent) == 1


def test_abort_fails_waiting_commands_without_producing_them() -> None:
    producer = FakeProducer()
    batcher = CommandBatcher(producer, header=b"\x00\x00\x00\x00\x09", command_schema_id=1, partitions=4,
                             max_items=100, linger_ms=10_000)
    heard: list[Any] = []
    c = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 5, "USD")
    batcher.send(c["account_id"], _wire(c), on_delivery=lambda err, _m: heard.append(err))
    batcher.abort("producer replaced")
    assert heard == ["producer replaced"] and producer.sent == []
    with pytest.raises(RuntimeError, match="closed"):
        batcher.send(c["account_id"], _wire(c))
