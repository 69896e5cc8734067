"""The shared outbox relay (`paystream.stream.outbox`) with fake Postgres and Kafka:
which rows a batch may mark, what it produces, and that neither a lost connection
(work or LISTEN) nor a Kafka outage ends its loop. The real thing, against the
stack: tests/integration/test_pgconsumer.py and test_gateway.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError
from psycopg import errors

from paystream import kafka, metrics, topics
from paystream.settings import Settings
from paystream.stream.outbox import OutboxRelay, OutboxRow, OutboxSpec, settle

# ---------------------------------------------------------------- settle


def rows(*spec: tuple[int, str]) -> list[OutboxRow]:
    """Rows (id, key) on one topic, in claim order."""
    return [OutboxRow(i, "t", key, {}) for i, key in spec]


def test_only_acknowledged_rows_are_finished() -> None:
    s = settle(rows((1, "a"), (2, "b"), (3, "c")), {1: None, 2: "Broker: timed out"})
    assert s.finished == [1]
    assert s.failed == {2: "Broker: timed out", 3: "no delivery report"}


def test_a_failed_row_holds_back_later_rows_of_its_key_only() -> None:
    batch = rows((1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a"))
    s = settle(batch, {1: "err", 2: None, 3: None, 4: None, 5: None})
    assert s.finished == [2, 4]  # key b is untouched by key a's failure
    assert s.failed[1] == "err"
    assert s.failed[3].startswith("held back: row 1") and s.failed[5].startswith("held back: row 1")


def test_the_same_key_on_another_topic_is_another_lane() -> None:
    batch = [OutboxRow(1, "t1", "k", {}), OutboxRow(2, "t2", "k", {})]
    assert settle(batch, {1: "err", 2: None}).finished == [2]


def test_a_failure_after_a_key_was_finished_keeps_the_earlier_rows() -> None:
    s = settle(rows((1, "a"), (2, "a")), {1: None, 2: "err"})
    assert s.finished == [1] and list(s.failed) == [2]


# ---------------------------------------------------------------- fakes


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.conn.claimable()

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        for p in params:
            self.conn.execute(sql, p)


class FakeDb:
    """An outbox table: id -> (key, payload, published, attempts, last_error)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.connections: list[FakeConn] = []

    def add(self, rid: int, key: str, payload: Any = None, topic: str = "t") -> None:
        self.rows[rid] = {"key": key, "payload": {"n": rid} if payload is None else payload, "topic": topic,
                          "published": False, "attempts": 0, "last_error": None}

    def published(self) -> list[int]:
        return [rid for rid, r in sorted(self.rows.items()) if r["published"]]


class FakeConn:
    """Enough of a psycopg connection for the relay; `fail_next` makes its next
    statement (or notifies) raise."""

    def __init__(self, db: FakeDb, on_notifies: Callable[[FakeConn], None] | None = None) -> None:
        self.db = db
        self.on_notifies = on_notifies
        self.statements: list[str] = []
        self.closed = False
        self.fail_next: BaseException | None = None
        self.pending_writes: list[tuple[str, tuple[Any, ...]]] = []
        self.in_tx = False
        self.limit = 100

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def _maybe_fail(self) -> None:
        if self.closed:
            raise psycopg.OperationalError("the connection is closed")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def execute(self, sql: str, params: tuple[Any, ...] | None = None) -> FakeCursor:
        self._maybe_fail()
        self.statements.append(sql)
        if sql.startswith("SELECT"):
            self.limit = (params or (100,))[0]
        if sql.startswith("UPDATE"):
            assert self.in_tx, "marks belong in the claiming transaction"
            self.pending_writes.append((sql, params or ()))
        return FakeCursor(self)

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def claimable(self) -> list[tuple[Any, ...]]:
        return [(rid, r["key"], r["payload"], r["topic"]) for rid, r in sorted(self.db.rows.items())
                if not r["published"]][:self.limit]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.in_tx, self.pending_writes = True, []
        try:
            yield
        except BaseException:
            self.pending_writes = []
            raise
        finally:
            self.in_tx = False
        self._maybe_fail()  # COMMIT can fail too
        for sql, params in self.pending_writes:
            if "published_at = now()" in sql:
                for rid in params[0]:
                    self.db.rows[rid].update(published=True, attempts=self.db.rows[rid]["attempts"] + 1)
            else:
                err, rid = params
                self.db.rows[rid].update(last_error=err, attempts=self.db.rows[rid]["attempts"] + 1)

    def notifies(self, timeout: float, stop_after: int) -> Iterator[Any]:
        self._maybe_fail()
        if self.on_notifies:
            self.on_notifies(self)
        return iter(())


class FakeProducer:
    """Acknowledges every message on flush, except keys in `failing` (an error report)
    and in `silent` (no report: a flush timeout)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.queue: list[tuple[bytes, Callable[[KafkaError | None, Any], None]]] = []
        self.failing: set[bytes] = set()
        self.silent: set[bytes] = set()
        self.flushes = 0
        self.down_for = 0  # this many flushes fail every message (a broker outage)

    def produce(self, topic: str, *, key: bytes, value: bytes,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        self.sent.append((topic, key, value))
        self.queue.append((key, on_delivery))

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        queue, self.queue = self.queue, []
        left = 0
        for key, cb in queue:
            if key in self.silent:
                left += 1
            elif key in self.failing or self.flushes <= self.down_for:
                cb(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                cb(None, None)
        return left


class Stop(threading.Event):
    """Records the relay's waits instead of sleeping, and sets itself once `until`
    holds (or after so many checks that the loop is clearly stuck)."""

    def __init__(self, until: Callable[[], bool] = lambda: False, max_checks: int = 1000) -> None:
        super().__init__()
        self.until = until
        self.checks_left = max_checks
        self.waits: list[float] = []

    def is_set(self) -> bool:
        self.checks_left -= 1
        if not super().is_set() and (self.until() or self.checks_left <= 0):
            self.set()
        return super().is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


def encode(topic: str, payload: dict[str, Any]) -> bytes:
    return f"{topic}:{sorted(payload.items())}".encode()


def make_spec(**over: Any) -> OutboxSpec:
    base: dict[str, Any] = dict(
        name="test", table="some_outbox", id_column="id",
        claim_sql="SELECT id, message_key, payload, topic FROM some_outbox LIMIT %s FOR UPDATE SKIP LOCKED",
        channel="some_outbox", topic=lambda r: r[3], encode=encode, application_name="paystream-test-relay",
        batch_size=100, poll_interval=0.01,
    )  # fmt: skip
    return OutboxSpec(**{**base, **over})


def pg(db: FakeDb) -> Any:
    """A fake work connection, typed loosely for `publish_batch`."""
    return FakeConn(db)


def relay_with(db: FakeDb, producer: FakeProducer, connect: Callable[[], Any] | None = None,
               **spec: Any) -> OutboxRelay:
    return OutboxRelay(Settings(), make_spec(**spec), producer=producer,
                       connect=connect or (lambda: pg(db)))


# ---------------------------------------------------------------- one batch


def test_a_batch_produces_in_order_and_marks_the_acknowledged_rows() -> None:
    db, producer = FakeDb(), FakeProducer()
    for rid, key in [(1, "a"), (2, "b"), (3, "a"), (4, "c")]:
        db.add(rid, key)
    producer.failing = {b"a"}
    before = metrics.OUTBOX_PUBLISHED.labels("test")._value.get()
    relay = relay_with(db, producer)
    done = relay.publish_batch(pg(db))
    assert [(t, k) for t, k, _ in producer.sent] == [("t", b"a"), ("t", b"b"), ("t", b"a"), ("t", b"c")]
    assert producer.sent[1][2] == encode("t", {"n": 2})  # the spec's encoding, unchanged
    assert done.claimed == 4 and done.settlement.finished == [2, 4]
    assert db.published() == [2, 4]
    assert db.rows[1]["attempts"] == 1 and "timed out" in db.rows[1]["last_error"]
    assert db.rows[3]["last_error"].startswith("held back")
    assert metrics.OUTBOX_PUBLISHED.labels("test")._value.get() == before + 2
    # next round: the failed row goes first again, then its key's later row
    producer.failing, producer.sent = set(), []
    relay.publish_batch(pg(db))
    assert [k for _, k, _ in producer.sent] == [b"a", b"a"]
    assert db.published() == [1, 2, 3, 4]


def test_a_row_without_a_delivery_report_stays_pending() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")
    producer.silent = {b"a"}
    relay_with(db, producer).publish_batch(pg(db))
    assert db.published() == [] and db.rows[1]["last_error"] == "no delivery report"


def test_a_row_that_cannot_be_encoded_fails_alone_and_its_key_waits() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a", payload="not json")
    db.add(2, "a")
    db.add(3, "b", payload='{"n": 3}')  # text JSON is accepted
    relay_with(db, producer).publish_batch(pg(db))
    assert [k for _, k, _ in producer.sent] == [b"b"]  # row 2 must not overtake row 1
    assert db.published() == [3]
    assert db.rows[1]["last_error"].startswith("not produced: JSONDecodeError")
    assert db.rows[2]["last_error"].startswith("held back")


def test_long_errors_are_truncated() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")

    def boom(topic: str, payload: dict[str, Any]) -> bytes:
        raise RuntimeError("x" * 2000)

    relay_with(db, producer, encode=boom).publish_batch(pg(db))
    assert len(db.rows[1]["last_error"]) == 500


def test_the_spec_chooses_the_topic_per_row() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a", topic="one")
    db.add(2, "b", topic="two")
    relay_with(db, producer).publish_batch(pg(db))
    assert [t for t, _, _ in producer.sent] == ["one", "two"]
    producer.sent = []
    db.add(3, "c", topic="ignored")
    relay_with(db, producer, topic=lambda _r: "fixed").publish_batch(pg(db))
    assert [t for t, _, _ in producer.sent] == ["fixed"]


def test_the_producer_is_paystreams_idempotent_one_with_the_specs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def producer(settings: Settings, **extra: Any) -> FakeProducer:
        calls.append(extra)
        return FakeProducer()

    monkeypatch.setattr(kafka, "producer", producer)
    OutboxRelay(Settings(), make_spec())
    assert calls == [{"message.timeout.ms": 10_000}]  # on top of kafka.producer's idempotence, acks=all


# ---------------------------------------------------------------- the loop


def test_postgres_down_at_start_is_waited_out_with_backoff() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")
    attempts = [0]

    def connect() -> FakeConn:
        attempts[0] += 1
        if attempts[0] <= 3:
            raise psycopg.OperationalError("connection refused")  # no SQLSTATE: server down
        return FakeConn(db)

    stop = Stop(until=lambda: db.published() == [1])
    relay = relay_with(db, producer, connect=connect)
    relay.run(stop)
    assert stop.waits[:3] == [0.2, 0.4, 0.8]
    assert db.published() == [1]
    assert relay.reconnect_backoff.next() == 0.2  # reset once a round went through


def test_a_lost_listen_connection_reconnects_both_and_resumes() -> None:
    db, producer = FakeDb(), FakeProducer()
    opened: list[FakeConn] = []
    rounds = [0]

    def on_notifies(listen: FakeConn) -> None:
        rounds[0] += 1
        if rounds[0] == 1:  # a row is committed while the server restarts (its NOTIFY lost) ...
            db.add(1, "a")
            # ... and the LISTEN connection notices first
            raise errors.AdminShutdown("terminating connection due to administrator command")

    def connect() -> FakeConn:
        conn = FakeConn(db, on_notifies=on_notifies)
        opened.append(conn)
        return conn

    stop = Stop(until=lambda: db.published() == [1])
    relay_with(db, producer, connect=connect).run(stop)
    assert db.published() == [1]
    assert len(opened) == 4 and all(c.closed for c in opened)  # two pairs, the first closed together
    listens = [c for c in opened if any(s.startswith("LISTEN") for s in c.statements)]
    assert [s for c in listens for s in c.statements if s.startswith("LISTEN")] == ["LISTEN some_outbox"] * 2
    assert stop.waits == [0.2]  # one reconnect backoff


def test_a_lost_work_connection_mid_batch_reconnects_and_republishes() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")
    conns: list[FakeConn] = []

    def connect() -> FakeConn:
        conn = FakeConn(db)
        if len(conns) == 1:  # the first work connection dies at COMMIT, after Kafka's ack
            conn.transaction = _failing_commit(conn)  # type: ignore[method-assign]
        conns.append(conn)
        return conn

    stop = Stop(until=lambda: db.published() == [1])
    relay_with(db, producer, connect=connect).run(stop)
    assert db.published() == [1]
    assert [k for _, k, _ in producer.sent] == [b"a", b"a"]  # at-least-once: sent again, then marked
    assert db.rows[1]["attempts"] == 1


def _failing_commit(conn: FakeConn) -> Any:
    original = conn.transaction

    @contextmanager
    def tx() -> Iterator[None]:
        with original():
            yield
            conn.fail_next = psycopg.OperationalError("server closed the connection unexpectedly")

    return tx


def test_a_kafka_outage_keeps_rows_and_backs_off_without_ending_the_loop() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")
    producer.down_for = 4  # then the broker is back
    stop = Stop(until=lambda: db.published() == [1])
    relay = relay_with(db, producer)
    relay.run(stop)
    assert stop.waits[:4] == [0.2, 0.4, 0.8, 1.6]
    assert db.published() == [1] and db.rows[1]["attempts"] == 5
    assert relay.retry_backoff.next() == 0.2


def test_a_failing_statement_is_retried_not_fatal() -> None:
    db, producer = FakeDb(), FakeProducer()
    db.add(1, "a")
    conns: list[FakeConn] = []

    def connect_failing_once() -> FakeConn:
        conn = FakeConn(db)
        if len(conns) == 1:
            conn.fail_next = errors.UndefinedTable("relation does not exist")
        conns.append(conn)
        return conn

    stop = Stop(until=lambda: db.published() == [1])
    relay_with(db, producer, connect=connect_failing_once).run(stop)
    assert db.published() == [1]
    assert len(conns) == 2  # the same connections, no reconnect
    assert stop.waits[0] == 0.2


def test_a_connection_refused_for_good_ends_the_loop() -> None:
    def connect() -> FakeConn:
        raise errors.InvalidPassword("password authentication failed")

    with pytest.raises(errors.InvalidPassword):
        relay_with(FakeDb(), FakeProducer(), connect=connect).run(Stop())


def test_a_full_batch_is_followed_at_once_a_partial_one_waits_for_notify() -> None:
    db, producer = FakeDb(), FakeProducer()
    for rid in range(1, 6):
        db.add(rid, f"k{rid}")
    listened = [0]

    def on_notifies(_: FakeConn) -> None:
        listened[0] += 1
        stop.set()

    stop = Stop()
    relay_with(db, producer, connect=lambda: FakeConn(db, on_notifies=on_notifies), batch_size=2,
               claim_sql="SELECT ... LIMIT %s").run(stop)
    # rows 1-5 in batches of two: full, full, then a partial one before the first wait
    assert db.published() == [1, 2, 3, 4, 5] and listened[0] == 1


def test_drain_publishes_until_nothing_is_pending() -> None:
    db, producer = FakeDb(), FakeProducer()
    for rid in range(1, 4):
        db.add(rid, "k")
    relay_with(db, producer, batch_size=2).drain(timeout=5)
    assert db.published() == [1, 2, 3]


# ---------------------------------------------------------------- the two users


class FakeCodec:
    def encode(self, topic: str, value: dict[str, Any]) -> bytes:
        return encode(topic, value)


def test_gateway_outbox_spec() -> None:
    from gateway.outbox import spec
    from gateway.store import OUTBOX_CHANNEL

    s = spec(Settings(outbox_batch_size=7, outbox_poll_interval=0.3, outbox_fault="crash_after_publish"),
             FakeCodec())  # type: ignore[arg-type]
    assert (s.name, s.table, s.id_column, s.channel) == ("gateway", "gateway_outbox", "id", OUTBOX_CHANNEL)
    assert "ORDER BY id" in s.claim_sql and s.claim_sql.rstrip().endswith("FOR UPDATE SKIP LOCKED")
    assert (s.batch_size, s.poll_interval, s.crash_after_publish) == (7, 0.3, True)
    assert s.topic((1, "key", {}, "payments.privileged")) == "payments.privileged"
    assert s.encode("payments.privileged", {"a": 1}) == encode("payments.privileged", {"a": 1})
    assert not spec(Settings(), FakeCodec()).crash_after_publish  # type: ignore[arg-type]


def test_reviews_relay_encodes_decisions_whatever_the_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.fraud.reviews import OUTBOX_CHANNEL, RELAY_APPLICATION_NAME, decision_relay

    monkeypatch.setattr(kafka, "producer", lambda settings, **extra: FakeProducer())
    s = decision_relay(Settings(), FakeCodec(), poll_interval=0.2, topic="test.scratch").spec  # type: ignore[arg-type]
    assert (s.name, s.table, s.id_column, s.channel) == ("reviews", "review_outbox", "decision_id", OUTBOX_CHANNEL)
    assert s.application_name == RELAY_APPLICATION_NAME and not s.crash_after_publish
    assert (s.batch_size, s.poll_interval) == (100, 0.2)
    assert s.topic(("d", "sender", {})) == "test.scratch"
    assert s.encode("test.scratch", {"a": 1}) == encode(topics.DECISIONS, {"a": 1})
