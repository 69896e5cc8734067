"""The Postgres read model, written exactly once: `paystream run sink`.

Consumes `ledger.events` (read_committed) and writes each polled batch in ONE
Postgres transaction together with the next offset of every partition it read
(`sink_offsets`). Postgres, not Kafka, is the source of truth for the position:
on every (re)assignment the consumer seeks to the stored offsets, so after a
`kill -9` or a lost database connection the sink resumes exactly after the
last committed batch. Two more guards make a replay harmless anyway:

* events are inserted with ON CONFLICT DO NOTHING ... RETURNING, and balance
  deltas, payment and account changes are folded from the returned (new)
  events only (`sinks.read_model.fold`);
* each transaction locks its partitions' offset rows and drops messages below
  the stored offset, so a zombie instance still holding a partition after a
  rebalance cannot apply anything twice or move the offset backwards.

Undecodable messages go to the dead-letter topic, flushed before the offset that
passes them is committed. Metrics (lag per partition, rows written) are served
for Prometheus on `settings.sink_metrics_port`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from psycopg.conninfo import conninfo_to_dict

from paystream import kafka, topics
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC, dead_letter
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.reconnect import Backoff
from paystream.settings import Settings, get_settings
from sinks import read_model as rm

TOPIC = topics.EVENTS
COMPONENT = "sink"
MAX_POISON_PER_BATCH = 3
log = logging.getLogger("paystream.sink")

EVENTS_WRITTEN = Counter("paystream_sink_events_total", "ledger events inserted into Postgres")
POSTINGS_WRITTEN = Counter("paystream_sink_postings_total", "postings inserted into Postgres")
ROWS_WRITTEN = Counter("paystream_sink_rows_total", "rows inserted or updated", ["table"])
SKIPPED = Counter("paystream_sink_skipped_total", "events already in Postgres (replays)")
DEAD_LETTERS = Counter("paystream_sink_dead_letters_total", "messages sent to the DLQ", ["reason"])
RECOVERIES = Counter("paystream_sink_recoveries_total", "reconnects and re-seeks after a failure")
LAG = Gauge("paystream_sink_lag", "high watermark minus stored next offset", ["partition"])
BATCH_SECONDS = Histogram(
    "paystream_sink_batch_seconds", "time to write one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip

# Postgres errors that are about the data, not the connection: retrying the same
# batch would fail forever, so the poison event is isolated and dead-lettered.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    UnicodeEncodeError,
)


@dataclass
class Batch:
    """Decoded events of one poll, in per-partition order, and where to resume."""

    events: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class WriteResult:
    inserted: int = 0
    skipped: int = 0
    postings: int = 0
    accounts: int = 0
    payments: int = 0
    audit: int = 0


_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE ledger_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_payments (LIKE payments) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_accounts (
    account_id uuid, kind text, currency text, external_number text, owner_id text,
    opened_at timestamptz, status text, status_sequence bigint, delta bigint, creates boolean,
    last_sequence bigint, updated_at timestamptz) ON COMMIT DELETE ROWS;
"""
_COLS = ", ".join(rm.EVENT_COLUMNS)
_INSERT_EVENTS = (
    f"INSERT INTO ledger_events ({_COLS}) SELECT {_COLS} FROM stage_events "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id::text"
)
_TAKEN_NUMBERS = """
SELECT s.account_id::text, s.external_number FROM stage_accounts s
JOIN accounts x ON x.external_number = s.external_number AND x.account_id <> s.account_id
"""
_UPSERT_ACCOUNTS = """
INSERT INTO accounts AS a (account_id, external_number, owner_id, currency, kind, status,
                           status_sequence, balance, last_sequence, opened_at, updated_at)
SELECT s.account_id,
       CASE WHEN NOT EXISTS (SELECT 1 FROM accounts x WHERE x.external_number = s.external_number
                             AND x.account_id <> s.account_id) THEN s.external_number END,
       s.owner_id, s.currency, s.kind, s.status, s.status_sequence, s.delta, s.last_sequence,
       s.opened_at, s.updated_at
FROM stage_accounts s WHERE s.creates ORDER BY s.account_id
ON CONFLICT (account_id) DO UPDATE SET
    balance = a.balance + EXCLUDED.balance,
    external_number = COALESCE(a.external_number, EXCLUDED.external_number),
    owner_id = COALESCE(a.owner_id, EXCLUDED.owner_id),
    currency = COALESCE(a.currency, EXCLUDED.currency),
    kind = CASE WHEN a.opened_at IS NULL AND EXCLUDED.opened_at IS NOT NULL
                THEN EXCLUDED.kind ELSE a.kind END,
    status = CASE WHEN EXCLUDED.status_sequence > COALESCE(a.status_sequence, -1)
                  THEN EXCLUDED.status ELSE a.status END,
    status_sequence = GREATEST(a.status_sequence, EXCLUDED.status_sequence),
    last_sequence = GREATEST(a.last_sequence, EXCLUDED.last_sequence),
    opened_at = COALESCE(a.opened_at, EXCLUDED.opened_at),
    updated_at = GREATEST(a.updated_at, EXCLUDED.updated_at)
"""
_UPDATE_ACCOUNTS = """
UPDATE accounts a SET
    status = CASE WHEN s.status_sequence > COALESCE(a.status_sequence, -1)
                  THEN s.status ELSE a.status END,
    status_sequence = GREATEST(a.status_sequence, s.status_sequence),
    last_sequence = GREATEST(a.last_sequence, s.last_sequence),
    updated_at = GREATEST(a.updated_at, s.updated_at)
FROM stage_accounts s WHERE NOT s.creates AND a.account_id = s.account_id
"""
# Same rule as `read_model.merge_payment`: higher rank wins, ties keep what is known.
_UPSERT_PAYMENTS = """
INSERT INTO payments AS p SELECT * FROM stage_payments ORDER BY payment_id
ON CONFLICT (payment_id) DO UPDATE SET
    status = CASE WHEN payment_status_rank(EXCLUDED.status) > payment_status_rank(p.status)
                  THEN EXCLUDED.status ELSE p.status END,
    reason = CASE WHEN payment_status_rank(EXCLUDED.status) > payment_status_rank(p.status)
                  THEN EXCLUDED.reason ELSE p.reason END,
    from_account = COALESCE(p.from_account, EXCLUDED.from_account),
    to_account = COALESCE(p.to_account, EXCLUDED.to_account),
    amount = COALESCE(p.amount, EXCLUDED.amount),
    currency = COALESCE(p.currency, EXCLUDED.currency),
    requested_by = COALESCE(p.requested_by, EXCLUDED.requested_by),
    description = COALESCE(p.description, EXCLUDED.description),
    created_at = LEAST(p.created_at, EXCLUDED.created_at),
    updated_at = GREATEST(p.updated_at, EXCLUDED.updated_at)
"""
_INSERT_AUDIT = """
INSERT INTO audit_log (event_id, occurred_at, actor, action, command_type, command_id,
                       account_id, payment_id, outcome, reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING
"""
_UPSERT_OFFSET = """
INSERT INTO sink_offsets (consumer, topic, partition, next_offset, updated_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()
"""


class PgWriter:
    """One Postgres connection and the one-transaction-per-batch write."""

    def __init__(self, dsn: str, consumer: str, topic: str = TOPIC, instance: str = "") -> None:
        self.dsn = dsn
        self.consumer = consumer
        self.topic = topic
        self.application_name = "paystream-sink" + (f"-{instance}" if instance else "")
        self.conn: psycopg.Connection[Any] | None = None

    def connect(self) -> None:
        self.close()
        conn = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=5, application_name=self.application_name
        )
        missing = conn.execute("SELECT to_regclass('sink_offsets') IS NULL").fetchone()
        if missing and missing[0]:
            conn.close()
            raise RuntimeError("read-model tables are missing: run `paystream db migrate`")
        conn.execute(_STAGE_DDL)
        self.conn = conn

    def connect_with_retry(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Reconnect with capped exponential backoff: a Postgres restart is an outage
        to wait out, not a reason to exit."""
        backoff = Backoff()
        while True:
            try:
                self.connect()
                return
            except psycopg.OperationalError as exc:
                if stopping():
                    raise
                delay = backoff.next()
                log.warning("postgres unavailable (%s); retrying in %.1fs", exc, delay)
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
        rows = (
            self._c()
            .execute(
                "SELECT partition, next_offset FROM sink_offsets"
                " WHERE consumer = %s AND topic = %s",
                (self.consumer, self.topic),
            )
            .fetchall()
        )
        return {int(p): int(o) for p, o in rows}

    def write(
        self, events: list[tuple[int, int, dict[str, Any]]], next_offsets: dict[int, int]
    ) -> WriteResult:
        """Apply one batch and advance the offsets, all or nothing."""
        conn = self._c()
        res = WriteResult()
        with conn.transaction(), conn.cursor() as cur:
            # Lock only this batch's partitions: instances sharing the group work
            # on disjoint partitions and must not serialize on each other.
            parts = sorted({p for p, _, _ in events} | set(next_offsets))
            cur.execute(
                "SELECT partition, next_offset FROM sink_offsets WHERE consumer = %s AND topic = %s"
                " AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
                (self.consumer, self.topic, parts),
            )
            stored = {int(p): int(o) for p, o in cur.fetchall()}
            fresh: list[dict[str, Any]] = []
            rows: list[tuple[Any, ...]] = []
            seen: set[str] = set()
            for p, o, ev in events:
                if o < stored.get(p, -1) or ev["event_id"] in seen:
                    res.skipped += 1  # another instance (or an earlier run) wrote it
                    continue
                seen.add(ev["event_id"])
                fresh.append(ev)
                rows.append(rm.event_row(ev, p, o))
            if fresh:
                with cur.copy(f"COPY stage_events ({_COLS}) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
                new_ids = {r[0] for r in cur.execute(_INSERT_EVENTS).fetchall()}
                new_events = [ev for ev in fresh if ev["event_id"] in new_ids]
                res.skipped += len(fresh) - len(new_events)
                res.inserted = len(new_events)
                self._apply(cur, rm.fold(new_events), res)
            for p, o in sorted(next_offsets.items()):
                if o > stored.get(p, -1):
                    cur.execute(_UPSERT_OFFSET, (self.consumer, self.topic, p, o))
        return res

    def _apply(self, cur: psycopg.Cursor[Any], fx: rm.Effects, res: WriteResult) -> None:
        if fx.postings:
            with cur.copy(
                "COPY postings (event_id, idx, payment_id, account_id, account_kind, amount,"
                " currency, sequence, occurred_at) FROM STDIN"
            ) as cp:
                for r in fx.postings:
                    cp.write_row(r)
        res.postings = len(fx.postings)
        for acct_id, number in fx.duplicate_numbers:
            log.warning(
                "account %s claims external number %r already used in this batch; "
                "stored without a number",
                acct_id,
                number,
            )
        if fx.accounts:
            with cur.copy("COPY stage_accounts FROM STDIN") as cp:
                for ch in fx.accounts.values():
                    cp.write_row(ch.row())
            if any(ch.external_number for ch in fx.accounts.values()):
                for acct_id, number in cur.execute(_TAKEN_NUMBERS).fetchall():
                    log.warning(
                        "account %s claims external number %r of another account; "
                        "stored without a number",
                        acct_id,
                        number,
                    )
            cur.execute(_UPSERT_ACCOUNTS)
            res.accounts = cur.rowcount
            cur.execute(_UPDATE_ACCOUNTS)
            res.accounts += cur.rowcount
        if fx.payments:
            with cur.copy("COPY stage_payments FROM STDIN") as cp:
                for pay in fx.payments.values():
                    cp.write_row(pay.row())
            cur.execute(_UPSERT_PAYMENTS)
            res.payments = cur.rowcount
        if fx.audit:
            cur.executemany(_INSERT_AUDIT, fx.audit)
            res.audit = len(fx.audit)


def group_for(settings: Settings, dsn: str) -> str:
    """The Kafka group for sinks writing the database `dsn` names.

    The group only spreads partitions among sinks that share one database (the
    offsets live there). A sink on another database (a test's, a benchmark's)
    in the same group would take partitions away from the real one, which then
    never sees them; so any database but the configured one gets its own group.
    """
    db = conninfo_to_dict(dsn).get("dbname")
    if db is None or db == settings.postgres_db:
        return settings.sink_group
    return f"{settings.sink_group}-{db}"


class Sink:
    """The consumer loop around `PgWriter`: poll, decode, write, repeat."""

    def __init__(
        self,
        settings: Settings,
        *,
        dsn: str | None = None,
        consumer_name: str | None = None,
        group: str | None = None,
        instance: str | None = None,
        serve_metrics: bool = True,
        commit_to_kafka: bool = True,
    ) -> None:
        self.settings = settings
        self.consumer_name = consumer_name or settings.sink_group
        self.group = group or group_for(settings, dsn or settings.postgres_dsn)
        self.instance = instance if instance is not None else settings.sink_instance
        self.serve_metrics = serve_metrics
        self.commit_to_kafka = commit_to_kafka
        self.codec = Codec(settings.registry_url)
        self.writer = PgWriter(
            dsn or settings.postgres_dsn, self.consumer_name, instance=self.instance or ""
        )
        self.dlq = kafka.producer(settings)
        self.consumer: Consumer | None = None
        self.assigned: set[int] = set()
        self.stored: dict[int, int] = {}  # what Postgres holds, as far as this process knows
        self.stopping = False
        self.totals = WriteResult()
        self.dead_lettered = 0

    # -- kafka ---------------------------------------------------------------------
    def _new_consumer(self) -> Consumer:
        extra: dict[str, Any] = {
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            "fetch.wait.max.ms": 100,
            "enable.auto.offset.store": False,
        }
        if self.instance:
            # Static membership: a restarted instance takes its partitions back at
            # once instead of waiting for the dead member's session to expire.
            extra["group.instance.id"] = f"{self.group}-{self.instance}"
        c = kafka.consumer(self.settings, self.group, **extra)
        c.subscribe([TOPIC], on_assign=self._on_assign, on_revoke=self._on_revoke)
        return c

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._stored_offsets_with_retry()
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
            self.assigned.add(tp.partition)
        self.stored.update(stored)
        consumer.assign(partitions)
        log.info(
            "assigned %s at %s",
            sorted(tp.partition for tp in partitions),
            {tp.partition: tp.offset for tp in partitions},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard(tp.partition)
            with suppress(KeyError):
                LAG.remove(str(tp.partition))
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def _stored_offsets_with_retry(self) -> dict[int, int]:
        while True:
            try:
                return self.writer.stored_offsets()
            except psycopg.OperationalError as exc:
                log.warning("cannot read stored offsets (%s); reconnecting", exc)
                self.writer.connect_with_retry(lambda: self.stopping)

    def _recover(self, new_consumer: bool = False) -> None:
        """After a failed batch: reconnect to Postgres, then rewind every assigned
        partition to the offsets Postgres holds (the failed batch was not written).

        `new_consumer`: the consumer hit a fatal error and will never fetch again.
        Seen under `paystream chaos` (Kafka restart): the session timed out, the
        consumer rejoined, and a commit still carrying the old member id got
        FENCED_INSTANCE_ID, fatal for a static member; the sink then idled forever
        with nothing assigned. A fresh consumer rejoins under the same instance id."""
        RECOVERIES.inc()
        self.writer.connect_with_retry(lambda: self.stopping)
        stored = self._stored_offsets_with_retry()
        self.stored = dict(stored)
        assert self.consumer is not None
        if new_consumer:
            log.warning("the Kafka consumer failed fatally; recreating it")
            with suppress(Exception):
                self.consumer.close()
            self.assigned.clear()
            self.consumer = self._new_consumer()
            return
        try:
            for p in sorted(self.assigned):
                self.consumer.seek(TopicPartition(TOPIC, p, stored.get(p, OFFSET_BEGINNING)))
            log.info("re-seeked %s to stored offsets", sorted(self.assigned))
        except KafkaException as exc:
            # A partition not fetching yet cannot be seeked; a fresh consumer seeks
            # everything from Postgres in its assignment callback instead.
            log.warning("seek failed (%s); recreating the consumer", exc)
            with suppress(Exception):
                self.consumer.close()
            self.assigned.clear()
            self.consumer = self._new_consumer()

    # -- decode ----------------------------------------------------------------------
    def _decode(self, msgs: list[Message]) -> tuple[Batch, list[dict[str, Any]]]:
        batch = Batch()
        letters: list[dict[str, Any]] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if _fatal(err):
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            p, o = m.partition(), m.offset()
            assert p is not None and o is not None
            batch.next_offsets[p] = o + 1
            code, reason = None, ""
            try:
                ev = self.codec.decode(TOPIC, m.value())
                problem = rm.normalize_event(ev)
                if problem is not None:
                    code, reason = "INVALID", problem
            except UnknownSchemaError as exc:
                code, reason = "UNKNOWN_SCHEMA", str(exc)
            except DecodeError as exc:
                code, reason = "UNDECODABLE", str(exc)
            if code is None:
                batch.events.append((p, o, ev))
            else:
                letters.append(self._letter(m, code, reason))
        return batch, letters

    def _letter(self, m: Message, code: str, reason: str) -> dict[str, Any]:
        ts_type, ts_ms = m.timestamp()
        return dead_letter(
            component=COMPONENT, reason_code=code, reason=reason, topic=TOPIC,
            partition=m.partition() or 0, offset=m.offset() or 0, key=m.key(), value=m.value(),
            timestamp_ms=ts_ms if ts_type else None, headers=list(m.headers() or []),
        )  # fmt: skip

    def _send_letters(self, letters: list[dict[str, Any]]) -> None:
        """Dead letters must be durable before the offset that skips them is stored."""
        for d in letters:
            log.warning(
                "dead-lettering %s[%s]@%s: %s",
                TOPIC,
                d["source_partition"],
                d["source_offset"],
                d["reason"],
            )
            key = d["key"] if d["key"] is not None else None
            self.dlq.produce(DLQ_TOPIC, key=key, value=self.codec.encode(DLQ_TOPIC, d))
            DEAD_LETTERS.labels(d["reason_code"]).inc()
        if letters and self.dlq.flush(30) != 0:
            raise KafkaException("dead letters not acknowledged within 30s")
        self.dead_lettered += len(letters)

    # -- write -----------------------------------------------------------------------
    def _positions(self, batch: Batch) -> None:
        """Also store positions that moved past transaction markers or aborted
        records, so an idle sink reports zero lag and `verify --wait` sees it done."""
        assert self.consumer is not None
        if not self.assigned:
            return
        for tp in self.consumer.position([TopicPartition(TOPIC, p) for p in sorted(self.assigned)]):
            if tp.offset >= 0 and tp.offset > batch.next_offsets.get(tp.partition, -1):
                batch.next_offsets[tp.partition] = tp.offset
        for p, o in list(batch.next_offsets.items()):
            if o <= self.stored.get(p, -1):
                del batch.next_offsets[p]

    def _write(self, batch: Batch) -> WriteResult:
        try:
            return self.writer.write(batch.events, batch.next_offsets)
        except DATA_ERRORS as exc:
            log.error("batch refused by postgres (%s); isolating the event that causes it", exc)
            return self._write_isolating(batch)

    def _write_isolating(self, batch: Batch) -> WriteResult:
        """Write event by event; dead-letter the few Postgres refuses. Many refusals
        mean a bug or a schema mismatch, not bad data: stop rather than drain the
        ledger into the dead-letter topic."""
        total = WriteResult()
        poisoned = 0
        for p, o, ev in batch.events:
            try:
                r = self.writer.write([(p, o, ev)], {p: o + 1})
            except DATA_ERRORS as exc:
                poisoned += 1
                if poisoned > MAX_POISON_PER_BATCH:
                    raise RuntimeError("too many events refused by postgres; stopping") from exc
                letter = dead_letter(
                    component=COMPONENT, reason_code="INVALID", reason=f"postgres refused: {exc}",
                    topic=TOPIC, partition=p, offset=o, key=ev["account_id"].encode(),
                    value=self.codec.encode(TOPIC, ev),
                )  # fmt: skip
                self._send_letters([letter])
                r = self.writer.write([], {p: o + 1})
            for name in ("inserted", "skipped", "postings", "accounts", "payments", "audit"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
        self.writer.write([], batch.next_offsets)
        return total

    def _record(self, res: WriteResult, batch: Batch) -> None:
        self.stored.update(batch.next_offsets)
        EVENTS_WRITTEN.inc(res.inserted)
        POSTINGS_WRITTEN.inc(res.postings)
        SKIPPED.inc(res.skipped)
        for table, n in (
            ("ledger_events", res.inserted),
            ("postings", res.postings),
            ("accounts", res.accounts),
            ("payments", res.payments),
            ("audit_log", res.audit),
        ):
            ROWS_WRITTEN.labels(table).inc(n)
        for name in ("inserted", "skipped", "postings", "accounts", "payments", "audit"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(res, name))
        if self.commit_to_kafka and batch.next_offsets and self.consumer is not None:
            # Informational only (lag in standard Kafka tooling); never read back.
            with suppress(KafkaException):
                self.consumer.commit(
                    offsets=[TopicPartition(TOPIC, p, o) for p, o in batch.next_offsets.items()],
                    asynchronous=True,
                )

    def _update_lag(self) -> None:
        assert self.consumer is not None
        for p in self.assigned:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(TOPIC, p), cached=True)
            if high is not None and high >= 0 and p in self.stored:
                LAG.labels(str(p)).set(max(0, high - self.stored[p]))

    def step(self) -> WriteResult | None:
        """One poll-decode-write round; returns what was written, or None after a
        failure that was recovered from."""
        assert self.consumer is not None
        msgs = self.consumer.consume(self.settings.sink_batch_max, self.settings.sink_batch_timeout)
        try:
            batch, letters = self._decode(msgs)
            self._positions(batch)
            if not batch.events and not batch.next_offsets:
                return WriteResult()
            self._send_letters(letters)
            t0 = time.perf_counter()
            res = self._write(batch)
            BATCH_SECONDS.observe(time.perf_counter() - t0)
        except (psycopg.OperationalError, psycopg.InterfaceError, KafkaException, OSError) as exc:
            log.warning("batch failed (%s: %s); recovering", type(exc).__name__, exc)
            time.sleep(0.2)
            fatal = isinstance(exc, KafkaException) and bool(exc.args) and isinstance(exc.args[0], KafkaError) \
                and _fatal(exc.args[0])
            self._recover(new_consumer=fatal)
            return None
        self._record(res, batch)
        return res

    def start(self) -> None:
        if self.serve_metrics and self.settings.sink_metrics_port:
            try:
                start_http_server(self.settings.sink_metrics_port, addr="127.0.0.1")
                log.info("metrics on http://127.0.0.1:%d/metrics", self.settings.sink_metrics_port)
            except OSError as exc:
                log.warning("metrics port %d unavailable: %s", self.settings.sink_metrics_port, exc)
        self.writer.connect_with_retry(lambda: self.stopping)
        self.consumer = self._new_consumer()

    def batches(self) -> Iterator[WriteResult | None]:
        while not self.stopping:
            yield self.step()
            self._update_lag()

    def close(self) -> None:
        if self.consumer is not None:
            with suppress(Exception):
                self.consumer.close()
            self.consumer = None
        self.dlq.flush(10)
        self.writer.close()

    def run(self) -> None:
        self.start()
        last_log, last_events, last_postings = time.monotonic(), 0, 0
        try:
            for _ in self.batches():
                now = time.monotonic()
                if now - last_log >= 10:
                    dt = now - last_log
                    log.info(
                        "%.0f events/s, %.0f postings/s, %d events total, %d already stored,"
                        " lag %s",
                        (self.totals.inserted - last_events) / dt,
                        (self.totals.postings - last_postings) / dt, self.totals.inserted,
                        self.totals.skipped, {p: self._lag_of(p) for p in sorted(self.assigned)},
                    )  # fmt: skip
                    last_log, last_events, last_postings = (
                        now,
                        self.totals.inserted,
                        self.totals.postings,
                    )
        finally:
            self.close()

    def _lag_of(self, p: int) -> int | None:
        assert self.consumer is not None
        _, high = self.consumer.get_watermark_offsets(TopicPartition(TOPIC, p), cached=True)
        return (
            high - self.stored[p] if high is not None and high >= 0 and p in self.stored else None
        )


def _fatal(err: KafkaError) -> bool:
    # librdkafka reports a fatal error as an event with code _FATAL whose own
    # fatal flag is not always set.
    return bool(err.fatal() or err.code() == KafkaError._FATAL)


def run(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sink = Sink(settings or get_settings())

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batch", signum)
        sink.stopping = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    sink.run()


if __name__ == "__main__":
    run()
