"""Kafka clients configured the one way paystream needs them.

Producers use `murmur2_random`, the Java/Quix partitioner, so a key lands on the
same partition whoever produces it; the ledger's single-writer rule depends on it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from paystream.settings import Settings

if TYPE_CHECKING:
    from quixstreams.kafka.configuration import ConnectionConfig

log = logging.getLogger("paystream.kafka")


# Producer settings every exactly-once Quix app of paystream uses. librdkafka 2.12
# can leave a partition leaderless for good in a producer after a broker restart
# (confluentinc/librdkafka#5430; `paystream chaos`, kafka-restart): its messages
# only fail when they time out, and Quix then stops the app so the supervisor
# starts a fresh one. 20 s instead of the default 300 s bounds that stall and still
# rides out a broker restart; a crash costs nothing under exactly-once.
QUIX_PRODUCER = {"message.timeout.ms": 20_000}

# Consumer settings, likewise. A kill -9'd instance holds its partitions until the
# group gives up on it: librdkafka's default 45 s stalled everything on them that
# long (`paystream chaos`: kill-ledger, and kill-fraud, 46 s). Heartbeats come from
# librdkafka's own thread, so a slow batch cannot make a live instance miss 10 s.
QUIX_CONSUMER = {"session.timeout.ms": 10_000}


class KafkaUnreachable(ConnectionError):
    """No bootstrap server accepts a connection (raised only under `fail_fast`)."""


# A component waits for a broker that is not there yet (librdkafka reconnects on its
# own); an operator command should say at once that it is not there, instead of
# logging librdkafka's reconnect attempts and timing out 30 s later. The CLI turns
# this on for its commands (ops.cli), `paystream run` off again for its component.
_FAIL_FAST = {"on": False}
_REACHED: set[str] = set()
PROBE_SECONDS = 2.0


def fail_fast(on: bool) -> bool:
    """Whether new clients first check that a broker accepts connections (raising
    `KafkaUnreachable` if none does); returns the previous setting."""
    before = _FAIL_FAST["on"]
    _FAIL_FAST["on"] = on
    return before


def _probe(servers: str) -> None:
    """Return once one of `servers` (host:port,...) accepts a TCP connection."""
    if servers in _REACHED:
        return
    tried = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
                _REACHED.add(servers)
                return
        except (OSError, ValueError) as exc:
            tried.append(f"{server.strip()}: {exc}")
    raise KafkaUnreachable(f"no broker accepts connections at {'; '.join(tried)}")


def connection(settings: Settings) -> dict[str, Any]:
    """Where the broker is and who this process is: the start of every client's config.

    Every Kafka client of paystream (producers, consumers, admin clients, Quix apps)
    is built on this, so none can forget to authenticate (docs/SECURITY.md).
    """
    if _FAIL_FAST["on"]:
        _probe(settings.bootstrap_servers)
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    if settings.kafka_security_protocol != "PLAINTEXT":
        user, password = settings.kafka_credentials()
        config.update({
            "security.protocol": settings.kafka_security_protocol,
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": user,
            "sasl.password": password,
        })
    return config


def quix_connection(settings: Settings) -> ConnectionConfig:
    """`connection` as Quix's `broker_address`, which its own admin client uses too."""
    from quixstreams.kafka.configuration import ConnectionConfig

    return ConnectionConfig.from_librdkafka_dict(connection(settings))


# librdkafka's informational lines (level 6: "Purging N unserved events from background
# queue" when a short-lived tool client closes) went to the terminal under operator
# commands' tables; warnings and errors still do.
QUIET = {"log_level": 4}


def admin(settings: Settings, **extra: Any) -> AdminClient:
    return AdminClient({**connection(settings), **QUIET, **extra})


def producer(settings: Settings, **extra: Any) -> Producer:
    return Producer({
        **connection(settings),
        **QUIET,
        "partitioner": "murmur2_random",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        **extra,
    })


def consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    return Consumer({
        **connection(settings),
        **QUIET,
        "group.id": group,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **extra,
    })


def consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to `max_messages` as soon as at least one is ready, waiting at most `timeout`
    for the first.

    librdkafka's batch consume (`Consumer.consume(n, timeout)`) returns only when it
    has `n` messages or `timeout` has passed: below full load every message waited
    out the timeout. The gateway's outcome listener (500, 0.1 s) added 50 ms on
    average to every completed payment, the bench's outcome reader up to 50 ms to
    every latency it measured. Block for one, then take what is already queued:
    batches stay full under load, and a lone message is not held back.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, 0)]


class StuckProducerWatch:
    """Tells when a producer has to be replaced because librdkafka will not recover it.

    librdkafka 2.12 (confluentinc/librdkafka#5430, open): when a produce response
    says a partition's leader is now -1 (a broker going down), the update is
    skipped with "new leader-1 not found in cache" and the partition can stay
    without a leader for good: every later message to it times out, even once the
    broker is back. `paystream chaos` hit it (kafka-restart: the gateway answered
    503 for minutes while every other client had recovered). Only a new producer
    helps. Call `delivered` from delivery reports and `stuck` from the thread
    that polls; replacing during a real outage is harmless (the new producer
    waits for the broker like the old one).
    """

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self.reset()

    def reset(self) -> None:
        self.last_ok = time.monotonic()
        self.timed_out = 0

    def delivered(self, err: KafkaError | None) -> None:
        if err is None:
            self.last_ok = time.monotonic()
            self.timed_out = 0
        elif err.code() == KafkaError._MSG_TIMED_OUT:
            self.timed_out += 1

    def stuck(self) -> bool:
        """Messages time out and nothing was delivered for `stuck_after` seconds."""
        return self.timed_out > 0 and time.monotonic() - self.last_ok > self.stuck_after


class BatchPublisher:
    """A producer for publishers that produce a batch and flush it (the outbox
    relays), replaced when `StuckProducerWatch` says librdkafka will not recover
    it: otherwise a relay would retry the same rows through the same stuck
    producer for good (confluentinc/librdkafka#5430)."""

    def __init__(self, factory: Callable[[], Producer], stuck_after: float = 30.0) -> None:
        self.factory = factory
        self.producer = factory()
        self.watch = StuckProducerWatch(stuck_after)
        self.replaced = 0

    def produce(self, topic: str, *, key: bytes, value: bytes,
                on_delivery: Callable[[KafkaError | None, Any], None], **kw: Any) -> None:
        """`kw`: further arguments of `Producer.produce` (partition, timestamp, headers)."""
        def report(err: KafkaError | None, msg: Any) -> None:
            self.watch.delivered(err)
            on_delivery(err, msg)

        self.producer.produce(topic, key=key, value=value, on_delivery=report, **kw)

    def flush(self, timeout: float) -> int:
        """Messages still undelivered; a stuck producer is replaced afterwards (what it
        held is purged and reported as failed, and the caller retries the batch)."""
        left = int(self.producer.flush(timeout))
        if self.watch.stuck():
            log.warning("no message delivered for %.0fs while messages time out; replacing the "
                        "Kafka producer (librdkafka #5430)", self.watch.stuck_after)
            old, self.producer = self.producer, self.factory()
            self.watch.reset()
            self.replaced += 1
            old.purge()
            old.flush(0)
        return left
