"""What every downstream Quix app (fraud, compensation, notifications) shares.

They are built the way the ledger is (`pipelines/ledger/app.py`): bytes in,
`Codec` decode, and one `to_topic` with a topic selector over already-encoded
outputs, so all outputs, the state changelog and the input offsets commit in one
Kafka transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers import SerializationContext, Serializer

from paystream import kafka, metrics, tracing
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC, dead_letter
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.settings import Settings
from paystream.stream import quix_compat

# An output travels through the dataframe as (topic, key, encoded value).
Routed = tuple[str, str, bytes]


class RoutedSerializer(Serializer):
    """Serializer for values that are already Avro bytes (encoded by `Codec`)."""

    def __call__(self, value: Routed, ctx: SerializationContext) -> bytes:
        return value[2]


def build_application(
    settings: Settings,
    *,
    component: str,
    instance: str,
    commit_interval: float,
    linger_ms: int = 5,
    fetch_wait_ms: int = 50,
    poll_timeout: float = 0.1,
    rocksdb_options: Any = None,
    consumer_extra: dict[str, Any] | None = None,
    producer_extra: dict[str, Any] | None = None,
) -> Application:
    """The one way a paystream component builds its Quix application: exactly-once,
    group `paystream-<component>`, a transactional id per instance, state under the
    stack's home. The ledger passes its own tuning (docs/LEDGER.md)."""
    extra: dict[str, Any] = {} if rocksdb_options is None else {"rocksdb_options": rocksdb_options}
    app = Application(
        broker_address=kafka.quix_connection(settings),
        consumer_group=f"paystream-{component}",
        processing_guarantee="exactly-once",
        commit_interval=commit_interval,
        auto_offset_reset="earliest",
        # Skipping data silently is never right for money, alerts or notifications:
        # fail loudly instead.
        auto_recover_from_source_offset_out_of_range=False,
        state_dir=str(settings.home / "state" / f"{component}-{instance}"),
        # A stable id per instance: a restarted instance fences its zombie at once
        # instead of leaving consumers waiting out the transaction timeout.
        producer_extra_config={
            "transactional.id": f"paystream-{component}-{instance}",
            "linger.ms": linger_ms,
            **kafka.QUIX_PRODUCER,
            **(producer_extra or {}),
        },
        consumer_extra_config={
            "fetch.wait.max.ms": fetch_wait_ms,
            **kafka.QUIX_CONSUMER,
            **metrics.quix_consumer_config(component, settings, instance),
            **(consumer_extra or {}),
        },
        consumer_poll_timeout=poll_timeout,
        # With paystream's JSON logging configured, Quix's records go through it.
        loglevel=None if plog.configured() else "INFO",
        **extra,
    )
    metrics.time_commits(app, component)
    return app


def inputs(app: Application, *topics: str, time_alignment: bool = False) -> Any:
    """The app's input topics as one dataframe of raw bytes (the processor decodes,
    so an undecodable record is dead-lettered, not a crash). Several topics are
    concatenated without Quix's cross-topic time alignment: no paystream app needs
    its inputs ordered against each other (the ledger, docs/LEDGER.md; fraud feeds
    fraud.flows itself; compensation's alerts and decisions are independent), and
    alignment holds an input back while another has an open transaction."""
    frames = [app.dataframe(app.topic(t, key_deserializer="bytes", value_deserializer="bytes")) for t in topics]
    sdf = frames[0]
    for more in frames[1:]:
        sdf = sdf.concat(more)
    if len(frames) > 1 and not time_alignment:
        quix_compat.disable_time_alignment(app)
    return sdf


def apply_processor(sdf: Any, processor: Any, component: str, *, stateful: bool = True) -> Any:
    """`sdf.apply(processor)` (expanding, with metadata), counted and timed
    (`paystream.metrics`) and, when tracing is on, one span per message whose
    context goes onto every output (`paystream.tracing`)."""
    fn, after = tracing.instrument_quix(metrics.InstrumentedProcessor(processor, component), component)
    return after(sdf.apply(fn, stateful=stateful, expand=True, metadata=True))


def decode_key(key: bytes | None) -> str | None:
    try:
        return key.decode("utf-8") if key is not None else ""
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class Raw:
    """The message as it came, for a dead letter that carries it unchanged."""

    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Any


class Processor:
    """Base for the apps' per-message functions: decoding and dead letters. Quix
    calls the processor; it decodes (an undecodable message becomes its dead letter)
    and hands the record to `handle`, the component's own rules."""

    component = "downstream"

    def __init__(self, codec: Codec, log: logging.Logger) -> None:
        self.codec = codec
        self.log = log

    def __call__(self, value: bytes, key: bytes, timestamp: int, headers: Any, state: Any = None) -> list[Routed]:
        topic = message_context().topic
        decoded = self.decode(topic, key, value, timestamp, headers)
        if isinstance(decoded, list):
            return decoded
        skey, rec = decoded
        return self.handle(topic, skey, rec, state, Raw(key, value, timestamp, headers))

    def handle(self, topic: str, key: str, rec: dict[str, Any], state: Any, raw: Raw) -> list[Routed]:
        raise NotImplementedError

    def refuse(self, code: str, reason: str, raw: Raw) -> list[Routed]:
        """Dead-letter the message being handled."""
        return self.dlq(code, reason, raw.key, raw.value, raw.timestamp, raw.headers)

    def dlq(self, code: str, reason: str, key: bytes | None, value: bytes | None,
            timestamp: int, headers: Any) -> list[Routed]:
        ctx = message_context()
        self.log.warning("dead-lettering %s[%s]@%s: %s", ctx.topic, ctx.partition, ctx.offset,
                         reason, extra=plog.payment_fields(
                             account=(key or b"").decode("utf-8", "replace"), reason_code=code))
        metrics.DEAD_LETTERS.labels(self.component, code).inc()
        record = dead_letter(
            component=self.component, reason_code=code, reason=reason, topic=ctx.topic,
            partition=ctx.partition, offset=ctx.offset, key=key, value=value,
            timestamp_ms=timestamp, headers=list(headers or []),
        )  # fmt: skip
        return [(DLQ_TOPIC, (key or b"").decode("utf-8", "replace"),
                 self.codec.encode(DLQ_TOPIC, record))]

    def decode(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
               headers: Any) -> tuple[str, dict[str, Any]] | list[Routed]:
        """(key, record), or the dead letter to emit instead."""
        skey = decode_key(key)
        if skey is None:
            return self.dlq("UNDECODABLE", "key is not UTF-8", key, value, timestamp, headers)
        try:
            return skey, self.codec.decode(topic, value)
        except UnknownSchemaError as exc:
            return self.dlq("UNKNOWN_SCHEMA", str(exc), key, value, timestamp, headers)
        except DecodeError as exc:
            return self.dlq("UNDECODABLE", str(exc), key, value, timestamp, headers)

    def encode(self, topic: str, key: str, value: dict[str, Any]) -> Routed:
        return (topic, key, self.codec.encode(topic, value))


def route(app: Application, sdf: Any, topics: list[str], *more: Any) -> None:
    """One to_topic for every output: the topic comes from the routed value. `more`
    dataframes (other inputs of the same app) share the output topics."""
    outputs = {name: app.topic(name, key_serializer="str", value_serializer=RoutedSerializer())
               for name in topics}
    for each in (sdf, *more):
        each.to_topic(lambda value, *_: outputs[value[0]], key=lambda value: value[1])
