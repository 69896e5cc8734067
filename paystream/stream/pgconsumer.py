"""Kafka into Postgres exactly once: rows and offsets commit in one transaction.

The reviews and webhooks consumers use this, following the sink's rules: each
consumed batch is written in one Postgres transaction together with the next
offset per partition (`downstream_offsets`), handlers insert with deterministic
keys and ON CONFLICT DO NOTHING, and on (re)assignment the consumer seeks to the
offsets stored in Postgres. A crash at any point leaves either the whole batch
and its offsets, or neither. Kafka's committed group offsets are only written
afterwards, for lag monitoring.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from paystream import kafka, metrics
from paystream.reconnect import Backoff, connection_lost
from paystream.settings import Settings

log = logging.getLogger("paystream.pgconsumer")

RECONNECTS = Counter(
    "paystream_pgconsumer_reconnects_total",
    "times a consumer lost its Postgres connection and waited it out", ["consumer"],
)

BatchHandler = Callable[[psycopg.Connection[Any], list[Message]], None]


class PgConsumer:
    def __init__(self, settings: Settings, *, name: str, topic: str, handle: BatchHandler,
                 batch_size: int = 500, poll_timeout: float = 0.2) -> None:
        self.settings = settings
        self.name = name
        self.topic = topic
        self.handle = handle
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.consumer: Consumer = kafka.consumer(settings, f"paystream-{name}",
                                                 **metrics.consumer_stats_config(name, settings))

    def _stored(self, partitions: list[int]) -> dict[int, int]:
        with psycopg.connect(self.settings.postgres_dsn) as conn:
            rows = conn.execute(
                "SELECT partition, next_offset FROM downstream_offsets"
                " WHERE consumer = %s AND topic = %s AND partition = ANY(%s)",
                (self.name, self.topic, partitions),
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        stored = self._stored([p.partition for p in parts])
        for p in parts:
            p.offset = stored.get(p.partition, OFFSET_BEGINNING)
        log.info("%s assigned %s", self.name, {p.partition: p.offset for p in parts})
        consumer.assign(parts)

    def process(self, conn: psycopg.Connection[Any], msgs: list[Message]) -> None:
        """One batch and its offsets in one transaction."""
        good = [m for m in msgs if not m.error()]
        for m in msgs:
            if m.error():
                log.warning("%s: consumer error %s", self.name, m.error())
        if not good:
            return
        nxt: dict[int, int] = {}
        for m in good:
            nxt[m.partition()] = max(nxt.get(m.partition(), 0), m.offset() + 1)
        with conn.transaction():
            self.handle(conn, good)
            # GREATEST: a batch read just before a rebalance can finish after the new
            # owner moved on; its rows are idempotent, and the offset must not go back.
            conn.cursor().executemany(
                "INSERT INTO downstream_offsets (consumer, topic, partition, next_offset)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer, topic, partition) DO UPDATE"
                " SET next_offset = GREATEST(downstream_offsets.next_offset, EXCLUDED.next_offset),"
                " updated_at = now()",
                [(self.name, self.topic, p, o) for p, o in nxt.items()],
            )
        self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in nxt.items()],
                             asynchronous=True)

    def _rewind(self) -> None:
        """After a lost connection: the batch in flight was not written, so every
        assigned partition goes back to the offset Postgres holds. A seek that fails
        raises: skipping ahead would lose that batch."""
        parts = [tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic]
        if not parts:
            return
        stored = self._stored(parts)
        for p in parts:
            self.consumer.seek(TopicPartition(self.topic, p, stored.get(p, OFFSET_BEGINNING)))
        log.info("%s rewound to %s", self.name, {p: stored.get(p, "beginning") for p in parts})

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop`. A lost Postgres connection (restart, failover) is
        waited out (capped backoff, then a rewind to the stored offsets), not a reason
        to exit: the supervisor would restart the whole worker for what a reconnect
        does. Any other database error still ends the loop: retrying a statement
        that fails every time would hide it."""
        self.consumer.subscribe([self.topic], on_assign=self._on_assign)
        backoff, lost = Backoff(), False
        try:
            while not stop.is_set():
                try:
                    with psycopg.connect(self.settings.postgres_dsn,
                                         application_name=f"paystream-{self.name}") as conn:
                        if lost:
                            self._rewind()
                            log.info("%s: postgres is back", self.name)
                            lost = False
                        while not stop.is_set():
                            msgs = self.consumer.consume(self.batch_size, self.poll_timeout)
                            if msgs:
                                self.process(conn, msgs)
                                backoff.reset()  # a batch committed: the connection works
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if not connection_lost(exc):
                        raise
                    if not lost:
                        RECONNECTS.labels(self.name).inc()
                    lost = True
                    delay = backoff.next()
                    log.warning("%s: postgres unavailable (%s); retrying in %.1fs", self.name, exc, delay)
                    stop.wait(delay)
                except KafkaException as exc:
                    # A rewind right after a (re)assignment can come before the fetcher
                    # has started a partition; nothing was consumed since, so retry.
                    err = exc.args[0] if exc.args else None
                    if not (lost and isinstance(err, KafkaError) and err.code() == KafkaError._STATE):
                        raise
                    delay = backoff.next()
                    log.warning("%s: rewind not possible yet (%s); retrying in %.1fs", self.name, err, delay)
                    stop.wait(delay)
        finally:
            self.consumer.close()

