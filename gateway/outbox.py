"""The gateway's outbox relay: `paystream run outbox-relay`.

Registration writes the new account's OpenAccount command to `gateway_outbox` in its
transaction and sends NOTIFY; this process publishes the rows with the shared relay
(`paystream.stream.outbox`: claiming with SKIP LOCKED, marking only acknowledged rows,
order per key, waiting out Postgres and Kafka outages). What is the gateway's own is
here: each row names its topic, rows go out in `id` order, batch size and poll
interval are settings, and `PAYSTREAM_OUTBOX_FAULT=crash_after_publish` kills the
relay between the broker's ack and the mark. The republish that follows is safe:
the OpenAccount command id is deterministic and the ledger answers the repeat with
COMMAND_DUPLICATE.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from gateway.store import OUTBOX_CHANNEL
from paystream import topics
from paystream.codec import Codec
from paystream.settings import Settings, get_settings
from paystream.stream.outbox import OutboxRelay, OutboxSpec

APPLICATION_NAME = "paystream-gateway-outbox-relay"

_CLAIM = (
    "SELECT id, message_key, payload, topic FROM gateway_outbox WHERE published_at IS NULL"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)


def spec(settings: Settings, codec: Codec) -> OutboxSpec:
    """The gateway outbox: every row carries its topic, and is encoded with that
    topic's schema. A row written for another generation of the ledger's inputs goes to
    this relay's (docs/PARTITIONS.md): rows outlive a switch."""
    ledger = settings.ledger_topics

    def topic(row: tuple[Any, ...]) -> str:
        return topics.in_generation(str(row[3]), ledger)

    return OutboxSpec(
        name="gateway", table="gateway_outbox", id_column="id", claim_sql=_CLAIM,
        channel=OUTBOX_CHANNEL, topic=topic, encode=codec.encode, application_name=APPLICATION_NAME,
        batch_size=settings.outbox_batch_size, poll_interval=settings.outbox_poll_interval,
        crash_after_publish=settings.outbox_fault == "crash_after_publish",
    )  # fmt: skip


def relay(settings: Settings) -> OutboxRelay:
    return OutboxRelay(settings, spec(settings, Codec(settings.registry_url)))



def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    relay(get_settings()).run(stop)
