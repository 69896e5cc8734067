"""The gateway replaces a Kafka producer that librdkafka will not recover
(confluentinc/librdkafka#5430, found by `paystream chaos`: after a broker restart
one partition stayed leaderless in the producer and every payment got 503)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError

from gateway import ledger_io
from gateway.ledger_io import CommandSender, SendError
from paystream import kafka
from paystream.kafka import StuckProducerWatch
from paystream.settings import Settings


def test_watch_flags_timeouts_without_deliveries_only() -> None:
    w = StuckProducerWatch(stuck_after=0.05)
    assert not w.stuck()
    w.delivered(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert not w.stuck()  # not for long enough yet
    time.sleep(0.06)
    assert w.stuck()
    w.delivered(None)
    assert not w.stuck()
    w.delivered(KafkaError(KafkaError._PURGE_QUEUE))  # purged is not timed out
    time.sleep(0.06)
    assert not w.stuck()


class FakeProducer:
    """Delivers (or, when `stuck`, times out) every message on the next poll."""

    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck
        self.pending: list[Any] = []
        self.purged = False

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any, **_: Any) -> None:
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        done, self.pending = self.pending, []
        for cb in done:
            cb(KafkaError(KafkaError._MSG_TIMED_OUT) if self.stuck else None, None)
        return len(done)

    def purge(self) -> None:
        self.purged = True
        done, self.pending = self.pending, []
        for cb in done:
            cb(KafkaError(KafkaError._PURGE_QUEUE), None)

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.pending)


class FakeCodec:
    def encode(self, topic: str, value: Any) -> bytes:
        return b"x"

    def schema_id(self, topic: str) -> int:
        return 1


def test_command_sender_replaces_a_stuck_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeProducer] = []

    def factory(settings: Settings, **extra: Any) -> FakeProducer:
        made.append(FakeProducer(stuck=not made))  # the first one is stuck for good
        return made[-1]

    monkeypatch.setattr(kafka, "producer", factory)
    monkeypatch.setattr(ledger_io.tracing, "enabled", lambda: False)
    # Commands alone (batching has its own tests): the replacement is what this checks.
    sender = CommandSender(Settings(gateway_produce_timeout_seconds=0.05, gateway_batch_max_items=1),
                           FakeCodec())  # type: ignore[arg-type]
    sender.start()
    cmd = {"command_id": "c", "account_id": "a"}

    async def run() -> None:
        with pytest.raises(SendError):
            await sender.send(cmd)  # times out on the stuck producer
        deadline = time.monotonic() + 5
        while sender.replaced == 0:
            assert time.monotonic() < deadline, "the stuck producer was never replaced"
            await asyncio.sleep(0.02)
        await sender.send(cmd)  # the new producer delivers

    try:
        asyncio.run(run())
    finally:
        sender.close()
    assert made[0].purged and len(made) == 2


def test_batch_publisher_replaces_a_stuck_producer_and_the_retry_gets_through() -> None:
    made: list[FakeProducer] = []

    def factory() -> Any:
        made.append(FakeProducer(stuck=not made))  # the first one is stuck for good
        return made[-1]

    pub = kafka.BatchPublisher(factory, stuck_after=0.05)
    results: list[Any] = []

    def batch() -> None:
        for _ in range(3):
            pub.produce("t", key=b"k", value=b"v", on_delivery=lambda err, _m: results.append(err))
        pub.producer.poll(0)  # the fake reports on poll; a real flush polls
        pub.flush(1)

    batch()
    assert len(made) == 1 and all(e is not None for e in results)  # timed out, not yet stuck long
    time.sleep(0.06)
    results.clear()
    batch()
    assert len(made) == 2 and made[0].purged and pub.replaced == 1  # replaced after that flush
    results.clear()
    batch()
    assert results == [None, None, None]  # the relay's retry goes through the new producer
