"""Kafka into Postgres exactly once: the one intake of the sink, the reviews and the webhooks.

Three components turn a topic into Postgres rows: the read-model sink
(`sinks/postgres_sink.py`, ledger.events), the review queue's alert intake
(`pipelines/fraud/reviews.py`, fraud.alerts) and the webhooks' notification intake
(`pipelines/notifications/webhooks.py`, notifications). They run this one loop. Each
plugs in an `IntakeHandler` (how a message decodes, how a batch becomes rows) and an
`IntakeSpec` (topic, group, offsets owner, consumer tuning, whether refused data is
isolated); what must not differ between them lives here once:

* **Rows and offsets in one transaction.** Each polled batch is written in ONE
  Postgres transaction together with the next offset of every partition it read,
  in `sink_offsets` (every intake's table since migration 0005; its `consumer`
  column is the intake's name). A crash at any point leaves either the whole batch
  and its offsets, or neither.
* **Postgres is the position.** On every (re)assignment, and after every failed
  batch, the consumer seeks to the offsets stored in Postgres (the beginning if
  none). Kafka's committed group offsets are written afterwards, asynchronously,
  only so that standard tooling shows lag; nothing reads them back.
* **Fencing.** Each transaction locks its partitions' offset rows and drops the
  messages below the stored offsets, so an instance still holding a partition after
  a rebalance (a zombie) applies nothing twice, and the upsert (GREATEST) never moves
  an offset backwards. Handlers still insert idempotently (deterministic keys, ON
  CONFLICT DO NOTHING): a second guard, and the only one for a partition's very first
  batch, whose offset row does not exist yet to be locked.
* **Positions, not last offsets.** Under read_committed the consumer's position moves
  past transaction markers and aborted records; that position is stored, so an idle
  intake's lag is exactly 0 (and `paystream verify --wait` can tell the sink is done).
* **Dead letters before offsets.** A message the handler rejects goes to
  paystream.dlq, acknowledged before the offset that passes it commits. With
  `IntakeSpec.isolate` (the sink), a batch Postgres refuses for its data is written
  message by message and the few refused messages are dead-lettered; more than
  `max_poison_per_batch` in one batch stops the intake, since that smells of a bug or
  a schema mismatch rather than bad data.
* **Outages are waited out.** A lost Postgres connection, another operational
  Postgres error (deadlock, cancelled statement, disk full), a Kafka error or an OS
  error ends the batch, not the loop: the intake waits (`Backoff`), reconnects, and
  rewinds every assigned partition to the stored offsets (the failed batch was not
  written). A consumer that failed fatally, or that cannot seek, is replaced by a
  fresh one, which seeks from Postgres when it is assigned. (Seen under `paystream
  chaos`: after a broker restart a static member whose session had timed out got
  FENCED_INSTANCE_ID for a stale commit, which librdkafka reports with code `_FATAL`
  but without its fatal flag, and the sink idled forever with nothing assigned.)
  Anything else, a programming error or data Postgres refuses without isolation,
  ends the loop, so the supervisor and the logs show it.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter

from paystream import kafka, metrics
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC, dead_letter
from paystream.reconnect import Backoff, connection_lost
from paystream.settings import Settings

log = logging.getLogger("paystream.intake")

# The one offsets table. It kept the read model's name (docs/CONTRACTS.md documents it
# as the read model's position) when migration 0005 moved the reviews' and webhooks'
# positions into it; OFFSETS_MIGRATION is that migration, which an intake requires.
OFFSETS_TABLE = "sink_offsets"
OFFSETS_MIGRATION = 5

RECONNECTS = Counter(
    "paystream_pgconsumer_reconnects_total",
    "times an intake lost its Postgres connection and waited it out", ["consumer"],
)

# Failures that end a batch but not the loop (see the module docstring).
RECOVERABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError, psycopg.InterfaceError, KafkaException, OSError,
)

T = TypeVar("T")
R = TypeVar("R")

_CHECK_TABLES = (
    "SELECT to_regclass('sink_offsets') IS NOT NULL, to_regclass('schema_migrations') IS NOT NULL"
)
_CHECK_MIGRATION = "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = %s)"
_STORED = "SELECT partition, next_offset FROM sink_offsets WHERE consumer = %s AND topic = %s"
_STORED_SOME = _STORED + " AND partition = ANY(%s)"
_LOCK = _STORED_SOME + " ORDER BY partition FOR UPDATE"
_UPSERT = """
INSERT INTO sink_offsets (consumer, topic, partition, next_offset, updated_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()
"""


# ------------------------------------------------------------------ the offsets table


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database whose offsets are not in the one table yet. Without migration
    0005 the reviews' and webhooks' positions are still in their old table, and an
    intake that looked for them here would find none and replay its topic from the
    beginning: an error to fix (`paystream db migrate`), not a state to start in."""
    row = conn.execute(_CHECK_TABLES).fetchone()
    ready = False
    if row is not None and row[0] and row[1]:
        done = conn.execute(_CHECK_MIGRATION, (OFFSETS_MIGRATION,)).fetchone()
        ready = bool(done and done[0])
    if not ready:
        raise RuntimeError(
            f"the offsets table {OFFSETS_TABLE} is missing or not migrated"
            f" (migration {OFFSETS_MIGRATION:04d}): run `paystream db migrate`"
        )


def stored_offsets(
    conn: psycopg.Connection[Any], consumer: str, topic: str, partitions: Collection[int] | None = None
) -> dict[int, int]:
    """partition -> next offset to read, as `consumer` last committed it with its rows."""
    if partitions is None:
        rows = conn.execute(_STORED, (consumer, topic)).fetchall()
    else:
        rows = conn.execute(_STORED_SOME, (consumer, topic, sorted(partitions))).fetchall()
    return {int(p): int(o) for p, o in rows}


def all_positions(conn: psycopg.Connection[Any]) -> dict[str, dict[tuple[str, int], int]]:
    """consumer -> (topic, partition) -> next offset, for every intake (operator tools)."""
    out: dict[str, dict[tuple[str, int], int]] = {}
    for c, t, p, o in conn.execute(
        "SELECT consumer, topic, partition, next_offset FROM sink_offsets"
    ).fetchall():
        out.setdefault(str(c), {})[(str(t), int(p))] = int(o)
    return out


def forget_offsets(conn: psycopg.Connection[Any], consumer: str, topic: str) -> None:
    """Delete `consumer`'s positions on `topic`: its next start reads from the beginning.
    Only for a rebuild that empties the rows in the same transaction."""
    conn.execute("DELETE FROM sink_offsets WHERE consumer = %s AND topic = %s", (consumer, topic))


# -------------------------------------------------------------------------- the plug


@dataclass(frozen=True)
class Item(Generic[T]):
    """One decoded message: where it was read and what the handler made of it."""

    partition: int
    offset: int
    value: T
    message: Message | None = None  # None when the value did not come from this loop (reprocess)


@dataclass(frozen=True)
class Reject:
    """`IntakeHandler.decode`'s answer for a message that must not be written: it goes
    to the dead-letter topic with this reason, and the offset moves past it."""

    code: str  # the dead letter's reason_code: UNDECODABLE, UNKNOWN_SCHEMA, INVALID, ...
    reason: str


class IntakeHandler(ABC, Generic[T, R]):
    """What a user of the intake plugs in. Everything runs on the intake's thread."""

    @abstractmethod
    def decode(self, message: Message) -> T | Reject | None:
        """The value to write; a `Reject` to dead-letter the message; None to skip it
        (the handler has logged why). Runs before the batch's transaction, so that a
        dead letter is acknowledged before the offset that passes it commits."""

    @abstractmethod
    def apply(self, conn: psycopg.Connection[Any], items: list[Item[T]]) -> R:
        """Write the rows of `items` on `conn`, inside the batch's transaction (the
        offsets follow in it). Never called with no items; every item is at or above
        its partition's stored offset. The result is handed back by `PgIntake.step`."""

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Session setup on every new connection (temp tables), before any batch."""

    def dead_lettered(self, letter: Mapping[str, Any]) -> None:
        """A dead letter of this intake was produced: count it."""


@dataclass(frozen=True)
class IntakeSpec:
    """Where an intake reads, who it is, and how its consumer is tuned."""

    name: str  # the offsets owner (`consumer` in sink_offsets), the log prefix, the metrics label
    topic: str
    group: str  # the Kafka group: spreads partitions among instances writing one database
    dsn: str
    component: str  # the `component` of its dead letters
    application_name: str  # its Postgres connection's, for pg_stat_activity
    batch_size: int = 500
    poll_timeout: float = 0.2
    consumer_config: Mapping[str, Any] = field(default_factory=dict)  # extra librdkafka settings
    instance: str | None = None  # static group membership under `<group>-<instance>`
    commit_to_kafka: bool = True  # the informational Kafka commit (off for benchmarks)
    # Postgres errors that mean "this data", not "this connection": with any, a refused
    # batch is written message by message and the refused ones are dead-lettered.
    isolate: tuple[type[BaseException], ...] = ()
    max_poison_per_batch: int = 3


def worker_group(name: str) -> str:
    """The Kafka group of a worker's intake (`paystream run reviews`: paystream-reviews)."""
    return f"paystream-{name}"


def worker_spec(settings: Settings, name: str, topic: str, **tuning: Any) -> IntakeSpec:
    """The spec of a worker's intake: named after the worker (its offsets owner, group
    `paystream-<name>`, connection `paystream-<name>`, dead letters from `<name>`),
    with the consumer statistics that report its Kafka lag."""
    return IntakeSpec(
        name=name, topic=topic, group=worker_group(name), dsn=settings.postgres_dsn, component=name,
        application_name=f"paystream-{name}", consumer_config=metrics.consumer_stats_config(name, settings),
        **tuning,
    )  # fmt: skip


# ----------------------------------------------------------------------- the writer


@dataclass(frozen=True)
class Written(Generic[R]):
    """One committed transaction: the handler's result (None when no item was at or
    above the stored offsets) and how many items were dropped for being below them."""

    result: R | None
    dropped: int


class PgBatchWriter:
    """One Postgres connection, and the transaction that writes a batch's rows together
    with the offsets that pass them."""

    def __init__(
        self, dsn: str, consumer: str, topic: str, *, application_name: str,
        prepare: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:  # fmt: skip
        self.dsn = dsn
        self.consumer = consumer
        self.topic = topic
        self.application_name = application_name
        self.prepare = prepare
        self.conn: psycopg.Connection[Any] | None = None

    def connect(self) -> None:
        """A fresh connection (autocommit: each batch opens its own transaction), on a
        database whose offsets are migrated, prepared by the handler."""
        self.close()
        conn = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=5, application_name=self.application_name
        )
        try:
            check_schema(conn)
            if self.prepare is not None:
                self.prepare(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def connect_with_retry(self, stop: threading.Event | None = None) -> bool:
        """Connect, retrying with capped exponential backoff: a Postgres restart is an
        outage to wait out, not a reason to exit. False if `stop` was set first."""
        backoff = Backoff()
        while True:
            try:
                self.connect()
                return True
            except psycopg.OperationalError as exc:
                if stop is not None and stop.is_set():
                    return False
                delay = backoff.next()
                log.warning("%s: postgres unavailable (%s); retrying in %.1fs", self.consumer, exc, delay)
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)

    def close(self) -> None:
        if self.conn is not None:
            with suppress(Exception):
                self.conn.close()
            self.conn = None

    def _c(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            raise psycopg.OperationalError("not connected")
        return self.conn

    def stored_offsets(self) -> dict[int, int]:
        return stored_offsets(self._c(), self.consumer, self.topic)

    def write(
        self, items: Sequence[Item[T]], next_offsets: Mapping[int, int],
        apply: Callable[[psycopg.Connection[Any], list[Item[T]]], R],
    ) -> Written[R]:  # fmt: skip
        """Apply `items` and advance the offsets to `next_offsets`, all or nothing."""
        conn = self._c()
        # Lock only this batch's partitions: instances sharing the group work on
        # disjoint partitions and must not serialize on each other.
        parts = sorted({it.partition for it in items} | set(next_offsets))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_LOCK, (self.consumer, self.topic, parts))
            stored = {int(p): int(o) for p, o in cur.fetchall()}
            # below the stored offset: another instance (or an earlier run) wrote it
            fresh = [it for it in items if it.offset >= stored.get(it.partition, -1)]
            result = apply(conn, fresh) if fresh else None
            for p, o in sorted(next_offsets.items()):
                if o > stored.get(p, -1):
                    cur.execute(_UPSERT, (self.consumer, self.topic, p, o))
        return Written(result, len(items) - len(fresh))


# ------------------------------------------------------------------------- the loop


@dataclass
class Batch(Generic[T]):
    """One poll, decoded: the items in per-partition order, where each partition
    resumes, and the dead letters of the messages the handler rejected."""

    items: list[Item[T]] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    letters: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Step(Generic[R]):
    """What one poll-decode-write round committed."""

    results: list[R] = field(default_factory=list)  # one per transaction that applied items
    dropped: int = 0  # items below the stored offsets
    dead_letters: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    seconds: float | None = None  # time spent writing; None when there was nothing to write


class Stopped(Exception):
    """Stop was requested while waiting for Postgres: the round ends without writing."""


def is_fatal(err: KafkaError) -> bool:
    """librdkafka reports a fatal error as an event with code _FATAL whose own fatal
    flag is not always set."""
    return bool(err.fatal() or err.code() == KafkaError._FATAL)


def letter_for(m: Message, reject: Reject, *, topic: str, component: str) -> dict[str, Any]:
    """The dead letter of a message: its original key, value, timestamp and headers."""
    ts_type, ts_ms = m.timestamp()
    return dead_letter(
        component=component, reason_code=reject.code, reason=reject.reason, topic=topic,
        partition=m.partition() or 0, offset=m.offset() or 0, key=m.key(), value=m.value(),
        timestamp_ms=ts_ms if ts_type else None, headers=list(m.headers() or []),
    )  # fmt: skip


def decode_batch(
    messages: Sequence[Message], decode: Callable[[Message], T | Reject | None], *, topic: str, component: str
) -> Batch[T]:
    """Decode a poll. A fatal consumer error raises (the intake replaces its consumer);
    other consumer errors are logged and skipped, as librdkafka retries them itself."""
    batch: Batch[T] = Batch()
    for m in messages:
        err = m.error()
        if err is not None:
            if is_fatal(err):
                raise KafkaException(err)
            log.warning("%s: consumer error: %s", component, err)
            continue
        p, o = m.partition(), m.offset()
        assert p is not None and o is not None
        batch.next_offsets[p] = o + 1
        out = decode(m)
        if isinstance(out, Reject):
            batch.letters.append(letter_for(m, out, topic=topic, component=component))
        elif out is not None:
            batch.items.append(Item(p, o, out, m))
    return batch


class PgIntake(Generic[T, R]):
    """The consumer loop: poll, decode, dead-letter, write rows and offsets, repeat.

    Run it with `run(stop)` (the workers' threads), or drive it with `start`, `step`
    and `close` (the sink, which keeps its own metrics and rate log around each step).
    """

    def __init__(self, settings: Settings, spec: IntakeSpec, handler: IntakeHandler[T, R], codec: Codec) -> None:
        self.settings = settings
        self.spec = spec
        self.handler = handler
        self.codec = codec  # encodes the dead letters
        self.writer = PgBatchWriter(spec.dsn, spec.name, spec.topic, application_name=spec.application_name,
                                    prepare=handler.prepare)  # fmt: skip
        self.stop = threading.Event()
        self.consumer: Consumer | None = None
        self.assigned: set[int] = set()
        self.stored: dict[int, int] = {}  # what Postgres holds, as far as this process knows
        self._dlq: Producer | None = None
        self._failures = Backoff()
        self._assign_failed = False
        # A batch failed and the consumer is not back at the stored offsets yet: no
        # round may consume before it is (it would read on after what was not written).
        self._rewind_pending = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> bool:
        """Connect to Postgres (waiting out an outage) and subscribe. False if stopped first."""
        if not self.writer.connect_with_retry(self.stop):
            return False
        self.consumer = self._new_consumer()
        return True

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until `stop` (this intake's own event if none is given) is set."""
        if stop is not None:
            self.stop = stop
        try:
            if self.start():
                while not self.stop.is_set():
                    self.step()
        finally:
            self.close()

    def close(self) -> None:
        if self.consumer is not None:
            with suppress(Exception):
                self.consumer.close()
            self.consumer = None
        if self._dlq is not None:
            self._dlq.flush(10)
        self.writer.close()

    # -- kafka -------------------------------------------------------------------------
    def _new_consumer(self) -> Consumer:
        extra = dict(self.spec.consumer_config)
        if self.spec.instance:
            # Static membership: a restarted instance takes its partitions back at
            # once instead of waiting for the dead member's session to expire.
            extra["group.instance.id"] = f"{self.spec.group}-{self.spec.instance}"
        c = kafka.consumer(self.settings, self.spec.group, **extra)
        c.subscribe([self.spec.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._assign_failed = False
        return c

    def _replace_consumer(self) -> None:
        if self.consumer is not None:
            with suppress(Exception):
                self.consumer.close()
        self.assigned.clear()
        self.consumer = self._new_consumer()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            stored = self._stored_offsets_with_retry()
            for tp in partitions:
                tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
            consumer.assign(partitions)
        except BaseException:
            # The client then assigns on its own, at Kafka's committed offsets, which
            # are only advisory: this consumer must not fetch another batch.
            self._assign_failed = True
            raise
        self.assigned.update(tp.partition for tp in partitions)
        self.stored.update(stored)
        log.info(
            "%s assigned %s at %s", self.spec.name,
            sorted(tp.partition for tp in partitions), {tp.partition: tp.offset for tp in partitions},
        )  # fmt: skip

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard(tp.partition)
        log.info("%s revoked %s", self.spec.name, sorted(tp.partition for tp in partitions))

    def _stored_offsets_with_retry(self) -> dict[int, int]:
        backoff = Backoff()
        while True:
            try:
                return self.writer.stored_offsets()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("%s: cannot read stored offsets (%s); reconnecting", self.spec.name, exc)
                if self.stop.wait(backoff.next()) or not self.writer.connect_with_retry(self.stop):
                    raise Stopped from exc

    # -- one round ---------------------------------------------------------------------
    def step(self) -> Step[R] | None:
        """One poll-decode-write round: what it committed, or None after a failure that
        was recovered from (or when stopping interrupted it)."""
        assert self.consumer is not None
        try:
            if self._rewind_pending:  # a recovery that stopping or a new failure cut short
                self._rewind()
            msgs = kafka.consume_ready(self.consumer, self.spec.batch_size, self.spec.poll_timeout)
            batch = decode_batch(msgs, self.handler.decode, topic=self.spec.topic, component=self.spec.component)
            self._positions(batch)
            if not batch.items and not batch.next_offsets:
                return Step()
            self._send_letters(batch.letters)
            t0 = time.perf_counter()
            step = self._write(batch)
            step.seconds = time.perf_counter() - t0
        except Stopped:
            return None
        except RECOVERABLE as exc:
            log.warning("%s: batch failed (%s: %s); recovering", self.spec.name, type(exc).__name__, exc)
            with suppress(Stopped):
                self._recover(exc)
            return None
        step.dead_letters += len(batch.letters)
        step.next_offsets = batch.next_offsets
        self._committed(batch.next_offsets)
        return step

    def _positions(self, batch: Batch[T]) -> None:
        """Also store positions that moved past transaction markers or aborted records,
        so an idle intake reports zero lag."""
        assert self.consumer is not None
        if not self.assigned:
            return
        topic = self.spec.topic
        for tp in self.consumer.position([TopicPartition(topic, p) for p in sorted(self.assigned)]):
            if tp.offset >= 0 and tp.offset > batch.next_offsets.get(tp.partition, -1):
                batch.next_offsets[tp.partition] = tp.offset
        for p, o in list(batch.next_offsets.items()):
            if o <= self.stored.get(p, -1):
                del batch.next_offsets[p]

    def _send_letters(self, letters: list[dict[str, Any]]) -> None:
        """Dead letters must be durable before the offset that skips them is stored."""
        if not letters:
            return
        if self._dlq is None:
            self._dlq = kafka.producer(self.settings)
        for d in letters:
            log.warning("dead-lettering %s[%s]@%s: %s", d["source_topic"], d["source_partition"],
                        d["source_offset"], d["reason"])  # fmt: skip
            self._dlq.produce(DLQ_TOPIC, key=d["key"], value=self.codec.encode(DLQ_TOPIC, d))
            self.handler.dead_lettered(d)
        if self._dlq.flush(30) != 0:
            raise KafkaException("dead letters not acknowledged within 30s")

    def _write(self, batch: Batch[T]) -> Step[R]:
        try:
            w = self.writer.write(batch.items, batch.next_offsets, self.handler.apply)
        except self.spec.isolate as exc:
            log.error("%s: batch refused by postgres (%s); isolating the event that causes it", self.spec.name, exc)
            return self._write_isolating(batch)
        return Step(results=[] if w.result is None else [w.result], dropped=w.dropped)

    def _write_isolating(self, batch: Batch[T]) -> Step[R]:
        """Write item by item; dead-letter the few Postgres refuses. Many refusals mean
        a bug or a schema mismatch, not bad data: stop rather than drain the topic into
        the dead-letter topic."""
        step: Step[R] = Step()
        poisoned = 0
        for it in batch.items:
            try:
                w = self.writer.write([it], {it.partition: it.offset + 1}, self.handler.apply)
            except self.spec.isolate as exc:
                poisoned += 1
                if poisoned > self.spec.max_poison_per_batch:
                    raise RuntimeError("too many events refused by postgres; stopping") from exc
                assert it.message is not None
                letter = letter_for(it.message, Reject("INVALID", f"postgres refused: {exc}"),
                                    topic=self.spec.topic, component=self.spec.component)  # fmt: skip
                self._send_letters([letter])
                step.dead_letters += 1
                w = self.writer.write([], {it.partition: it.offset + 1}, self.handler.apply)
            if w.result is not None:
                step.results.append(w.result)
            step.dropped += w.dropped
        self.writer.write([], batch.next_offsets, self.handler.apply)
        return step

    def _committed(self, next_offsets: dict[int, int]) -> None:
        self.stored.update(next_offsets)
        self._failures.reset()  # a batch committed: Postgres and Kafka work
        if self.spec.commit_to_kafka and next_offsets and self.consumer is not None:
            # Informational only (lag in standard Kafka tooling); never read back.
            with suppress(KafkaException):
                self.consumer.commit(
                    offsets=[TopicPartition(self.spec.topic, p, o) for p, o in next_offsets.items()],
                    asynchronous=True,
                )

    # -- recovery ----------------------------------------------------------------------
    def _recover(self, exc: BaseException) -> None:
        """After a failed batch: wait (backoff over consecutive failures), then rewind."""
        self._rewind_pending = True
        lost = connection_lost(exc)
        if lost:
            RECONNECTS.labels(self.spec.name).inc()
        err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(err, KafkaError) and is_fatal(err):
            self._assign_failed = True  # the consumer will never fetch again: replace it
        if self.stop.wait(self._failures.next()):
            return  # stopping: the next start seeks from Postgres anyway
        self._rewind(lost)

    def _rewind(self, lost: bool = False) -> None:
        """Reconnect to Postgres, then put every assigned partition back at the offset
        Postgres holds (the failed batch was not written). The consumer is replaced
        instead when it failed fatally or its assignment went wrong, and when a seek
        fails (a partition not fetching yet cannot be seeked); a fresh consumer seeks
        everything from Postgres in its assignment callback."""
        if not self.writer.connect_with_retry(self.stop):
            return  # stopping
        if lost:
            log.info("%s: postgres is back", self.spec.name)
        self.stored = self._stored_offsets_with_retry()
        assert self.consumer is not None
        if self._assign_failed:
            log.warning("%s: the Kafka consumer failed; recreating it", self.spec.name)
            self._replace_consumer()
        else:
            try:
                for p in sorted(self.assigned):
                    self.consumer.seek(TopicPartition(self.spec.topic, p, self.stored.get(p, OFFSET_BEGINNING)))
                log.info("%s rewound to %s", self.spec.name,
                         {p: self.stored.get(p, "beginning") for p in sorted(self.assigned)})  # fmt: skip
            except KafkaException as exc:
                log.warning("%s: seek failed (%s); recreating the consumer", self.spec.name, exc)
                self._replace_consumer()
        self._rewind_pending = False
