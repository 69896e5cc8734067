"""The gateway's two Kafka paths: commands out, outcomes back.

`CommandSender` awaits the broker's acknowledgement (acks=all) before a request
answers: a 202 means the command is durable in `payments.commands`, and a
failure before that point lets the caller release the idempotency key.

`ResultListener` reads `ledger.events` (read_committed) in a thread, positioned
at the end when the gateway starts and assigned manually, so no consumer group
is joined, rebalanced or committed. Each event's command id is peeked from the
Avro bytes at a fixed offset; only events someone waits for are decoded, which
keeps the listener cheap when many gateway processes each read every event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer, TopicPartition

from paystream import kafka, topics, tracing
from paystream.batching import COMMAND_BATCH, CommandBatcher
from paystream.codec import Codec
from paystream.commands import topic_for
from paystream.consumer import peek_command_id
from paystream.settings import Settings

EVENTS_TOPIC = topics.EVENTS
log = logging.getLogger("paystream.gateway.ledger_io")


class SendError(Exception):
    """The command did not reach Kafka (or we cannot know that it did)."""


class CommandSender:
    """Concurrent commands bound for one partition are coalesced into batch records
    (`paystream.batching.CommandBatcher`), which the ledger applies for a fraction
    of a single record's cost; each request still waits for the acknowledgement of
    the record that carries its command."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self.timeout = settings.gateway_produce_timeout_seconds
        self.settings = settings
        self.ledger = settings.ledger_topics  # the generation commands go to (docs/PARTITIONS.md)
        self.producer: Producer = self._new_producer()
        # Two message timeouts without a single delivery while messages time out: stuck.
        self.watch = kafka.StuckProducerWatch(stuck_after=2 * self.timeout)
        self.replaced = 0
        self._retired: list[tuple[Producer, float]] = []
        self._stop = threading.Event()
        self._settled: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], Any]] = deque()
        self._thread = threading.Thread(target=self._poll, name="gw-producer-poll", daemon=True)
        self.batcher: CommandBatcher | None = None

    def _new_producer(self) -> Producer:
        return kafka.producer(self.settings, **{"message.timeout.ms": int(self.timeout * 1000), "linger.ms": 1})

    def _new_batcher(self, partitions: int | None = None) -> CommandBatcher | None:
        """`block=False`: a full local queue fails the batch's requests (503, the
        client retries with its key) instead of blocking the event loop."""
        if self.settings.gateway_batch_max_items <= 1 or tracing.enabled():
            return None
        topic = self.ledger.commands
        if partitions is None:
            partitions = len(self.producer.list_topics(topic, timeout=10).topics[topic].partitions)
        return CommandBatcher(
            self.producer, header=self.codec.header(topic, COMMAND_BATCH),
            command_schema_id=self.codec.schema_id(topic), partitions=partitions,
            max_items=self.settings.gateway_batch_max_items, linger_ms=self.settings.gateway_batch_linger_ms,
            topic=topic, block=False,
        )  # fmt: skip

    def start(self) -> None:
        self.codec.schema_id(self.ledger.commands)  # fail at startup, not on the first request
        self.batcher = self._new_batcher()
        self._thread.start()

    def _replace_producer(self) -> None:
        """See `paystream.kafka.StuckProducerWatch`: librdkafka can leave a partition
        leaderless for good after a broker restart; a new producer finds the leader."""
        log.warning("no command delivered for %.0fs while messages time out; replacing the Kafka producer "
                    "(librdkafka #5430)", self.watch.stuck_after)
        old, self.producer = self.producer, self._new_producer()
        if self.batcher is not None:
            # Commands still waiting in the old batcher fail now (503, retried with the
            # same key); no metadata call here, the broker is what is unwell.
            stale, self.batcher = self.batcher, self._new_batcher(partitions=self.batcher.partitions)
            stale.abort(SendError("the Kafka producer was replaced; retry"))
        self.watch.reset()
        self.replaced += 1
        # Fail what the old producer still holds now (503, the client retries with its key)
        # instead of after each message's timeout; its reports still have to be served.
        old.purge()
        self._retired.append((old, time.monotonic() + 2 * self.timeout))

    def _serve_retired(self) -> None:
        for item in list(self._retired):
            old, until = item
            old.poll(0)
            if len(old) == 0 or time.monotonic() > until:
                self._retired.remove(item)

    def _poll(self) -> None:
        """Serve delivery reports; the futures they settle are handed to each event
        loop once per poll, not once per message (each hand-over is a wake-up)."""
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception:  # the thread that serves every delivery report must not die
                log.exception("gateway producer poll failed; going on")
                time.sleep(0.1)

    def _poll_once(self) -> None:
        self.producer.poll(0.05)
        if self.watch.stuck():
            self._replace_producer()
        if self._retired:
            self._serve_retired()
        if self._settled:
            # Reports arrive from this thread, the batcher's and request threads: a
            # deque's popleft never loses one appended meanwhile.
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
            while self._settled:
                loop, fut, err = self._settled.popleft()
                by_loop.setdefault(loop, []).append((fut, err))
            for loop, items in by_loop.items():
                loop.call_soon_threadsafe(_settle_all, items)

    async def send(self, cmd: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            self.watch.delivered(err)
            self._settled.append((loop, fut, err))

        topic = topic_for(cmd, self.ledger)  # deposits, withdrawals, freezes (admin role): payments.privileged
        value = self.codec.encode(topic, cmd)
        # The rest of the request's log lines are about this payment (docs/OBSERVABILITY.md).
        structlog.contextvars.bind_contextvars(payment_id=cmd["command_id"], account=cmd["account_id"])
        extra = {"headers": tracing.inject()} if tracing.enabled() else {}  # W3C traceparent
        try:
            if self.batcher is not None and topic == self.ledger.commands:
                self.batcher.send(cmd["account_id"], value, on_delivery=delivered)
            else:
                self.producer.produce(
                    topic, key=cmd["account_id"].encode(), value=value, on_delivery=delivered, **extra
                )
        except (BufferError, Exception) as exc:
            raise SendError(f"cannot enqueue command: {exc}") from exc
        try:
            # `_settle_all` skips a future already done, so a cancelled wait is safe.
            async with asyncio.timeout(self.timeout + 1):
                await fut
        except TimeoutError as exc:
            raise SendError("no delivery report from Kafka in time") from exc

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._stop.set()
        self.producer.flush(5)


def _settle_all(items: list[tuple[asyncio.Future[None], Any]]) -> None:
    for fut, err in items:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(SendError(str(err)))


class Waiter:
    """Terminal events for one command id, delivered to one request's event loop."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()


def _deliver(items: list[tuple[Waiter, dict[str, Any]]]) -> None:
    for w, event in items:
        w.queue.put_nowait(event)


class ResultListener:
    def __init__(self, settings: Settings, codec: Codec, group_suffix: str) -> None:
        self.codec = codec
        self.consumer = kafka.consumer(
            settings,
            f"paystream-gateway-{group_suffix}",
            **{"fetch.wait.max.ms": 10, "enable.partition.eof": False},
        )
        self._waiters: dict[str, list[Waiter]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gw-results", daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        """Assign every partition at its current end before any request is served:
        a command sent after this point cannot have its outcome missed."""
        md = self.consumer.list_topics(EVENTS_TOPIC, timeout=10)
        tps = []
        for p in sorted(md.topics[EVENTS_TOPIC].partitions):
            _, high = self.consumer.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, p), timeout=10)
            tps.append(TopicPartition(EVENTS_TOPIC, p, high))
        self.consumer.assign(tps)
        self._thread.start()
        self.ready.set()

    def register(self, command_id: str) -> Waiter:
        w = Waiter(command_id)
        with self._lock:
            self._waiters[command_id].append(w)
        return w

    def unregister(self, w: Waiter) -> None:
        with self._lock:
            ws = self._waiters.get(w.command_id)
            if ws is None:
                return
            if w in ws:
                ws.remove(w)
            if not ws:
                del self._waiters[w.command_id]

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = kafka.consume_ready(self.consumer, 500, 0.1)
            except Exception:  # a broken consumer must not kill the gateway silently
                log.exception("ledger.events consume failed")
                self._stop.wait(1)
                continue
            found: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, dict[str, Any]]]] = {}
            for m in msgs:
                if m.error():
                    continue
                self._dispatch(m.value(), found)
            for loop, items in found.items():  # one wake-up per loop per batch
                loop.call_soon_threadsafe(_deliver, items)

    def _dispatch(
        self, data: bytes | None, found: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, dict[str, Any]]]]
    ) -> None:
        if not data:
            return
        cid = peek_command_id(data)
        if cid is not None and cid not in self._waiters:
            return
        try:
            event = self.codec.decode(EVENTS_TOPIC, data)
        except Exception:
            log.exception("undecodable ledger event")
            return
        if not event.get("terminal"):
            return
        with self._lock:
            ws = list(self._waiters.get(event["command_id"], ()))
        for w in ws:
            found.setdefault(w.loop, []).append((w, event))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.consumer.close()

