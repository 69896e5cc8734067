"""The Kafka-to-Postgres intake (`paystream.stream.pg_intake`, the loop of the sink and
of the reviews and webhooks workers) waits out a lost Postgres connection: it
reconnects, rewinds to the offsets Postgres holds, and every message ends up written
once, without the worker exiting."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message
from confluent_kafka.admin import NewTopic

from paystream import kafka
from paystream.codec import Codec
from paystream.settings import Settings
from paystream.stream.pg_intake import RECONNECTS, IntakeHandler, Item, PgIntake, worker_spec

pytestmark = pytest.mark.integration

N = 3_000


def start_loop(run: Callable[[threading.Event], None],
               stop: threading.Event) -> tuple[threading.Thread, list[BaseException]]:
    """A worker loop in a thread, as the workers run it; whatever ends it is kept in
    the returned list (the point of these tests: nothing may)."""
    died: list[BaseException] = []

    def loop() -> None:
        try:
            run(stop)
        except BaseException as exc:
            died.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, died


class Rows(IntakeHandler[str, None]):
    """Inserts one row per message; counts every insert attempt, so a message
    written twice (rather than skipped by ON CONFLICT) would show."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.backends: set[int] = set()
        self.batches = 0
        self.first_batch = threading.Event()  # set once the consumer is inside its first batch
        self.killed = threading.Event()  # the test has terminated that batch's connection

    def decode(self, message: Message) -> str:
        return bytes(message.value() or b"").decode()

    def apply(self, conn: psycopg.Connection[Any], items: list[Item[str]]) -> None:
        self.backends.add(conn.info.backend_pid)
        self.batches += 1
        if not self.first_batch.is_set():
            # Hold the first batch open until its connection is gone, so the kill
            # always lands mid-stream, inside a transaction, whatever the machine's speed.
            self.first_batch.set()
            self.killed.wait(30)
        conn.cursor().executemany(
            f"INSERT INTO {self.table} (k, n) VALUES (%s, 1)"
            f" ON CONFLICT (k) DO UPDATE SET n = {self.table}.n + 1",
            [(it.value,) for it in items],
        )
        time.sleep(0.02)  # small batches, so the stream is still running when the connection dies


def test_lost_postgres_connection_is_waited_out_and_nothing_is_lost_or_doubled(db: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    topic, table = f"test.pgconsumer.{run}", f"test_pgconsumer_{run}"
    admin = kafka.admin(db)
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    with psycopg.connect(db.postgres_dsn, autocommit=True) as admin_conn:
        admin_conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY, n int NOT NULL)")
        try:
            p = kafka.producer(db)
            for i in range(N):
                p.produce(topic, key=str(i % 97).encode(), value=f"m{i}".encode())
            p.flush(30)
            rows = Rows(table)
            consumer = PgIntake(db, worker_spec(db, f"test-{run}", topic, batch_size=100), rows,
                                Codec(db.registry_url))
            stop = threading.Event()

            before = RECONNECTS.labels(f"test-{run}")._value.get()
            thread, died = start_loop(consumer.run, stop)
            deadline = time.monotonic() + 60
            assert rows.first_batch.wait(60), "the consumer never started a batch"
            first = next(iter(rows.backends))
            killed = admin_conn.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
            assert killed and killed[0]
            rows.killed.set()

            def count() -> int:
                row = admin_conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                return int(row[0]) if row else 0

            while count() < N and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.2)
            stop.set()
            thread.join(30)
            assert not died, f"the consumer loop died: {died!r}"
            assert not thread.is_alive(), "the consumer did not stop"
            assert count() == N
            doubled = admin_conn.execute(f"SELECT count(*) FROM {table} WHERE n > 1").fetchone()
            # The batch the kill interrupted rolled back; its rewind re-reads it once.
            assert doubled == (0,)
            assert len(rows.backends) >= 2, "expected a second connection after the kill"
            assert RECONNECTS.labels(f"test-{run}")._value.get() == before + 1
            stored = admin_conn.execute(
                "SELECT sum(next_offset) FROM sink_offsets WHERE consumer = %s AND topic = %s",
                (f"test-{run}", topic),
            ).fetchone()
            assert stored == (N,)
        finally:
            admin_conn.execute(f"DROP TABLE IF EXISTS {table}")
            admin_conn.execute("DELETE FROM sink_offsets WHERE consumer = %s", (f"test-{run}",))
            admin.delete_topics([topic])


def test_outbox_relay_waits_out_a_lost_connection_and_publishes_what_comes_after(db: Settings) -> None:
    """The reviews worker's other loop: its LISTEN and work connections are both
    terminated; a decision written afterwards is still published, once."""
    from psycopg.types.json import Jsonb

    from paystream.codec import Codec
    from pipelines.fraud.reviews import OUTBOX_CHANNEL, RELAY_APPLICATION_NAME, decision_relay

    run = uuid.uuid4().hex[:8]
    topic = f"test.outbox.{run}"
    admin = kafka.admin(db)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    relay = decision_relay(db, Codec(db.registry_url), poll_interval=0.2, topic=topic)
    stop = threading.Event()

    def decision() -> tuple[str, str, dict[str, Any]]:
        did, sender = str(uuid.uuid4()), str(uuid.uuid4())
        return did, sender, {
            "decision_id": did, "alert_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4()),
            "sender_id": sender, "receiver_id": str(uuid.uuid4()), "decision": "APPROVED",
            "decided_by": "test", "note": None, "decided_at": int(time.time() * 1000), "sender_owner_id": None,
        }  # fmt: skip

    def published(conn: psycopg.Connection[Any], did: str) -> bool:
        row = conn.execute("SELECT published_at IS NOT NULL FROM review_outbox WHERE decision_id = %s",
                           (did,)).fetchone()
        return bool(row and row[0])

    mine: list[str] = []
    with psycopg.connect(db.postgres_dsn, autocommit=True) as conn:
        try:
            thread, died = start_loop(relay.run, stop)
            deadline = time.monotonic() + 30
            backends: list[int] = []
            while len(backends) < 2 and time.monotonic() < deadline:  # LISTEN + work connection
                backends = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                    " AND backend_start > now() - interval '30 seconds'", (RELAY_APPLICATION_NAME,)).fetchall()]
                time.sleep(0.1)
            assert len(backends) >= 2, f"relay connections not found: {backends}"
            for pid in backends:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            did, sender, payload = decision()
            mine.append(did)
            conn.execute("INSERT INTO review_outbox (decision_id, alert_id, message_key, payload)"
                         " VALUES (%s, %s, %s, %s)", (did, payload["alert_id"], sender, Jsonb(payload)))
            conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            while not published(conn, did) and time.monotonic() < deadline + 30 and thread.is_alive():
                time.sleep(0.2)
            assert not died, f"the relay loop died: {died!r}"
            assert published(conn, did)
            stop.set()
            thread.join(30)
            assert not thread.is_alive()
            # exactly one record for it on the topic
            c = kafka.consumer(db, f"test-outbox-{run}", **{"isolation.level": "read_committed",
                                                             "auto.offset.reset": "earliest"})
            c.subscribe([topic])
            keys: list[bytes] = []
            until = time.monotonic() + 15
            while time.monotonic() < until and len(keys) < 1:
                keys += [m.key() for m in c.consume(100, 0.5) if not m.error()]
            keys += [m.key() for m in c.consume(100, 1.0) if not m.error()]
            c.close()
            assert keys.count(sender.encode()) == 1
        finally:
            stop.set()
            conn.execute("DELETE FROM review_outbox WHERE decision_id = ANY(%s)", (mine,))
            admin.delete_topics([topic])
