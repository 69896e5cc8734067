"""The one Kafka-to-Postgres intake (`paystream.stream.pg_intake`) without a stack: the
order of a round (dead letters acknowledged before the offsets that pass them), the
positions it stores, poison isolation, and how it recovers. A fake consumer, producer
and batch writer stand in for Kafka and Postgres; the writer keeps the real one's
rules (drop what is below the stored offsets, offsets only move forward).
tests/integration/test_pgconsumer.py and test_sink.py run it against the real stack."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ops.db import discover
from paystream.reconnect import Backoff
from paystream.settings import Settings
from paystream.stream import pg_intake as P

TOPIC = "test.topic"


class Msg:
    def __init__(self, partition: int, offset: int, value: bytes = b"v", error: KafkaError | None = None) -> None:
        self._p, self._o, self._v, self._e = partition, offset, value, error

    def error(self) -> KafkaError | None:
        return self._e

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return b"key"

    def topic(self) -> str:
        return TOPIC

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes]]:
        return [("h", b"1")]


class Consumer:
    def __init__(self, polls: list[list[Msg]], positions: dict[int, int] | None = None) -> None:
        self.polls = polls
        self.positions = positions or {}
        self.commits: list[dict[int, int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.seek_error: KafkaException | None = None
        self.closed = False
        self.queued: list[Msg] = []

    # kafka.consume_ready: poll for the first message, then consume what is queued.
    def poll(self, timeout: float) -> Msg | None:
        batch = self.polls.pop(0) if self.polls else []
        self.queued = batch[1:]
        return batch[0] if batch else None

    def consume(self, n: int, timeout: float) -> list[Msg]:
        rest, self.queued = self.queued[:n], self.queued[n:]
        return rest

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001)) for tp in tps]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    def seek(self, tp: TopicPartition) -> None:
        if self.seek_error is not None:
            raise self.seek_error
        self.seeks.append((tp.partition, tp.offset))

    def close(self) -> None:
        self.closed = True


class Producer:
    def __init__(self, log: list[str], unacked: int = 0) -> None:
        self.log, self.unacked = log, unacked
        self.sent: list[bytes | None] = []

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append(key)

    def flush(self, timeout: float) -> int:
        self.log.append(f"flush {len(self.sent)}")
        return self.unacked


class Writer:
    """The batch writer's contract in memory: the stored offsets per partition."""

    def __init__(self, log: list[str], stored: dict[int, int] | None = None) -> None:
        self.log = log
        self.stored = dict(stored or {})
        self.fail: list[BaseException] = []  # raised by the next writes, in order
        self.connects = 0

    def connect_with_retry(self, stop: Any = None) -> bool:
        self.connects += 1
        return True

    def stored_offsets(self) -> dict[int, int]:
        return dict(self.stored)

    def close(self) -> None:
        pass

    def write(self, items: Sequence[P.Item[Any]], next_offsets: Mapping[int, int],
              apply: Callable[[Any, list[P.Item[Any]]], Any]) -> P.Written[Any]:  # fmt: skip
        if self.fail:
            raise self.fail.pop(0)
        fresh = [it for it in items if it.offset >= self.stored.get(it.partition, -1)]
        result = apply(None, fresh) if fresh else None  # raises: nothing below is stored
        for p, o in next_offsets.items():
            self.stored[p] = max(self.stored.get(p, -1), o)
        self.log.append(f"write {[(it.partition, it.offset) for it in fresh]} {dict(next_offsets)}")
        return P.Written(result, len(items) - len(fresh))


class Handler(P.IntakeHandler[bytes, list[int]]):
    """Values b"bad" are rejected, b"skip" skipped, b"poison" refused by "Postgres"."""

    def __init__(self) -> None:
        self.applied: list[int] = []
        self.letters: list[str] = []

    def decode(self, message: Any) -> bytes | P.Reject | None:
        v: bytes = message.value()
        if v == b"bad":
            return P.Reject("UNDECODABLE", "bad bytes")
        return None if v == b"skip" else v

    def apply(self, conn: Any, items: list[P.Item[bytes]]) -> list[int]:
        if any(it.value == b"poison" for it in items):
            raise psycopg.DataError("value out of range")
        self.applied += [it.offset for it in items]
        return [it.offset for it in items]

    def dead_lettered(self, letter: Mapping[str, Any]) -> None:
        self.letters.append(letter["reason_code"])


class Codec:
    def encode(self, topic: str, value: dict[str, Any]) -> bytes:
        return b"dlq"


@dataclass
class Rig:
    it: P.PgIntake[bytes, list[int]]
    handler: Handler
    consumer: Consumer
    writer: Writer
    producer: Producer
    log: list[str]


def rig(polls: list[list[Msg]], *, stored: dict[int, int] | None = None, assigned: set[int] | None = None,
        positions: dict[int, int] | None = None, isolate: bool = False) -> Rig:
    log: list[str] = []
    spec = P.IntakeSpec(name="test", topic=TOPIC, group="paystream-test", dsn="postgresql://unused/x",
                        component="test", application_name="paystream-test",
                        isolate=(psycopg.DataError,) if isolate else ())  # fmt: skip
    handler = Handler()
    it = P.PgIntake(Settings(), spec, handler, Codec())  # type: ignore[arg-type]
    consumer, writer, producer = Consumer(polls, positions), Writer(log, stored), Producer(log)
    it.consumer, it.writer, it._dlq = consumer, writer, producer  # type: ignore[assignment]
    it.assigned = set(assigned or ())
    it.stored = dict(stored or {})
    it._failures = Backoff(first=0.0, cap=0.0)
    return Rig(it, handler, consumer, writer, producer, log)


def test_a_round_writes_rows_and_offsets_once_and_dead_letters_first() -> None:
    r = rig([[Msg(0, 5), Msg(0, 6, b"bad"), Msg(1, 3, b"skip"), Msg(1, 4)]], assigned={0, 1})
    step = r.it.step()
    assert step is not None and step.results == [[5, 4]] and step.dead_letters == 1
    assert r.log == ["flush 1", "write [(0, 5), (1, 4)] {0: 7, 1: 5}"]  # the letter is acked before
    assert r.producer.sent == [b"key"] and r.handler.letters == ["UNDECODABLE"]
    assert r.it.stored == {0: 7, 1: 5} and r.consumer.commits == [{0: 7, 1: 5}]


def test_positions_past_transaction_markers_are_stored_without_applying_anything() -> None:
    # an idle poll whose position moved past a commit marker (offset 9 of partition 2)
    r = rig([[]], stored={2: 9}, assigned={2}, positions={2: 10})
    step = r.it.step()
    assert step is not None and step.results == []
    assert r.log == ["write [] {2: 10}"] and r.handler.applied == []
    assert r.it.step() is not None and len(r.log) == 1  # nothing moved: nothing written


def test_messages_below_the_stored_offsets_are_dropped_not_applied_again() -> None:
    r = rig([[Msg(0, 4), Msg(0, 5)]], stored={0: 5}, assigned={0})
    step = r.it.step()
    assert step is not None and step.dropped == 1 and r.handler.applied == [5]


def test_an_unacknowledged_dead_letter_stores_no_offset_and_rewinds() -> None:
    r = rig([[Msg(0, 5, b"bad"), Msg(0, 6)]], stored={0: 5}, assigned={0})
    r.producer.unacked = 1
    assert r.it.step() is None
    assert r.handler.applied == [] and r.writer.stored == {0: 5}
    assert r.consumer.seeks == [(0, 5)]  # read again from the stored offset


def test_a_refused_batch_is_isolated_and_only_the_poison_is_dead_lettered() -> None:
    r = rig([[Msg(0, 1), Msg(0, 2, b"poison"), Msg(0, 3)]], assigned={0}, isolate=True)
    step = r.it.step()
    assert step is not None and step.results == [[1], [3]] and step.dead_letters == 1
    assert r.handler.applied == [1, 3] and r.handler.letters == ["INVALID"]
    assert r.writer.stored == {0: 4}


def test_more_poison_than_allowed_stops_the_intake() -> None:
    r = rig([[Msg(0, o, b"poison") for o in range(5)]], assigned={0}, isolate=True)
    with pytest.raises(RuntimeError, match="too many events refused"):
        r.it.step()


def test_refused_data_without_isolation_ends_the_loop() -> None:
    r = rig([[Msg(0, 1, b"poison")]], assigned={0})
    with pytest.raises(psycopg.DataError):
        r.it.step()


def test_a_lost_connection_is_counted_reconnected_and_rewound_to_the_stored_offsets() -> None:
    r = rig([[Msg(0, 5), Msg(1, 8)], [Msg(0, 5), Msg(1, 8)]], stored={0: 5, 1: 2}, assigned={0, 1})
    r.writer.fail = [psycopg.OperationalError("server closed the connection unexpectedly")]
    before = P.RECONNECTS.labels("test")._value.get()
    assert r.it.step() is None
    assert P.RECONNECTS.labels("test")._value.get() == before + 1
    assert r.writer.connects == 1 and r.consumer.seeks == [(0, 5), (1, 2)]
    step = r.it.step()  # the batch read again is written once
    assert step is not None and r.handler.applied == [5, 8]


def test_other_operational_errors_are_retried_without_counting_a_reconnect() -> None:
    r = rig([[Msg(0, 5)], [Msg(0, 5)]], stored={0: 5}, assigned={0})
    r.writer.fail = [psycopg.errors.DeadlockDetected("deadlock detected")]
    before = P.RECONNECTS.labels("test")._value.get()
    assert r.it.step() is None and r.consumer.seeks == [(0, 5)]
    assert P.RECONNECTS.labels("test")._value.get() == before
    assert r.it.step() is not None and r.handler.applied == [5]


@pytest.mark.parametrize("cause", ["fatal", "seek"])
def test_a_fatal_consumer_or_a_failed_seek_gets_a_fresh_consumer(cause: str) -> None:
    polls = [[Msg(0, 5, error=KafkaError(KafkaError._FATAL))]] if cause == "fatal" else [[Msg(0, 5)]]
    r = rig(polls, stored={0: 5}, assigned={0})
    if cause == "seek":
        r.writer.fail = [KafkaException(KafkaError(KafkaError._TRANSPORT))]
        r.consumer.seek_error = KafkaException(KafkaError(KafkaError._STATE))
    fresh = Consumer([])
    r.it._new_consumer = lambda: fresh  # type: ignore[method-assign]
    assert r.it.step() is None
    assert r.consumer.closed and r.it.consumer is fresh and r.it.assigned == set()
    assert r.handler.applied == []


def test_a_non_fatal_consumer_error_is_skipped() -> None:
    r = rig([[Msg(0, 5, error=KafkaError(KafkaError._TRANSPORT)), Msg(0, 6)]], assigned={0})
    step = r.it.step()
    assert step is not None and r.handler.applied == [6] and r.it.consumer is r.consumer


def test_the_offsets_migration_the_intake_requires_exists() -> None:
    assert [m.name for m in discover() if m.version == P.OFFSETS_MIGRATION] == ["one_offsets_table"]


def test_a_recovery_cut_short_rewinds_before_the_next_round_consumes() -> None:
    r = rig([[Msg(0, 5)], [Msg(0, 6)]], stored={0: 5}, assigned={0})
    r.writer.fail = [psycopg.OperationalError("server closed the connection unexpectedly")]
    r.it.stop.set()  # stopping while the failed batch waits to be retried
    assert r.it.step() is None and r.consumer.seeks == []
    r.it.stop.clear()  # whoever drives the loop goes on anyway: no skipping ahead
    r.it.step()
    assert r.consumer.seeks == [(0, 5)]
