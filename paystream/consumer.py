"""Reading `ledger.events` from Python: typed ledger events, at least once.

`EventConsumer` is for teams that consume the journal (a read model of their own,
an accounting export, alerts). It reads with `read_committed`, so it only ever sees
events of committed ledger transactions, in each account's order, and it yields
them as `paystream.records.LedgerEvent`s:

    with EventConsumer("accounting-export") as events:
        for event in events:
            store(event)        # idempotent by event["event_id"]
            events.commit()     # after processing: at least once

Delivery is *at least once*: positions are committed only by `commit()`, which
commits everything yielded so far, so whatever was yielded but not committed comes
again after a crash, a restart or a rebalance (an event's `event_id` is stable: make
processing idempotent by it). Committing after every event is simple and slow
(a broker round trip each); committing every N events or every second is the usual
trade.

Records are read with `Codec.decode_typed`, so the writer's record type is known
before anything is trusted. Today `ledger.events` carries single `LedgerEvent`s; a
record of another type (a future envelope this version does not know, or bytes that
are not Avro) is never mistaken for one: it is skipped with a warning and counted
(`unknown="skip"`, the default, positions move past it) or raised as
`UnknownRecordType` / `DecodeError` (`unknown="raise"`).

`OutcomeListener` is what `paystream.producer.Producer` waits with: it reads every
partition from its end, with no consumer group, and hands the terminal event of each
command someone waits for to that waiter.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Literal, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from paystream import kafka, topics
from paystream.codec import Codec, full_name, topic_specs
from paystream.errors import DecodeError, OutcomesUnavailable, UnknownRecordType
from paystream.records import LedgerEvent
from paystream.settings import Settings, get_settings

EVENTS = topics.EVENTS
log = logging.getLogger("paystream.consumer")

Unknown = Literal["skip", "raise"]
# Errors no retry cures: this principal may not read the topic or use the group.
_REFUSED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)


def ledger_event_name() -> str:
    """Full Avro name of the topic's own record type (`io.paystream....LedgerEvent`)."""
    return full_name(topic_specs()[EVENTS].value_schema)


def peek_command_id(data: bytes) -> str | None:
    """The command id of a LedgerEvent without decoding it, or None when the layout
    is not the expected one (then the caller decodes in full).

    After the 5-byte Confluent header come `event_id` and `command_id`, both Avro
    strings of 36 characters: a zig-zag length byte 0x48 followed by the text.
    """
    if len(data) >= 79 and data[5] == 0x48 and data[42] == 0x48:
        try:
            return data[43:79].decode("ascii")
        except UnicodeDecodeError:
            return None
    return None


def events_of(name: str | None, record: dict[str, Any]) -> list[LedgerEvent] | None:
    """The ledger events a record of `ledger.events` carries, or None for a record type
    this version does not know. The one place to teach a new envelope."""
    if name == ledger_event_name():
        return [cast(LedgerEvent, record)]
    return None


def end_positions(consumer: Consumer, topic: str = EVENTS) -> list[TopicPartition]:
    """Every partition of `topic` at its current end (read_committed: the last stable
    offset), for a consumer that must see only what comes after this call."""
    md = consumer.list_topics(topic, timeout=10)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(meta.error if meta is not None else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    out = []
    for p in sorted(meta.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        out.append(TopicPartition(topic, p, high))
    return out


class EventConsumer:
    """Ledger events from `ledger.events` in the consumer group `group` (see the module
    docstring for the delivery guarantee and `commit`).

    `start`: where a group with no committed position begins (`earliest`, the whole
    journal, or `latest`). `unknown`: what to do with a record that is no ledger
    event (skip it, counted in `skipped`, or raise). `config`: further librdkafka
    consumer settings. The principal of `settings` needs READ on `ledger.events` and
    on the group: `paystream consumers add NAME` makes `consumer-NAME`, whose groups
    are `consumer-NAME.<anything>` (docs/SECURITY.md)."""

    def __init__(self, group: str, settings: Settings | None = None, *, codec: Codec | None = None,
                 start: Literal["earliest", "latest"] = "earliest", unknown: Unknown = "skip",
                 max_records: int = 500, config: Mapping[str, Any] | None = None) -> None:
        settings = settings or get_settings()
        self.group = group
        self.codec = codec or Codec(settings.registry_url)
        self.unknown = unknown
        self.max_records = max_records
        self.skipped = 0
        self._pending: dict[int, int] = {}  # partition -> next offset, once processed
        self._consumer = kafka.consumer(settings, group, **{"auto.offset.reset": start, **(config or {})})
        self._consumer.subscribe([EVENTS], on_revoke=self._revoked, on_lost=self._revoked)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member owns them now: what was yielded but not committed comes again there.
        for tp in partitions:
            self._pending.pop(tp.partition, None)

    def __iter__(self) -> Iterator[LedgerEvent]:
        return self.events()

    def events(self, idle_timeout: float | None = None) -> Iterator[LedgerEvent]:
        """Yield events as they come; with `idle_timeout`, stop once none has come for that
        many seconds (a script that reads what is there, then ends)."""
        last = time.monotonic()
        while True:
            wait = 1.0 if idle_timeout is None else max(0.0, min(1.0, last + idle_timeout - time.monotonic()))
            msgs = kafka.consume_ready(self._consumer, self.max_records, wait)
            if not msgs:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                continue
            last = time.monotonic()
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal() or err.code() in _REFUSED:
                        raise KafkaException(err)
                    log.warning("%s: %s", EVENTS, err)  # librdkafka retries the rest itself
                    continue
                yield from self._record(m)

    def _record(self, m: Any) -> Iterator[LedgerEvent]:
        partition, offset = m.partition(), m.offset()
        try:
            name, record = self.codec.decode_typed(EVENTS, m.value())
            events = events_of(name, record)
            if events is None:
                raise UnknownRecordType(f"{name} at {EVENTS}[{partition}]@{offset} is not a ledger event")
        except DecodeError as exc:  # UnknownRecordType, UnknownSchemaError, undecodable bytes
            if self.unknown == "raise":
                raise
            self.skipped += 1
            log.warning("skipping %s[%d]@%d: %s", EVENTS, partition, offset, exc)
            self._pending[partition] = offset + 1
            return
        for i, event in enumerate(events):
            if i == len(events) - 1:
                self._pending[partition] = offset + 1
            yield event

    def commit(self) -> None:
        """Commit the position after every event yielded so far (synchronously): call it
        once they are processed. Nothing yielded since the last commit is lost on a crash;
        it is read again."""
        if not self._pending:
            return
        offsets = [TopicPartition(EVENTS, p, o) for p, o in self._pending.items()]
        self._consumer.commit(offsets=offsets, asynchronous=False)
        self._pending.clear()

    def close(self) -> None:
        """Leave the group without committing (call `commit` first to keep progress)."""
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class OutcomeListener:
    """The terminal event of each command someone waits for, read from `ledger.events`
    in a thread of its own. Every partition is assigned at its end when the listener
    starts, with no group joined or committed, so an outcome of any command sent after
    `start` returns cannot be missed. Only events someone waits for are decoded (their
    command id is peeked from the bytes), so a busy journal costs little."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self._consumer = kafka.consumer(
            # Never joined or committed; named under the principal's own groups all the same
            # (`consumer-NAME.`, docs/SECURITY.md), should the broker check the group.
            settings, f"{settings.kafka_principal}.outcomes-{uuid.uuid4()}",
            **{"fetch.wait.max.ms": 10, "enable.partition.eof": False},
        )
        self._waiters: dict[str, list[Future[LedgerEvent]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paystream-outcomes", daemon=True)
        self._event_name = ledger_event_name()

    def start(self) -> None:
        try:
            self._consumer.assign(end_positions(self._consumer))
        except KafkaException as exc:
            self._consumer.close()
            raise OutcomesUnavailable(
                f"cannot read {EVENTS} to wait for outcomes ({exc.args[0]}); a direct producer's principal "
                "may not read it unless the operator grants it (docs/SECURITY.md)"
            ) from exc
        self._thread.start()

    def expect(self, command_id: str) -> Future[LedgerEvent]:
        """A future for `command_id`'s next terminal event; register before sending."""
        fut: Future[LedgerEvent] = Future()
        with self._lock:
            self._waiters.setdefault(command_id, []).append(fut)
        return fut

    def forget(self, command_id: str, fut: Future[LedgerEvent]) -> None:
        with self._lock:
            waiting = self._waiters.get(command_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[command_id]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = kafka.consume_ready(self._consumer, 500, 0.1)
            except Exception:  # the thread every waiter depends on must not die silently
                log.exception("%s consume failed", EVENTS)
                self._stop.wait(1)
                continue
            for m in msgs:
                if m.error() is None and self._waiters:
                    self._dispatch(m.value())

    def _dispatch(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            if self.codec.writer_name(data) == self._event_name:  # cached per schema id
                cid = peek_command_id(data)
                if cid is not None and cid not in self._waiters:
                    return
            events = events_of(*self.codec.decode_typed(EVENTS, data))
        except DecodeError as exc:
            log.warning("skipping a record of %s: %s", EVENTS, exc)
            return
        for event in events or ():
            if not event["terminal"]:
                continue
            with self._lock:
                waiting = self._waiters.pop(event["command_id"], [])
            for fut in waiting:
                if not fut.done():
                    fut.set_result(event)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        with self._lock:
            waiting = [f for fs in self._waiters.values() for f in fs]
            self._waiters.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(OutcomesUnavailable("the producer was closed"))
        self._consumer.close()
