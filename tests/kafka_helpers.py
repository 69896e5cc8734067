"""Test-side Kafka I/O: send commands, read outcomes back with read_committed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import TopicPartition

from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.settings import Settings


def send(settings: Settings, codec: Codec, cmds: Iterable[dict[str, Any]]) -> int:
    p = kafka.producer(settings)
    n = 0
    for c in cmds:
        p.produce(C.topic_for(c), key=c["account_id"].encode(), value=codec.encode(C.topic_for(c), c))
        n += 1
        if n % 5000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return n


class EventReader:
    """Reads ledger.events from the end as of its creation (read_committed)."""

    def __init__(self, settings: Settings, codec: Codec, topic: str = "ledger.events",
                 from_beginning: bool = False) -> None:
        self.codec = codec
        self.topic = topic
        self.consumer = kafka.consumer(settings, f"test-{uuid.uuid4()}")
        md = self.consumer.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        tps = []
        for p in parts:
            if from_beginning:
                tps.append(TopicPartition(topic, p, 0))
            else:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                tps.append(TopicPartition(topic, p, high))
        self.consumer.assign(tps)
        self.events: list[dict[str, Any]] = []

    def poll_until(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met after {timeout}s; have {len(self.events)} events")
            for m in self.consumer.consume(1000, 0.2):
                if m.error():
                    continue
                self.events.append(self.codec.decode(self.topic, m.value()))
        return self.events

    def terminals(self, command_ids: Iterable[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        wanted = set(command_ids)

        def done(evs: list[dict[str, Any]]) -> bool:
            return wanted <= {e["command_id"] for e in evs if e["terminal"] and not e["replay"]}

        self.poll_until(done, timeout)
        return {
            e["command_id"]: e
            for e in self.events
            if e["terminal"] and e["command_id"] in wanted and not e["replay"]
        }

    def close(self) -> None:
        self.consumer.close()


