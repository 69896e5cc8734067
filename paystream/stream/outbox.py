"""The transactional-outbox relay: committed Postgres rows -> Kafka, at least once, in order.

A component that must publish something only if its transaction commits writes an
outbox row in that transaction and sends NOTIFY; this relay publishes the row and
marks it. Two outboxes use it, each with a small `OutboxSpec`:

* `gateway_outbox` (`gateway/outbox.py`, `paystream run outbox-relay`): the
  OpenAccount commands registration writes, each row naming its topic;
* `review_outbox` (`pipelines/fraud/reviews.py`, `paystream run reviews`): admin
  decisions, published as `ReviewDecision`s to fraud.decisions.

What must not differ between them lives here once:

* **Claiming.** Rows are claimed with `FOR UPDATE SKIP LOCKED` (the spec's SQL), so
  several relays share a table without publishing one row concurrently.
* **Marking.** A row is marked published only in the transaction that claimed it and
  only after the broker acknowledged *that row* (flush, then its own delivery report).
  A row that was not acknowledged stays pending with `attempts + 1` and `last_error`,
  and the next round claims it again. A relay killed between the ack and the mark
  republishes after restart: at-least-once, which both consumers absorb (the ledger's
  command id and the decision id are deterministic).
* **Order.** Rows go out in claim order through an idempotent producer (`acks=all`,
  `enable.idempotence`: Kafka keeps per-partition order across retries). When a row is
  not acknowledged, every later row of the batch with the same topic and key stays
  pending too, even if acknowledged, and a row whose earlier same-key row could not
  even be produced is not produced: the next round sends the failed row first, so the
  last copy of each key on the topic follows row order (`settle`).
* **Waking.** Writers NOTIFY the spec's channel in their transaction; a relay waits on
  it between rounds, and polls every `poll_interval` in case a notification was lost
  (or sent while the relay was disconnected). A full batch is followed at once by the
  next round.
* **Outages.** Neither a Postgres restart nor a Kafka (or schema registry) outage
  ends the loop. A lost connection, the work connection's or the LISTEN connection's
  (`paystream.reconnect.connection_lost`), closes both; the relay waits (`Backoff`),
  reconnects, listens again and publishes what accumulated. Rows Kafka did not
  acknowledge stay pending and the next round follows after a backoff; so does a
  round that failed for another reason (logged with its traceback each time).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from confluent_kafka import KafkaError

from paystream import kafka, metrics
from paystream.reconnect import Backoff, connection_lost
from paystream.settings import Settings

log = logging.getLogger("paystream.outbox")

# last_error is for an operator's eyes; a librdkafka or registry message fits easily.
MAX_ERROR_CHARS = 500


def _default_producer_config() -> dict[str, Any]:
    # Shorter than librdkafka's 300 s: a round waits at most this long for an outage
    # before its rows count as failed and the relay backs off (and `BatchPublisher`
    # can replace a producer that librdkafka will not recover).
    return {"message.timeout.ms": 10_000}


@dataclass(frozen=True)
class OutboxSpec:
    """What differs between two outboxes; the relay's guarantees do not.

    The table must have `message_key text`, `payload jsonb`, `published_at`,
    `attempts` and `last_error` (both outbox migrations do).
    """

    name: str
    """Label of `paystream_outbox_published_total{outbox}` and prefix of log lines."""
    table: str
    id_column: str
    """The primary key the claim returns first; marks and failures update by it."""
    claim_sql: str
    """Unpublished rows in publish order as `(id, message_key, payload, ...)`, with one
    `%s` for the batch size, ending `FOR UPDATE SKIP LOCKED`. Any further columns are
    for `topic`."""
    channel: str
    """The NOTIFY channel writers signal in their transaction."""
    topic: Callable[[tuple[Any, ...]], str]
    """Where a claimed row goes (a column of it, or one fixed topic)."""
    encode: Callable[[str, dict[str, Any]], bytes]
    """The Kafka value for (destination topic, payload): the codec, with the schema of
    the topic the payload belongs to."""
    application_name: str
    """Both connections carry it, so `pg_stat_activity` tells an operator (and a test)
    which backends are this relay's."""
    batch_size: int = 100
    poll_interval: float = 0.5
    producer_config: Mapping[str, Any] = field(default_factory=_default_producer_config)
    """On top of `paystream.kafka.producer` (idempotent, acks=all, murmur2)."""
    flush_timeout: float = 15.0
    crash_after_publish: bool = False
    """Test hook (`PAYSTREAM_OUTBOX_FAULT=crash_after_publish`): SIGKILL the process
    after Kafka acknowledged rows and before they are marked, to prove the republish."""


@dataclass(frozen=True)
class OutboxRow:
    id: Any
    topic: str
    key: str
    payload: Any
    """The payload column as fetched; `as_payload` makes it a dict when it is encoded,
    so that a malformed row fails on its own rather than its whole batch."""


@dataclass(frozen=True)
class Settlement:
    """One batch's verdict: which rows are done, and why each other row stays pending."""

    finished: list[Any]
    failed: dict[Any, str]


@dataclass(frozen=True)
class Round:
    """One claim-publish-mark round: `claimed` rows, of which `settlement.failed` stay."""

    claimed: int
    settlement: Settlement


class Publisher(Protocol):
    """The part of `paystream.kafka.BatchPublisher` the relay uses (a fake in tests)."""

    def produce(self, topic: str, *, key: bytes, value: bytes,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None: ...

    def flush(self, timeout: float) -> int: ...


def as_payload(value: Any) -> dict[str, Any]:
    """A jsonb column arrives as a dict; text JSON (a hand-written row) is accepted too."""
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode()
    loaded = json.loads(value)
    if not isinstance(loaded, dict):
        raise ValueError(f"outbox payload is not a JSON object: {type(loaded).__name__}")
    return loaded


def settle(rows: Sequence[OutboxRow], results: Mapping[Any, str | None]) -> Settlement:
    """Which claimed rows may be marked published, given `results` (row id -> None when
    Kafka acknowledged it, else why not; no entry: no delivery report, e.g. a flush
    timeout or a row never produced).

    A row is finished only if it was acknowledged and every earlier row of the batch
    with the same topic and key was finished too. Otherwise a later row of a key could
    be marked while an earlier one is retried, and the retry would put the earlier
    command last on the topic.
    """
    finished: list[Any] = []
    failed: dict[Any, str] = {}
    blocked: dict[tuple[str, str], Any] = {}
    for row in rows:
        lane = (row.topic, row.key)
        if lane in blocked:
            failed[row.id] = f"held back: row {blocked[lane]} of the same key was not acknowledged"
            continue
        error = results.get(row.id, "no delivery report")
        if error is None:
            finished.append(row.id)
        else:
            failed[row.id] = error
            blocked[lane] = row.id
    return Settlement(finished, failed)


def _recorder(results: dict[Any, str | None], row_id: Any) -> Callable[[KafkaError | None, Any], None]:
    def delivered(err: KafkaError | None, _msg: Any) -> None:
        results[row_id] = None if err is None else str(err)

    return delivered


class OutboxRelay:
    """Publishes one outbox table's rows to Kafka (module docstring: the guarantees)."""

    def __init__(self, settings: Settings, spec: OutboxSpec, *, producer: Publisher | None = None,
                 connect: Callable[[], psycopg.Connection[Any]] | None = None) -> None:
        """`producer` and `connect` replace Kafka and Postgres in unit tests."""
        self.settings = settings
        self.spec = spec
        self.producer: Publisher = producer or kafka.BatchPublisher(
            lambda: kafka.producer(settings, **spec.producer_config))
        self.connect = connect or self._connect
        # How long to wait before reconnecting after a lost connection, and before the
        # next round after one that failed (Kafka or the registry down, a failing
        # statement). Each is reset once a round has gone through again.
        self.reconnect_backoff = Backoff()
        self.retry_backoff = Backoff()
        self._mark = (f"UPDATE {spec.table} SET published_at = now(), attempts = attempts + 1"
                      f" WHERE {spec.id_column} = ANY(%s)")
        self._fail = (f"UPDATE {spec.table} SET attempts = attempts + 1, last_error = %s"
                      f" WHERE {spec.id_column} = %s")

    def _connect(self) -> psycopg.Connection[Any]:
        # autocommit: a claim opens its own transaction (`conn.transaction()`), and the
        # connection is never left idle in one between rounds.
        return psycopg.connect(self.settings.postgres_dsn, autocommit=True,
                               application_name=self.spec.application_name)

    def _produce_all(self, rows: Sequence[OutboxRow]) -> dict[Any, str | None]:
        """Produce the rows in order, flush, and return each row's delivery result.

        A row that cannot be encoded or handed to the producer (registry down, queue
        full) fails on its own, and later rows of its key are not produced: they would
        reach the topic before it.
        """
        results: dict[Any, str | None] = {}
        stopped: set[tuple[str, str]] = set()
        for row in rows:
            lane = (row.topic, row.key)
            if lane in stopped:
                continue
            try:
                value = self.spec.encode(row.topic, as_payload(row.payload))
                self.producer.produce(row.topic, key=row.key.encode(), value=value,
                                      on_delivery=_recorder(results, row.id))
            except Exception as exc:
                results[row.id] = f"not produced: {type(exc).__name__}: {exc}"
                stopped.add(lane)
        self.producer.flush(self.spec.flush_timeout)
        return results

    def publish_batch(self, conn: psycopg.Connection[Any]) -> Round:
        """Claim up to `batch_size` rows, publish them, and mark those acknowledged, all
        in one transaction; rows not acknowledged get `attempts + 1` and `last_error`."""
        spec = self.spec
        with conn.transaction():
            claimed = conn.execute(spec.claim_sql, (spec.batch_size,)).fetchall()
            if not claimed:
                return Round(0, Settlement([], {}))
            rows = [OutboxRow(r[0], spec.topic(tuple(r)), r[1], r[2]) for r in claimed]
            settlement = settle(rows, self._produce_all(rows))
            if settlement.finished and spec.crash_after_publish:
                log.warning("fault injection: dying after publishing %d rows, before marking them",
                            len(settlement.finished))
                os.kill(os.getpid(), signal.SIGKILL)
            if settlement.finished:
                conn.execute(self._mark, (settlement.finished,))
            if settlement.failed:
                conn.cursor().executemany(
                    self._fail, [(err[:MAX_ERROR_CHARS], rid) for rid, err in settlement.failed.items()])
        if settlement.finished:  # counted once the marks committed
            metrics.OUTBOX_PUBLISHED.labels(spec.name).inc(len(settlement.finished))
        if settlement.failed:
            log.warning("%s outbox: %d of %d rows not acknowledged; will retry (first: %s)", spec.name,
                        len(settlement.failed), len(rows), next(iter(settlement.failed.values())))
        return Round(len(rows), settlement)

    def drain(self, timeout: float = 30) -> None:
        """Publish until nothing is pending or `timeout` has passed (the HTTP
        benchmark's setup: its new accounts' OpenAccount commands, without a relay
        process)."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while time.monotonic() < deadline:
                done = self.publish_batch(conn)
                if not done.claimed:
                    return
                if done.settlement.failed:
                    time.sleep(min(self.retry_backoff.next(), max(0.0, deadline - time.monotonic())))
                else:
                    self.retry_backoff.reset()

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop`. A lost Postgres connection is waited out (capped
        backoff, reconnect, LISTEN again), as in `paystream.stream.pg_intake`; only a
        connection that cannot be opened for another reason (a refused login, a wrong
        database) ends the loop, since retrying could not fix it."""
        name = self.spec.name
        lost = False
        log.info("%s outbox relay started", name)
        try:
            while not stop.is_set():
                try:
                    with self.connect() as listen, self.connect() as conn:
                        listen.execute(f"LISTEN {self.spec.channel}")
                        if lost:
                            log.info("%s outbox relay: postgres is back", name)
                            lost = False
                        self._serve(conn, listen, stop)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if not connection_lost(exc):
                        raise
                    lost = True
                    delay = self.reconnect_backoff.next()
                    log.warning("%s outbox relay: postgres unavailable (%s); retrying in %.1fs", name, exc, delay)
                    stop.wait(delay)
        finally:
            self.producer.flush(10)
            log.info("%s outbox relay stopped", name)

    def _serve(self, conn: psycopg.Connection[Any], listen: psycopg.Connection[Any],
               stop: threading.Event) -> None:
        """Rounds on one pair of connections until `stop`; a lost connection (either
        one) propagates to `run`, which reconnects."""
        while not stop.is_set():
            try:
                done = self.publish_batch(conn)
            except Exception as exc:
                if connection_lost(exc):
                    raise
                delay = self.retry_backoff.next()
                log.exception("%s outbox batch failed; retrying in %.1fs", self.spec.name, delay)
                stop.wait(delay)
                continue
            self.reconnect_backoff.reset()  # a round went through: the connection works
            if done.settlement.failed:
                stop.wait(self.retry_backoff.next())
                continue
            self.retry_backoff.reset()
            if done.claimed >= self.spec.batch_size:
                continue  # a full batch: more may be waiting
            for _ in listen.notifies(timeout=self.spec.poll_interval, stop_after=1):
                pass
