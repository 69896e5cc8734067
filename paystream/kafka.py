"""Kafka clients configured the one way paystream needs them.

Producers use `murmur2_random`, the Java/Quix partitioner, so a key lands on the
same partition whoever produces it; the ledger's single-writer rule depends on it.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from paystream.settings import Settings


def producer(settings: Settings, **extra: Any) -> Producer:
    return Producer({
        "bootstrap.servers": settings.bootstrap_servers,
        "partitioner": "murmur2_random",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        **extra,
    })


def consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    return Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **extra,
    })
