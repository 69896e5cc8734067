"""The outbox relay: `paystream run outbox-relay`.

Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays share the work
without publishing the same row concurrently. A row is marked published only in
the transaction that claimed it and only after the broker acknowledged it
(flush plus delivery callbacks). A relay killed between the two publishes the
row again after restart: at-least-once, which is safe because every outbox
command has a deterministic command id and the ledger turns a repeat into a
COMMAND_DUPLICATE.

Registration sends NOTIFY in its transaction, so a waiting relay wakes at once;
polling every `outbox_poll_interval` covers a lost notification.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import psycopg
from confluent_kafka import KafkaError

from gateway.store import OUTBOX_CHANNEL
from paystream import kafka, metrics
from paystream.codec import Codec
from paystream.settings import Settings, get_settings

log = logging.getLogger("paystream.outbox")

_CLAIM = (
    "SELECT id, topic, message_key, payload FROM gateway_outbox WHERE published_at IS NULL"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = Codec(settings.registry_url)
        self.producer = kafka.BatchPublisher(
            lambda: kafka.producer(settings, **{"message.timeout.ms": 10000}))
        self.conn = psycopg.connect(settings.postgres_dsn, autocommit=True)
        self.stop_event = threading.Event()

    def publish_batch(self) -> int:
        """Publish one batch; return how many rows were claimed."""
        results: dict[int, KafkaError | None] = {}
        with self.conn.transaction():
            rows = self.conn.execute(_CLAIM, (self.settings.outbox_batch_size,)).fetchall()
            if not rows:
                return 0
            for row_id, topic, key, payload in rows:
                value = self.codec.encode(topic, payload)
                self.producer.produce(topic, key=key.encode(), value=value, on_delivery=_recorder(results, row_id))
            self.producer.flush(15)
            ok = [rid for rid, err in results.items() if err is None]
            failed = {rid: str(err) for rid, err in results.items() if err is not None}
            failed.update({r[0]: "no delivery report" for r in rows if r[0] not in results})
            if ok and self.settings.outbox_fault == "crash_after_publish":
                log.warning("fault injection: dying after publishing %d rows, before marking them", len(ok))
                os.kill(os.getpid(), signal.SIGKILL)
            if ok:
                self.conn.execute(
                    "UPDATE gateway_outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY(%s)",
                    (ok,),
                )
                metrics.OUTBOX_PUBLISHED.labels("gateway").inc(len(ok))
            for rid, err in failed.items():
                self.conn.execute(
                    "UPDATE gateway_outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                    (err, rid),
                )
        if failed:
            log.warning("%d outbox rows not acknowledged; will retry", len(failed))
            time.sleep(0.5)
        return len(rows)

    def drain(self, timeout: float = 30) -> None:
        """Publish until nothing is pending (used by the benchmark's setup)."""
        deadline = time.monotonic() + timeout
        while self.publish_batch() and time.monotonic() < deadline:
            pass

    def run(self) -> None:
        listener = psycopg.connect(self.settings.postgres_dsn, autocommit=True)
        listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        log.info("outbox relay started")
        while not self.stop_event.is_set():
            try:
                n = self.publish_batch()
            except Exception:
                log.exception("outbox batch failed; retrying")
                _reconnect_if_broken(self)
                self.stop_event.wait(1)
                continue
            if n >= self.settings.outbox_batch_size:
                continue
            for _ in listener.notifies(timeout=self.settings.outbox_poll_interval, stop_after=1):
                pass
        listener.close()
        self.producer.flush(10)
        self.conn.close()


def _recorder(results: dict[int, KafkaError | None], row_id: int) -> Any:
    def cb(err: KafkaError | None, _msg: Any) -> None:
        results[row_id] = err

    return cb


def _reconnect_if_broken(relay: Relay) -> None:
    if relay.conn.closed or relay.conn.broken:
        try:
            relay.conn = psycopg.connect(relay.settings.postgres_dsn, autocommit=True)
        except psycopg.Error:
            log.exception("cannot reconnect to Postgres")


def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    relay = Relay(get_settings())
    signal.signal(signal.SIGTERM, lambda *_: relay.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: relay.stop_event.set())
    relay.run()
