"""The review queue worker (`paystream run reviews`).

Two loops in one process:

* **alerts -> reviews**: every `FraudAlert` on `fraud.alerts` becomes an open row
  in `reviews`, exactly once (`AlertIntake`, the handler of the shared
  Kafka-to-Postgres intake `paystream.stream.pg_intake`: rows and offsets in one
  Postgres transaction).
* **outbox -> fraud.decisions**: the decision API writes the review's new state
  and a `review_outbox` row in one transaction; this relay publishes each row as
  a `ReviewDecision` and marks it published (`decision_relay`, the shared relay of
  `paystream.stream.outbox`). It is at-least-once (a crash between the broker's ack
  and the mark republishes), which is safe because the decision id is derived from
  the alert id and compensation applies one decision per alert.

Why an outbox rather than producing inside the request: Postgres is where the
decision is *made* (the open -> decided transition is the 409 check). Producing
first and committing after could publish a decision whose transaction then
fails, and an admin's retry with the other verdict would put two contradicting
decisions on the topic. With the outbox, the topic only ever carries decisions
Postgres committed.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
from confluent_kafka import Message
from psycopg.types.json import Jsonb

from paystream import ids, metrics, topics
from paystream.codec import Codec
from paystream.errors import DecodeError
from paystream.settings import Settings, get_settings
from paystream.stream.outbox import OutboxRelay, OutboxSpec
from paystream.stream.pg_intake import IntakeHandler, Item, PgIntake, Reject, worker_spec

ALERTS = topics.ALERTS
DECISIONS = topics.DECISIONS
INTAKE = "reviews"  # the alert intake's offsets owner in sink_offsets; group paystream-reviews
OUTBOX_CHANNEL = "review_outbox"
RELAY_APPLICATION_NAME = "paystream-outbox-relay"
NAMESPACE = uuid.UUID("0e4e1c0a-5f7b-4c1e-8b7d-2a9c6f4e3b21")

log = logging.getLogger("paystream.reviews")

INSERT_REVIEW = """
INSERT INTO reviews (alert_id, payment_id, account_id, counterparty_id, amount, currency, score,
                     risk, reasons, detected_at, sender_owner_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s / 1000.0), %s)
ON CONFLICT (alert_id) DO NOTHING
"""


def decision_id(alert_id: str) -> str:
    """One decision per alert (decisions are terminal), so a republished outbox row
    or a replayed event carries the same id."""
    return ids.uuid5(NAMESPACE, f"decision:{alert_id}")


def review_row(alert: dict[str, Any]) -> tuple[Any, ...]:
    return (alert["alert_id"], alert["payment_id"], alert["account_id"], alert["counterparty_id"],
            alert["amount"], alert["currency"], alert["score"], alert["risk"],
            Jsonb(alert["reasons"]), alert["detected_at"], alert.get("sender_owner_id"))


class AlertIntake(IntakeHandler[tuple[Any, ...], None]):
    """The review queue's handler for the intake: each alert becomes an open review
    (alert_id is the key: ON CONFLICT DO NOTHING); an undecodable alert is dead-lettered."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def decode(self, message: Message) -> tuple[Any, ...] | Reject:
        try:
            return review_row(self.codec.decode(ALERTS, message.value()))
        except DecodeError as exc:
            return Reject("UNDECODABLE", str(exc))

    def apply(self, conn: psycopg.Connection[Any], items: list[Item[tuple[Any, ...]]]) -> None:
        conn.cursor().executemany(INSERT_REVIEW, [it.value for it in items])

    def dead_lettered(self, letter: Mapping[str, Any]) -> None:
        metrics.DEAD_LETTERS.labels(INTAKE, letter["reason_code"]).inc()


# Unpublished decisions in the order they were decided; decision_id breaks ties of
# created_at, so a retried batch goes out in the same order as the first attempt.
CLAIM_DECISIONS = (
    "SELECT decision_id, message_key, payload FROM review_outbox"
    " WHERE published_at IS NULL ORDER BY created_at, decision_id LIMIT %s FOR UPDATE SKIP LOCKED"
)


def decision_relay(settings: Settings, codec: Codec, *, batch: int = 100, poll_interval: float = 0.5,
                   topic: str = DECISIONS) -> OutboxRelay:
    """The relay of committed decisions (`paystream.stream.outbox`: woken by NOTIFY,
    with a poll as a safety net; a lost connection or a Kafka outage is waited out).

    `topic`: where to publish (fraud.decisions; a test's scratch topic). The value is
    always a `ReviewDecision` in fraud.decisions' schema, whatever the topic.
    """

    def encode(_topic: str, payload: dict[str, Any]) -> bytes:
        return codec.encode(DECISIONS, payload)

    return OutboxRelay(settings, OutboxSpec(
        name="reviews", table="review_outbox", id_column="decision_id", claim_sql=CLAIM_DECISIONS,
        channel=OUTBOX_CHANNEL, topic=lambda _row: topic, encode=encode,
        application_name=RELAY_APPLICATION_NAME, batch_size=batch, poll_interval=poll_interval,
    ))  # fmt: skip


def run(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings or get_settings()
    codec = Codec(settings.registry_url)
    codec.schema_id(DECISIONS)  # fail at startup, not on the first decision
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    relay = decision_relay(settings, codec)
    intake = PgIntake(settings, worker_spec(settings, INTAKE, ALERTS), AlertIntake(codec), codec)
    failed: list[BaseException] = []

    def guarded(target: Any) -> None:
        try:
            target(stop)
        except BaseException as exc:
            failed.append(exc)
            log.exception("reviews worker loop died")
            stop.set()

    threads = [threading.Thread(target=guarded, args=(loop,), name=name, daemon=True)
               for name, loop in (("outbox-relay", relay.run), ("alert-intake", intake.run))]
    for t in threads:
        t.start()
    log.info("reviews worker running")
    while not stop.is_set():
        stop.wait(0.5)
    for t in threads:
        t.join(30)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run()
