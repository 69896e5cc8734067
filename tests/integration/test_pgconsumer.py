"""The Kafka-to-Postgres consumer of the reviews and webhooks workers waits out a
lost Postgres connection: it reconnects, rewinds to the offsets Postgres holds, and
every message ends up written once, without the worker exiting."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

from paystream import kafka
from paystream.settings import Settings
from pipelines.fraud.pgconsumer import RECONNECTS, PgConsumer

pytestmark = pytest.mark.integration

N = 3_000


class Rows:
    """Inserts one row per message; counts every insert attempt, so a message
    written twice (rather than skipped by ON CONFLICT) would show."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.backends: set[int] = set()
        self.batches = 0

    def __call__(self, conn: psycopg.Connection[Any], msgs: list[Message]) -> None:
        self.backends.add(conn.info.backend_pid)
        self.batches += 1
        conn.cursor().executemany(
            f"INSERT INTO {self.table} (k, n) VALUES (%s, 1)"
            f" ON CONFLICT (k) DO UPDATE SET n = {self.table}.n + 1",
            [(m.value().decode(),) for m in msgs],
        )
        time.sleep(0.02)  # small batches, so the stream is still running when the connection dies


def test_lost_postgres_connection_is_waited_out_and_nothing_is_lost_or_doubled(db: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    topic, table = f"test.pgconsumer.{run}", f"test_pgconsumer_{run}"
    admin = AdminClient({"bootstrap.servers": db.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    with psycopg.connect(db.postgres_dsn, autocommit=True) as admin_conn:
        admin_conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY, n int NOT NULL)")
        try:
            p = kafka.producer(db)
            for i in range(N):
                p.produce(topic, key=str(i % 97).encode(), value=f"m{i}".encode())
            p.flush(30)
            rows = Rows(table)
            consumer = PgConsumer(db, name=f"test-{run}", topic=topic, handle=rows, batch_size=100)
            stop = threading.Event()
            died: list[BaseException] = []

            def loop() -> None:
                try:
                    consumer.run(stop)
                except BaseException as exc:  # the point of the test: this must not happen
                    died.append(exc)

            before = RECONNECTS.labels(f"test-{run}")._value.get()
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            deadline = time.monotonic() + 60
            while not rows.backends and time.monotonic() < deadline:
                time.sleep(0.05)
            assert rows.backends, "the consumer never wrote a batch"
            first = next(iter(rows.backends))
            killed = admin_conn.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
            assert killed and killed[0]

            def count() -> int:
                row = admin_conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                return int(row[0]) if row else 0

            while count() < N and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.2)
            stop.set()
            thread.join(30)
            assert not died, f"the consumer loop died: {died!r}"
            assert count() == N
            doubled = admin_conn.execute(f"SELECT count(*) FROM {table} WHERE n > 1").fetchone()
            # The batch the kill interrupted rolled back; its rewind re-reads it once.
            assert doubled == (0,)
            assert len(rows.backends) >= 2, "expected a second connection after the kill"
            assert RECONNECTS.labels(f"test-{run}")._value.get() == before + 1
            stored = admin_conn.execute(
                "SELECT sum(next_offset) FROM downstream_offsets WHERE consumer = %s AND topic = %s",
                (f"test-{run}", topic),
            ).fetchone()
            assert stored == (N,)
        finally:
            admin_conn.execute(f"DROP TABLE IF EXISTS {table}")
            admin_conn.execute("DELETE FROM downstream_offsets WHERE consumer = %s", (f"test-{run}",))
            admin.delete_topics([topic])
