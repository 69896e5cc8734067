"""The Postgres read model, written exactly once: `paystream run sink`.

Consumes `ledger.events` (read_committed) through the shared Kafka-to-Postgres intake
(`paystream.stream.pg_intake`): each polled batch is written in ONE Postgres
transaction together with the next offset of every partition it read
(`sink_offsets`); on every (re)assignment and after every failure the consumer seeks
to the stored offsets, so after a `kill -9` or a lost database connection the sink
resumes exactly after the last committed batch; each transaction locks its
partitions' offset rows and drops messages below the stored offsets, so a zombie
instance still holding a partition after a rebalance cannot apply anything twice or
move the offset backwards. Undecodable messages go to the dead-letter topic, flushed
before the offset that passes them is committed.

What is the sink's own lives here:

* `ReadModel`, its handler: the input gate (`decode_event`: undecodable values,
  unknown schemas and events whose ids are not UUIDs are dead-lettered) and the fold
  of a batch into `ledger_events`, `postings`, `accounts`, `payments` and `audit_log`
  through session temp tables (`apply_events`). Events are inserted with ON CONFLICT
  DO NOTHING ... RETURNING, and balance deltas, payment and account changes are
  folded from the returned (new) events only (`sinks.read_model.fold`), so a replay
  is harmless anyway;
* its tuning: big batches, static membership, poison isolation (a batch Postgres
  refuses for its data is written event by event and the refused events are
  dead-lettered), a group per database (`group_for`);
* its metrics (lag per partition, rows written), served for Prometheus on
  `settings.sink_metrics_port`, and its rate log.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from psycopg.conninfo import conninfo_to_dict

from paystream import metrics, topics
from paystream.codec import Codec
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.settings import Settings, get_settings
from paystream.stream.pg_intake import IntakeHandler, IntakeSpec, Item, PgBatchWriter, PgIntake, Reject, Step
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

# The sink's consumer: short sessions (with static membership a restart rejoins at
# once anyway), short fetch waits (a batch is written as soon as it is there).
CONSUMER_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2_000,
    "fetch.wait.max.ms": 100,
    "enable.auto.offset.store": False,
}

Event = dict[str, Any]


@dataclass
class WriteResult:
    inserted: int = 0
    skipped: int = 0
    postings: int = 0
    accounts: int = 0
    payments: int = 0
    audit: int = 0

    def add(self, other: WriteResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE ledger_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_payments (LIKE payments) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_accounts (
    account_id uuid, kind text, currency text, external_number text, owner_id text,
    opened_at timestamptz, status text, status_sequence bigint, delta bigint, creates boolean,
    last_sequence bigint, updated_at timestamptz, held bigint, held_sequence bigint) ON COMMIT DELETE ROWS;
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
                           status_sequence, balance, last_sequence, opened_at, updated_at, held,
                           held_sequence)
SELECT s.account_id,
       CASE WHEN NOT EXISTS (SELECT 1 FROM accounts x WHERE x.external_number = s.external_number
                             AND x.account_id <> s.account_id) THEN s.external_number END,
       s.owner_id, s.currency, s.kind, s.status, s.status_sequence, s.delta, s.last_sequence,
       s.opened_at, s.updated_at, COALESCE(s.held, 0), s.held_sequence
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
    updated_at = GREATEST(a.updated_at, EXCLUDED.updated_at),
    held = CASE WHEN EXCLUDED.held_sequence > COALESCE(a.held_sequence, -1)
                THEN EXCLUDED.held ELSE a.held END,
    held_sequence = GREATEST(a.held_sequence, EXCLUDED.held_sequence)
"""
_UPDATE_ACCOUNTS = """
UPDATE accounts a SET
    status = CASE WHEN s.status_sequence > COALESCE(a.status_sequence, -1)
                  THEN s.status ELSE a.status END,
    status_sequence = GREATEST(a.status_sequence, s.status_sequence),
    last_sequence = GREATEST(a.last_sequence, s.last_sequence),
    updated_at = GREATEST(a.updated_at, s.updated_at),
    held = CASE WHEN s.held_sequence > COALESCE(a.held_sequence, -1) THEN s.held ELSE a.held END,
    held_sequence = GREATEST(a.held_sequence, s.held_sequence)
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
    updated_at = GREATEST(p.updated_at, EXCLUDED.updated_at),
    authorized_amount = COALESCE(p.authorized_amount, EXCLUDED.authorized_amount),
    hold_expires_at = COALESCE(p.hold_expires_at, EXCLUDED.hold_expires_at)
"""
_INSERT_AUDIT = """
INSERT INTO audit_log (event_id, occurred_at, actor, action, command_type, command_id,
                       account_id, payment_id, outcome, reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING
"""


# ----------------------------------------------------------------- the read model


def application_name(instance: str = "") -> str:
    """The sink's Postgres connections, for pg_stat_activity (and the tests' kills)."""
    return "paystream-sink" + (f"-{instance}" if instance else "")


def decode_event(codec: Codec, m: Message) -> Event | Reject:
    """The input gate, shared with `paystream reprocess`: a ledger event, or why not."""
    try:
        ev = codec.decode(TOPIC, m.value())
        problem = rm.normalize_event(ev)
    except UnknownSchemaError as exc:
        return Reject("UNKNOWN_SCHEMA", str(exc))
    except DecodeError as exc:
        return Reject("UNDECODABLE", str(exc))
    if problem is None:
        return ev
    if problem.startswith(rm.UNBALANCED):
        # A broken money invariant, not malformed data: alarm (docs/LEDGER.md).
        metrics.INVARIANT_VIOLATIONS.labels("sink").inc()
        log.critical("ledger event %s refused: %s", ev.get("event_id"), problem)
    return Reject("INVALID", problem)


def prepare_read_model(conn: psycopg.Connection[Any]) -> None:
    """Per connection: the staging temp tables the batch write COPYs into."""
    missing = conn.execute("SELECT to_regclass('ledger_events') IS NULL").fetchone()
    if missing and missing[0]:
        raise RuntimeError("read-model tables are missing: run `paystream db migrate`")
    conn.execute(_STAGE_DDL)


def apply_events(conn: psycopg.Connection[Any], items: list[Item[Event]]) -> WriteResult:
    """Fold a batch of events into the read model, inside the intake's transaction."""
    res = WriteResult()
    fresh: list[Event] = []
    rows: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for it in items:
        ev = it.value
        if ev["event_id"] in seen:
            res.skipped += 1  # the same event twice in one batch
            continue
        seen.add(ev["event_id"])
        fresh.append(ev)
        rows.append(rm.event_row(ev, it.partition, it.offset))
    if not fresh:
        return res
    with conn.cursor() as cur:
        with cur.copy(f"COPY stage_events ({_COLS}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        new_ids = {r[0] for r in cur.execute(_INSERT_EVENTS).fetchall()}
        new_events = [ev for ev in fresh if ev["event_id"] in new_ids]
        res.skipped += len(fresh) - len(new_events)
        res.inserted = len(new_events)
        _apply(cur, rm.fold(new_events), res)
    return res


def _apply(cur: psycopg.Cursor[Any], fx: rm.Effects, res: WriteResult) -> None:
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


class ReadModel(IntakeHandler[Event, WriteResult]):
    """The sink's handler for the intake: ledger events in, read-model rows out."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def decode(self, message: Message) -> Event | Reject:
        return decode_event(self.codec, message)

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        prepare_read_model(conn)

    def apply(self, conn: psycopg.Connection[Any], items: list[Item[Event]]) -> WriteResult:
        return apply_events(conn, items)

    def dead_lettered(self, letter: Mapping[str, Any]) -> None:
        DEAD_LETTERS.labels(letter["reason_code"]).inc()


class PgWriter:
    """The read model's batch writer on its own, outside the sink's loop (`paystream
    reprocess`): the intake's rows-and-offsets transaction around `apply_events`."""

    def __init__(self, dsn: str, consumer: str, topic: str = TOPIC, instance: str = "") -> None:
        self.batches = PgBatchWriter(dsn, consumer, topic, application_name=application_name(instance),
                                     prepare=prepare_read_model)  # fmt: skip

    def connect(self) -> None:
        self.batches.connect()

    def close(self) -> None:
        self.batches.close()

    def write(self, events: Sequence[tuple[int, int, Event]], next_offsets: Mapping[int, int]) -> WriteResult:
        """Apply (partition, offset, event)s and advance the offsets, all or nothing."""
        w = self.batches.write([Item(p, o, ev) for p, o, ev in events], next_offsets, apply_events)
        res = w.result or WriteResult()
        res.skipped += w.dropped
        return res


# ----------------------------------------------------------------------- the sink


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
    """The intake over ledger.events with the read model as its handler, plus the
    sink's metrics, lag gauge and rate log around each step."""

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
        dsn = dsn or settings.postgres_dsn
        self.consumer_name = consumer_name or settings.sink_group
        self.group = group or group_for(settings, dsn)
        self.instance = instance if instance is not None else settings.sink_instance
        self.serve_metrics = serve_metrics
        self.codec = Codec(settings.registry_url)
        spec = IntakeSpec(
            name=self.consumer_name, topic=TOPIC, group=self.group, dsn=dsn, component=COMPONENT,
            application_name=application_name(self.instance or ""), batch_size=settings.sink_batch_max,
            poll_timeout=settings.sink_batch_timeout, consumer_config=CONSUMER_CONFIG,
            instance=self.instance or None, commit_to_kafka=commit_to_kafka, isolate=DATA_ERRORS,
            max_poison_per_batch=MAX_POISON_PER_BATCH,
        )  # fmt: skip
        self.intake: PgIntake[Event, WriteResult] = PgIntake(settings, spec, ReadModel(self.codec), self.codec)
        self.totals = WriteResult()
        self.dead_lettered = 0
        self._lag_labels: set[int] = set()

    @property
    def stopping(self) -> bool:
        return self.intake.stop.is_set()

    def stop(self) -> None:
        """Finish the current batch, then leave `run`/`batches`."""
        self.intake.stop.set()

    @property
    def assigned(self) -> set[int]:
        return self.intake.assigned

    @property
    def stored(self) -> dict[int, int]:
        """Next offset per partition, as stored in Postgres as far as this process knows."""
        return self.intake.stored

    def start(self) -> None:
        if self.serve_metrics and self.settings.sink_metrics_port:
            try:
                start_http_server(self.settings.sink_metrics_port, addr="127.0.0.1")
                log.info("metrics on http://127.0.0.1:%d/metrics", self.settings.sink_metrics_port)
            except OSError as exc:
                log.warning("metrics port %d unavailable: %s", self.settings.sink_metrics_port, exc)
        self.intake.start()

    def step(self) -> WriteResult | None:
        """One poll-decode-write round; returns what was written, or None after a
        failure that was recovered from."""
        step = self.intake.step()
        if step is None:
            if not self.stopping:
                RECOVERIES.inc()
            return None
        return self._record(step)

    def _record(self, step: Step[WriteResult]) -> WriteResult:
        res = WriteResult(skipped=step.dropped)
        for r in step.results:
            res.add(r)
        if step.seconds is not None:
            BATCH_SECONDS.observe(step.seconds)
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
        self.totals.add(res)
        self.dead_lettered += step.dead_letters
        return res

    def _update_lag(self) -> None:
        consumer = self.intake.consumer
        if consumer is None:
            return
        for p in self._lag_labels - self.assigned:  # revoked since the last round
            with suppress(KeyError):
                LAG.remove(str(p))
        self._lag_labels &= self.assigned
        for p in self.assigned:
            _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), cached=True)
            if high is not None and high >= 0 and p in self.stored:
                LAG.labels(str(p)).set(max(0, high - self.stored[p]))
                self._lag_labels.add(p)

    def batches(self) -> Iterator[WriteResult | None]:
        while not self.stopping:
            yield self.step()
            self._update_lag()

    def close(self) -> None:
        self.intake.close()

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
        consumer = self.intake.consumer
        if consumer is None:
            return None
        _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), cached=True)
        return (
            high - self.stored[p] if high is not None and high >= 0 and p in self.stored else None
        )


def run(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sink = Sink(settings or get_settings())

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batch", signum)
        sink.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    sink.run()


if __name__ == "__main__":
    run()
