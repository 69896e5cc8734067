"""The ledger as a Quix Streams application (exactly-once).

One stream over `payments.commands` (public) and `ledger.legs` (internal), joined
with `StreamingDataFrame.concat`, so an account's commands and legs share one
state store and one writer. Each input yields encoded outputs for
`ledger.events`, `ledger.legs` and the dead-letter topic; Quix commits the state
changelog, those outputs and the input offsets in one Kafka transaction per
checkpoint.

Everything that decides anything lives in `pipelines.ledger.domain`; this module
only decodes, routes and encodes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.state import State

from paystream import kafka, liveness, metrics, tracing
from paystream import logging as plog
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC, dead_letter
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.settings import Settings, get_settings
from pipelines.ledger import domain

COMMANDS = "payments.commands"
COMPONENT = "ledger"
log = logging.getLogger("paystream.ledger")

# An output travels through the dataframe as (topic, key, encoded value).
Routed = tuple[str, str, bytes]

# Single-writer metrics (the processing loop is one thread): no lock per message.
OUTCOMES = metrics.local_counter(
    "paystream_ledger_outcomes_total", "terminal outcomes of commands (replays excluded)",
    ["command_type", "status", "reason"],
)  # fmt: skip
REPLAYS = metrics.local_counter(
    "paystream_ledger_replays_total", "repeated command ids answered without effect", ["command_type"]
)
E2E_SECONDS = metrics.local_histogram(
    "paystream_ledger_e2e_seconds",
    "command produced (its Kafka timestamp, which the ledger's legs inherit) to its terminal outcome",
    ["command_type"], buckets=metrics.LATENCY_BUCKETS,
)  # fmt: skip


class Outcomes:
    """Counts terminal events and observes end-to-end latency; children cached per label set."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def observe(self, outputs: list[domain.Output], timestamp_ms: int) -> None:
        for o in outputs:
            if o.topic != domain.EVENTS or not o.value["terminal"]:
                continue
            v = o.value
            ctype = v["command_type"]
            if v["replay"]:
                REPLAYS.labels(ctype).inc()
                continue
            key = (ctype, v["status"], v["reason"] or "")
            c = self._counts.get(key)
            if c is None:
                c = self._counts[key] = OUTCOMES.labels(*key)
            c.inc()
            h = self._latency.get(ctype)
            if h is None:
                h = self._latency[ctype] = E2E_SECONDS.labels(ctype)
            h.observe(max(0.0, time.time() - timestamp_ms / 1000))


class _Routed(Serializer):
    """Serializer for values that are already Avro bytes (encoded by `Codec`)."""

    def __call__(self, value: Routed, ctx: SerializationContext) -> bytes:
        return value[2]


class LedgerProcessor:
    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.outcomes = Outcomes()
        self.traced = tracing.enabled()

    def _dlq(self, code: str, reason: str, key: bytes | None, value: bytes | None,
             timestamp: int, headers: Any) -> list[Routed]:
        ctx = message_context()
        account = (key or b"").decode("utf-8", "replace")
        log.warning("dead-lettering %s[%s]@%s: %s", ctx.topic, ctx.partition, ctx.offset, reason,
                    extra=plog.payment_fields(account=account, reason_code=code))
        metrics.DEAD_LETTERS.labels(COMPONENT, code).inc()
        record = dead_letter(
            component=COMPONENT, reason_code=code, reason=reason, topic=ctx.topic,
            partition=ctx.partition, offset=ctx.offset, key=key, value=value,
            timestamp_ms=timestamp, headers=list(headers or []),
        )  # fmt: skip
        return [(DLQ_TOPIC, (key or b"").decode("utf-8", "replace"), self.codec.encode(DLQ_TOPIC, record))]

    def __call__(self, value: bytes, key: bytes, timestamp: int, headers: Any, state: State) -> list[Routed]:
        topic = message_context().topic
        try:
            skey = key.decode("utf-8") if key is not None else ""
        except UnicodeDecodeError:
            return self._dlq("UNDECODABLE", "key is not UTF-8", key, value, timestamp, headers)
        try:
            if topic == COMMANDS:
                writer = self.codec.writer_name(value)
                if writer is not None and writer != "io.paystream.commands.Command":
                    return self._dlq("FORBIDDEN_TYPE", f"{writer} is not accepted on {COMMANDS}",
                                     key, value, timestamp, headers)
            record = self.codec.decode(topic, value)
        except UnknownSchemaError as exc:
            return self._dlq("UNKNOWN_SCHEMA", str(exc), key, value, timestamp, headers)
        except DecodeError as exc:
            return self._dlq("UNDECODABLE", str(exc), key, value, timestamp, headers)
        if self.traced:
            tracing.annotate(payment_id=record.get("payment_id") or record.get("command_id"), account=skey,
                             command_type=record.get("type") or record.get("kind"))
        if topic == COMMANDS:
            problem = domain.command_problem(record, skey)
            if problem is not None:
                return self._dlq("INVALID", problem, key, value, timestamp, headers)
            outputs = domain.apply_command(state, record, timestamp)
        else:
            if record["account_id"] != skey:
                return self._dlq("KEY_MISMATCH", "leg key differs from account_id", key, value, timestamp, headers)
            outputs = domain.apply_leg(state, record, timestamp)
        self.outcomes.observe(outputs, timestamp)
        return [(o.topic, o.key, self.codec.encode(o.topic, o.value)) for o in outputs]


def build_app(settings: Settings | None = None) -> Application:
    settings = settings or get_settings()
    instance = settings.ledger_instance
    app = Application(
        broker_address=settings.bootstrap_servers,
        consumer_group="paystream-ledger",
        processing_guarantee="exactly-once",
        commit_interval=settings.ledger_commit_interval,
        auto_offset_reset="earliest",
        # Skipping data silently is never right for a ledger: fail loudly instead.
        auto_recover_from_source_offset_out_of_range=False,
        state_dir=str(settings.home / "state" / f"ledger-{instance}"),
        # A stable id per instance: a restarted instance fences its zombie at once
        # instead of leaving consumers waiting out the transaction timeout.
        producer_extra_config={
            "transactional.id": f"paystream-ledger-{instance}",
            # Outputs only become visible when the checkpoint commits, and the commit
            # flushes, so lingering within the interval costs no latency; it batches a
            # checkpoint's messages into fewer requests, which the broker on the same
            # two cores turns into CPU for the ledger: 2 ms -> 20 ms took full speed
            # from 1,909-2,062/s to 2,093-2,298/s at the same p99 (docs/LEDGER.md).
            "linger.ms": 20,
            **kafka.QUIX_PRODUCER,
        },
        consumer_extra_config={
            "fetch.wait.max.ms": 20,
            **kafka.QUIX_CONSUMER,
            **metrics.quix_consumer_config(COMPONENT, settings, instance),
        },
        consumer_poll_timeout=0.05,
        # With paystream's JSON logging configured, Quix's records go through it.
        loglevel=None if plog.configured() else "INFO",
    )
    metrics.time_commits(app, COMPONENT)
    codec = Codec(settings.registry_url)
    commands = app.topic(COMMANDS, key_deserializer="bytes", value_deserializer="bytes")
    legs_in = app.topic(domain.LEGS, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        name: app.topic(name, key_serializer="str", value_serializer=_Routed())
        for name in (domain.EVENTS, domain.LEGS, DLQ_TOPIC)
    }
    sdf = app.dataframe(commands).concat(app.dataframe(legs_in))
    if not settings.ledger_time_alignment:
        # concat() turns on Quix's cross-topic timestamp alignment, which holds a
        # partition's commands back while its legs partition has an open
        # transaction: always, under load, since the ledger itself writes the legs.
        # Ledger correctness never depends on timestamp order *across* the two
        # inputs (each topic's partition stays in order, and any interleaving of a
        # command with a leg is a valid history), so we turn it off. Measured in
        # docs/LEDGER.md. Quix has no public switch for this yet.
        app._dataframe_registry._requires_time_alignment = False
    fn, after = tracing.instrument_quix(metrics.InstrumentedProcessor(LedgerProcessor(codec), COMPONENT), COMPONENT)
    sdf = after(sdf.apply(fn, stateful=True, expand=True, metadata=True))
    sdf.to_topic(lambda value, *_: outputs[value[0]], key=lambda value: value[1])
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
