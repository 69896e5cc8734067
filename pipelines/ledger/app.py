"""The ledger as a Quix Streams application (exactly-once).

One stream over `payments.commands` (public), `payments.privileged` (only
privileged principals may write it) and `ledger.legs` (internal), joined with
`StreamingDataFrame.concat`, so an account's commands and legs share one
state store and one writer. Each input yields encoded outputs for
`ledger.events` and the dead-letter topic, and legs that wait for the checkpoint
and leave as one `LegBatch` per destination partition; Quix commits the state
changelog, those outputs and the input offsets in one Kafka transaction per
checkpoint.

Everything that decides anything lives in `pipelines.ledger.domain`; this module
only decodes, routes and encodes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from quixstreams import Application, message_context
from quixstreams.state import State

from paystream import batching, ids, kafka, liveness, metrics, topics, tracing
from paystream import logging as plog
from paystream.batching import COMMAND_BATCH, LEG_BATCH
from paystream.codec import Codec, spec_of
from paystream.commands import is_privileged
from paystream.deadletter import DLQ_TOPIC, dead_letter
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.partitioning import key_for_partition, partition_for
from paystream.settings import Settings, get_settings
from paystream.stream import quix_compat
from paystream.stream.quixapp import build_application, inputs
from pipelines.ledger import clock, domain

COMPONENT = "ledger"
GROUP = f"paystream-{COMPONENT}"  # as quixapp.build_application names it


def changelog_name(ledger: topics.LedgerTopics) -> str:
    """The state store's changelog: Quix names it after the group and the stream's
    sorted input topics, so each generation of the inputs has its own."""
    return f"changelog__{GROUP}--" + "--".join(sorted(ledger.inputs)) + "--default"


CHANGELOG = changelog_name(topics.ledger_topics(None))
COMMAND = "io.paystream.commands.Command"
LEG = "io.paystream.ledger.Leg"
log = logging.getLogger("paystream.ledger")

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


class _Emit:
    """The outputs of one input record, produced through the checkpoint's
    transactional producer: events one per record (the public contract of
    `ledger.events`), legs coalesced into one `LegBatch` per destination partition."""

    __slots__ = ("dead", "events", "legs")

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.legs: dict[int, list[bytes]] = {}
        self.dead: list[tuple[str, bytes]] = []


# Legs for one partition wait for the checkpoint's commit and leave as one LegBatch,
# or sooner when this many have gathered (a record stays far below the broker's 1 MiB
# message limit: a leg body is about 200 bytes).
LEG_BATCH_MAX_ITEMS = 1024


class _PendingLegs:
    """Encoded legs bound for one partition of `ledger.legs`, gathered across the
    inputs of one checkpoint. Carrying them per input record sent about one leg per
    record under uniform load (a command batch of a few items spreads over all
    partitions), and a record is what costs the ledger and the broker most."""

    __slots__ = ("bodies", "origin", "timestamp")

    def __init__(self, origin: str, timestamp: int) -> None:
        self.origin = origin
        self.timestamp = timestamp
        self.bodies: list[bytes] = []

    def add(self, bodies: list[bytes], timestamp: int) -> None:
        self.bodies.extend(bodies)
        # The earliest input's time: a leg inherits its command's timestamp for the
        # end-to-end latency metric, which may then overstate, never understate.
        if timestamp < self.timestamp:
            self.timestamp = timestamp


class LedgerProcessor:
    """Decodes, routes and encodes; every decision is `pipelines.ledger.domain`'s.

    A record on `payments.commands` is a single `Command` or a `CommandBatch`; on
    `ledger.legs` a single `Leg` (written by earlier versions) or a `LegBatch`.
    Each item of a batch is applied as if it came alone, in order: its own dedupe
    entry, its own outcome, its own dead letter. An item whose account does not
    belong to the consumed partition is dead-lettered (`MISROUTED`): a producer that
    computed partitions with a wrong count must never give an account two writers.
    """

    def __init__(self, codec: Codec, producer: quix_compat.TransactionalProducer, partitions: int,
                 account_memo: int = 0, limits: domain.HoldLimits | None = None,
                 ledger: topics.LedgerTopics | None = None) -> None:
        self.codec = codec
        # The generation's topics: `domain.LEGS` is the rules' name for "a leg", this the topic.
        self.ledger = ledger or topics.ledger_topics(None)
        self.account_memo = account_memo
        self.limits = limits or domain.HoldLimits()
        self.producer = producer
        self.partitions = partitions
        self.outcomes = Outcomes()
        self.traced = tracing.enabled()
        self._leg_header = b""
        self._legs: dict[int, _PendingLegs] = {}
        self._events: list[tuple[str, bytes, Any, int]] = []

    # -- dead letters ---------------------------------------------------------------
    def _dlq(self, emit: _Emit, code: str, reason: str, key: bytes | None, value: bytes | None,
             timestamp: int, headers: Any, item: int | None = None) -> None:
        ctx = message_context()
        account = (key or b"").decode("utf-8", "replace")
        where = f"{ctx.topic}[{ctx.partition}]@{ctx.offset}" + (f" item {item}" if item is not None else "")
        log.warning("dead-lettering %s: %s", where, reason,
                    extra=plog.payment_fields(account=account, reason_code=code))
        metrics.DEAD_LETTERS.labels(COMPONENT, code).inc()
        record = dead_letter(
            component=COMPONENT, reason_code=code, reason=reason, topic=ctx.topic,
            partition=ctx.partition, offset=ctx.offset, key=key, value=value,
            timestamp_ms=timestamp, headers=list(headers or []), item=item,
        )  # fmt: skip
        emit.dead.append((account, self.codec.encode(DLQ_TOPIC, record)))

    def _dlq_item(self, emit: _Emit, topic: str, code: str, reason: str, item: dict[str, Any], index: int,
                  timestamp: int, headers: Any) -> None:
        """A bad item of a batch, dead-lettered alone as the single record it stands for,
        so `paystream dlq replay` can send it again after a fix."""
        account = str(item.get("account_id") or "")
        self._dlq(emit, code, reason, account.encode(), self.codec.encode(topic, item), timestamp, headers, index)

    # -- records ----------------------------------------------------------------------
    def __call__(self, value: bytes, key: bytes, timestamp: int, headers: Any, state: State) -> None:
        emit = _Emit()
        try:
            self._apply(emit, value, key, timestamp, headers, state)
        except BaseException:
            self.discard_uncommitted()
            raise
        self._produce(emit, timestamp, headers)

    def discard_uncommitted(self) -> None:
        """After an input or a commit that failed (Quix stops the app anyway): the
        account memos (rules mutate them in place) and the pending legs must not
        outlive the state that did not commit."""
        quix_compat.forget_partition_locals()
        self._legs.clear()
        self._events.clear()

    def _stores(self, state: State) -> domain.BatchStores:
        """Every input, single or batch, goes through one `BatchStores`, so the
        partition's account memo sees every write."""
        limit = self.account_memo
        memo = quix_compat.partition_local(state, lambda: domain.AccountMemo(limit)) if limit else None
        clock_key = domain.clock_key(message_context().partition, self.partitions)
        return domain.BatchStores(lambda account: quix_compat.state_for(state, account.encode()), memo,
                                  clock=clock_key, limits=self.limits)

    def _apply(self, emit: _Emit, value: bytes, key: bytes, timestamp: int, headers: Any, state: State) -> None:
        topic = message_context().topic
        try:
            skey = key.decode("utf-8") if key is not None else ""
        except UnicodeDecodeError:
            return self._dlq(emit, "UNDECODABLE", "key is not UTF-8", key, value, timestamp, headers)
        try:
            name, record = self.codec.decode_typed(topic, value)
        except UnknownSchemaError as exc:
            return self._dlq(emit, "UNKNOWN_SCHEMA", str(exc), key, value, timestamp, headers)
        except DecodeError as exc:
            return self._dlq(emit, "UNDECODABLE", str(exc), key, value, timestamp, headers)
        if topic in self.ledger.command_topics:
            if name == COMMAND:
                self._command(emit, state, record, skey, key, value, timestamp, headers)
            elif name == COMMAND_BATCH:
                self._batch(emit, state, record, topic, timestamp, headers)
            else:
                self._dlq(emit, "FORBIDDEN_TYPE", f"{name} is not accepted on {topic}", key, value,
                          timestamp, headers)
        elif name == LEG:
            if record["account_id"] != skey:
                return self._dlq(emit, "KEY_MISMATCH", "leg key differs from account_id", key, value,
                                 timestamp, headers)
            if (problem := self._misrouted(skey)) is not None:
                return self._dlq(emit, "MISROUTED", problem, key, value, timestamp, headers)
            self._emit(emit, self._apply_rules(state, [record], timestamp, legs=True), timestamp,
                       headers)
        elif name == LEG_BATCH:
            self._batch(emit, state, record, topic, timestamp, headers)
        else:
            self._dlq(emit, "FORBIDDEN_TYPE", f"{name} is not accepted on {topic}", key, value, timestamp, headers)
        return None

    def _command(self, emit: _Emit, state: State, record: dict[str, Any], skey: str, key: bytes, value: bytes,
                 timestamp: int, headers: Any) -> None:
        if self.traced:
            tracing.annotate(payment_id=record.get("command_id"), account=skey, command_type=record.get("type"))
        problem = domain.command_problem(record, skey)
        if problem is not None:
            return self._dlq(emit, "INVALID", problem, key, value, timestamp, headers)
        if (problem := self._unprivileged(record)) is not None:
            return self._dlq(emit, "UNPRIVILEGED", problem, key, value, timestamp, headers)
        if (problem := self._misrouted(skey)) is not None:
            return self._dlq(emit, "MISROUTED", problem, key, value, timestamp, headers)
        self._emit(emit, self._apply_rules(state, [record], timestamp, legs=False), timestamp,
                   headers)
        return None

    def _misrouted(self, account: str) -> str | None:
        """Why this partition is not the account's writer, or None. A producer whose
        partitioner is not murmur2 (librdkafka's default is not) would otherwise give
        an account a second writer."""
        owner = partition_for(account, self.partitions)
        partition = message_context().partition
        if owner == partition:
            return None
        return f"account {account} belongs to partition {owner} of {self.partitions}, not {partition}"

    def _batch(self, emit: _Emit, state: State, batch: dict[str, Any], topic: str, timestamp: int,
               headers: Any) -> None:
        partition = message_context().partition
        is_command = topic in self.ledger.command_topics
        on_public = topic == self.ledger.commands
        accepted: list[dict[str, Any]] = []
        for index, item in enumerate(batch["items"]):
            account = item.get("account_id")
            if is_command:
                problem = domain.command_problem(item, account)
            else:
                problem = None if domain.is_uuid(account) else f"leg account_id {account!r} is not a UUID"
            if problem is not None:
                self._dlq_item(emit, topic, "INVALID", problem, item, index, timestamp, headers)
            elif on_public and (problem := self._unprivileged(item)) is not None:
                self._dlq_item(emit, topic, "UNPRIVILEGED", problem, item, index, timestamp, headers)
            elif (owner := partition_for(account, self.partitions)) != partition:
                self._dlq_item(emit, topic, "MISROUTED",
                               f"account {account} belongs to partition {owner} of {self.partitions}, not "
                               f"{partition} (the producer assumed {batch['partition_count']} partitions)",
                               item, index, timestamp, headers)  # fmt: skip
            else:
                accepted.append(item)
        outputs = self._apply_rules(state, accepted, timestamp, legs=not is_command)
        self._emit(emit, outputs, timestamp, headers)

    def _apply_rules(
        self, state: State, items: list[dict[str, Any]], timestamp: int, *, legs: bool
    ) -> list[domain.Output]:
        try:
            return domain.apply_batch(self._stores(state), items, timestamp, legs=legs)
        except domain.InvariantBroken as exc:
            # A rule bug would create or lose money. Stop here: the exception aborts
            # the Kafka transaction (no state, output or offset of this checkpoint is
            # ever visible), the process exits and, restarted, stops again on the
            # same record. Money stays where it was until the rules are fixed.
            metrics.INVARIANT_VIOLATIONS.labels(COMPONENT).inc()
            log.critical("money invariant broken, stopping: %s (items %s)", exc,
                         [i.get("command_id") or i.get("leg_id") for i in items])
            raise

    def _emit(self, emit: _Emit, outputs: list[domain.Output], timestamp: int, headers: Any) -> None:
        codec = self.codec
        for o in outputs:
            if o.topic == domain.EVENTS:
                emit.events.append((o.key, codec.encode(domain.EVENTS, o.value)))
            elif o.topic == domain.LEGS:
                p = partition_for(o.key, self.partitions)
                bodies = emit.legs.get(p)
                if bodies is None:
                    bodies = emit.legs[p] = []
                bodies.append(codec.encode_body(self.ledger.legs, o.value))
            else:  # domain.DEAD: an item the rules cannot apply, as the single record it stands for
                v = o.value
                self._dlq(emit, v["code"], v["reason"], o.key.encode(), codec.encode(self.ledger.legs, v["item"]),
                          timestamp, headers)
        self.outcomes.observe(outputs, timestamp)

    def _produce(self, emit: _Emit, timestamp: int, headers: Any) -> None:
        if self.traced:
            headers = tracing.replace_trace_headers(headers or [], tracing.inject())
        produce = self.producer.produce
        self._events.extend((account, value, headers, timestamp) for account, value in emit.events)
        if emit.legs:
            ctx = message_context()
            origin = f"{ctx.topic}:{ctx.partition}:{ctx.offset}"
            for p, bodies in emit.legs.items():
                pending = self._legs.get(p)
                if pending is None:
                    pending = self._legs[p] = _PendingLegs(origin, timestamp)
                pending.add(bodies, timestamp)
                # Traced inputs keep their own leg records, so each carries its trace.
                if self.traced or len(pending.bodies) >= LEG_BATCH_MAX_ITEMS:
                    self._produce_legs(p, headers)
        for account, value in emit.dead:
            produce(topic=DLQ_TOPIC, value=value, key=account, headers=headers, timestamp=timestamp)

    def flush_outputs(self) -> None:
        """Produce every pending event and leg batch: called just before the checkpoint
        commits, inside its transaction (`quix_compat.before_commit`)."""
        produce = self.producer.produce
        for account, value, headers, timestamp in self._events:
            produce(topic=domain.EVENTS, value=value, key=account, headers=headers, timestamp=timestamp)
        self._events.clear()
        for p in list(self._legs):
            self._produce_legs(p, None)

    def _produce_legs(self, p: int, headers: Any) -> None:
        pending = self._legs.pop(p)
        if not self._leg_header:
            self._leg_header = self.codec.header(self.ledger.legs, LEG_BATCH)
        # The batch id is derived from the first input that contributed to it: a re-run
        # after a crash that batches alike writes the same id, which keeps dead letters
        # and logs comparable (each leg keeps its own id, which is what dedupes it).
        batch_id = ids.uuid5(domain.NAMESPACE, f"legs:{pending.origin}:{p}")
        value = batching.assemble(self._leg_header, batch_id, p, self.partitions, pending.bodies)
        self.producer.produce(topic=self.ledger.legs, value=value, key=key_for_partition(p, self.partitions),
                              partition=p, headers=headers, timestamp=pending.timestamp)

    def _unprivileged(self, command: dict[str, Any]) -> str | None:
        """Why a command read from `payments.commands` may not be applied, or None.

        Only called for records of that topic: anyone with a producer principal may
        write it, so it carries user commands only (`paystream.commands.is_privileged`)."""
        if message_context().topic != self.ledger.commands or not is_privileged(command):
            return None
        return (f"{command.get('type')} is accepted only on {self.ledger.privileged}, which only privileged "
                "principals may write")


def _partition_count(settings: Settings) -> int:
    """The partition count every routing decision uses, checked against the broker.

    Legs and batches are routed by a partition computed here; were it not the count
    the topics really have, a credit could land on a partition that is not its
    account's writer. So the ledger refuses to start unless ops/topics.toml (or the
    generation's name) and the broker agree, for every input; and it refuses to start
    on a generation that was grown past, where it would be a second writer of
    accounts whose state has moved on (docs/PARTITIONS.md)."""
    ledger = settings.ledger_topics
    expected = spec_of(ledger.commands).partitions
    admin = kafka.admin(settings)
    existing = admin.list_topics(timeout=30).topics
    if newer := topics.successors(existing, ledger):
        raise RuntimeError(
            f"the ledger's inputs were grown past this generation ({ledger.commands}): {', '.join(newer)} "
            "exist. Run the ledger with PAYSTREAM_LEDGER_PARTITIONS set to the newest generation's count"
        )
    _require_moved_state(admin, existing, ledger)
    for name in ledger.inputs:
        spec = spec_of(name).partitions
        actual = len(existing[name].partitions) if name in existing else 0
        if spec != expected or actual != expected:
            raise RuntimeError(
                f"{name} has {actual} partitions on the broker and {spec} in ops/topics.toml; the ledger needs "
                f"{expected} for every input (run `paystream topics apply`, or `paystream partitions grow` "
                "for a grown generation)"
            )
    return expected


def _require_moved_state(admin: Any, existing: Any, ledger: topics.LedgerTopics) -> None:
    """A grown generation whose predecessor is still on the broker starts only once the
    predecessor's state has moved here (`paystream partitions grow --step cutover`
    seals the old offsets with `topics.sealed_marker`). Started earlier, it would apply
    commands to accounts it does not know yet, beside an old ledger that may still run."""
    before = topics.predecessors(existing, ledger)
    if not before:
        return
    old = before[0]
    wanted = [TopicPartition(t, p) for t in old.inputs if t in existing for p in existing[t].partitions]
    request = ConsumerGroupTopicPartitions(GROUP, wanted)
    done = admin.list_consumer_group_offsets([request])[GROUP].result(timeout=30)
    marker = topics.sealed_marker(ledger)
    unsealed = [f"{tp.topic}[{tp.partition}]" for tp in done.topic_partitions or [] if tp.metadata != marker]
    if unsealed or not done.topic_partitions:
        raise RuntimeError(
            f"the state of {old.commands} has not moved to {ledger.commands} yet ({len(unsealed)} partitions not "
            f"sealed): run `paystream partitions grow --to {ledger.partitions} --step cutover` first "
            "(docs/PARTITIONS.md)"
        )


def membership(settings: Settings) -> dict[str, Any]:
    """The ledger consumer's group membership settings (docs/LEDGER.md, "Failover")."""
    config: dict[str, Any] = {"session.timeout.ms": settings.ledger_session_timeout_ms,
                              "heartbeat.interval.ms": settings.ledger_heartbeat_interval_ms}
    if settings.ledger_static_membership:
        config["group.instance.id"] = f"paystream-{COMPONENT}-{settings.ledger_instance}"
    return config


def transactions(settings: Settings) -> dict[str, Any]:
    """The ledger producer's transaction timeout (docs/LEDGER.md, "Failover").
    librdkafka refuses a message timeout longer than the transaction's."""
    timeout = settings.ledger_transaction_timeout_ms
    return {"transaction.timeout.ms": timeout,
            "message.timeout.ms": min(timeout, kafka.QUIX_PRODUCER["message.timeout.ms"])}


def build_app(settings: Settings | None = None) -> Application:
    return _build(settings or get_settings())[0]


def _build(settings: Settings) -> tuple[Application, clock.Ticker]:
    """The app, and the ticker that writes its partitions' time (started by `run`), on
    the partition count checked once."""
    instance = settings.ledger_instance
    app = build_application(
        settings,
        component=COMPONENT,
        instance=instance,
        commit_interval=settings.ledger_commit_interval,
        # Outputs only become visible when the checkpoint commits, and the commit
        # flushes, so lingering for the whole interval costs no latency: outputs
        # leave in the commit's flush (or when a batch fills), in few large
        # requests. On this machine a request costs the broker far more than a
        # record, and the broker shares the two cores with the ledger: 20 ms ->
        # one interval (100 ms) took hot from 4,574-5,332/s to 5,340-5,966/s,
        # the broker from 42-54 to 31-38 us per transfer (docs/LEDGER.md).
        linger_ms=max(20, int(settings.ledger_commit_interval * 1000)),
        fetch_wait_ms=settings.ledger_fetch_wait_ms,
        poll_timeout=0.05,
        rocksdb_options=quix_compat.changelog_durable_state(),
        consumer_extra=membership(settings),
        producer_extra=transactions(settings),
    )
    codec = Codec(settings.registry_url)
    partitions = _partition_count(settings)
    ledger = settings.ledger_topics
    codec.header(ledger.legs, LEG_BATCH)  # a missing registration stops the start, not the first leg
    # Ledger correctness never depends on timestamp order *across* the inputs (each
    # topic's partition stays in order, and any interleaving of a command with a leg
    # is a valid history), so alignment is off unless asked for; docs/LEDGER.md.
    sdf = inputs(app, *ledger.inputs, time_alignment=settings.ledger_time_alignment)
    limits = domain.HoldLimits(settings.ledger_hold_default_seconds * 1000, settings.ledger_hold_max_seconds * 1000)
    processor = LedgerProcessor(codec, quix_compat.TransactionalProducer(app), partitions,
                                settings.ledger_account_memo, limits, ledger)
    quix_compat.before_commit(app, processor.flush_outputs, processor.discard_uncommitted)
    quix_compat.fast_changelog(app)
    if settings.ledger_commit_when_idle_after is not None:
        quix_compat.commit_when_idle(app, settings.ledger_commit_when_idle_after)
    fn, _ = tracing.instrument_quix(metrics.InstrumentedProcessor(processor, COMPONENT), COMPONENT)
    sdf.apply(fn, stateful=True, metadata=True)
    # The ticker's thread gets a codec of its own: the processor's caches are the loop's.
    return app, clock.Ticker(settings, Codec(settings.registry_url), partitions, ledger.legs)


def run(settings: Settings | None = None) -> None:
    app, ticker = _build(settings or get_settings())
    ticker.start()
    try:
        liveness.run_app(app, COMPONENT)
    finally:
        ticker.stop()


if __name__ == "__main__":
    run()
