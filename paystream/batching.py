"""Batches of commands: the wire layout, and the client-side coalescer.

Why batches: the ledger's cost per Kafka record (consume, transaction
bookkeeping, Quix's per-message machinery, produce) was larger than its rules.
The single writer per account is what makes batching safe: nobody else touches
an account's state, so many commands for one partition can travel in one record
and be applied in memory between two commits. TigerBeetle's client coalesces
concurrent requests the same way; Kafka's own producer batches records too.

A batch is an Avro record (`schemas/command_batch.avsc`) whose `items` are
Commands. Avro encodes an array of records as a count followed by the records'
bodies back to back, so a client that already holds encoded single commands
builds a batch by concatenation (`assemble`), without decoding or re-encoding.
Each item keeps its own id, its own dedupe entry and its own outcome.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from paystream import topics
from paystream.avro_writer import long_bytes
from paystream.commands import COMMANDS_TOPIC
from paystream.partitioning import key_for_partition, partition_for

log = logging.getLogger("paystream.batching")

COMMANDS = COMMANDS_TOPIC
COMMAND_BATCH = "io.paystream.commands.CommandBatch"
LEGS = topics.LEGS
LEG_BATCH = "io.paystream.ledger.LegBatch"
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")


def assemble(header: bytes, batch_id: str, partition: int, partitions: int, bodies: Sequence[bytes]) -> bytes:
    """A batch in Confluent wire format from its items' Avro bodies (header excluded):
    the layout of `command_batch.avsc` and `leg_batch.avsc` (unit-tested against
    fastavro's own encoding)."""
    ident = batch_id.encode()
    parts = [header, long_bytes(len(ident)), ident, long_bytes(partition), long_bytes(partitions)]
    if bodies:
        parts.append(long_bytes(len(bodies)))
        parts.extend(bodies)
    parts.append(b"\x00")
    return b"".join(parts)


def body_of(wire: bytes, schema_id: int) -> bytes:
    """The Avro body of a single value in Confluent wire format, checked to be written
    with `schema_id` (a body written with another schema cannot join the batch)."""
    if len(wire) < HEADER_SIZE:
        raise ValueError("value is shorter than the Confluent header")
    magic, sid = _HEADER.unpack_from(wire)
    if magic != 0 or sid != schema_id:
        raise ValueError(f"value is not written with schema id {schema_id} (magic {magic}, id {sid})")
    return wire[HEADER_SIZE:]


class CommandBatcher:
    """Coalesces single commands bound for one partition into batch records.

    `send` takes one encoded command (Confluent wire format, the value a single
    producer would send) and its account id; a batch leaves when it holds
    `max_items` commands or `max_bytes`, or its first command has waited
    `linger_ms`, whichever comes first. Batches are produced to the partition
    Kafka's Java partitioner assigns each account (murmur2), so each account keeps
    one writer; a batch is taken and produced under one lock, so one partition's
    batches leave in the order their commands were sent.

    `producer` is a `confluent_kafka.Producer` (idempotent, acks=all). A full local
    queue is waited out with `poll` (`block=True`, a client library's choice), or
    fails the batch's commands at once (`block=False`: the gateway answers 503 and
    the client retries with its key, rather than blocking its event loop). A
    command's own `on_delivery` (given to `send`) hears its batch's delivery report,
    or the error that kept the batch from being produced; nothing is dropped
    silently. `on_delivery` (given here) hears every batch's report.
    """

    def __init__(
        self,
        producer: Any,
        *,
        header: bytes,
        command_schema_id: int,
        partitions: int,
        max_items: int = 256,
        max_bytes: int = 512 * 1024,
        linger_ms: float = 5.0,
        topic: str = COMMANDS,
        on_delivery: Callable[..., Any] | None = None,
        block: bool = True,
    ) -> None:
        if partitions <= 0 or max_items <= 0 or max_bytes <= 0 or linger_ms < 0:
            raise ValueError("partitions, max_items and max_bytes must be positive, linger_ms not negative")
        self.producer = producer
        self._header = header
        self._schema_id = command_schema_id
        self.partitions = partitions
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.linger_s = linger_ms / 1000
        self.topic = topic
        self.on_delivery = on_delivery
        self.block = block
        self._lock = threading.RLock()
        self._items: list[list[bytes]] = [[] for _ in range(partitions)]
        self._sizes: list[int] = [0] * partitions
        self._callbacks: list[list[Callable[..., Any]]] = [[] for _ in range(partitions)]
        self._since: list[float] = [0.0] * partitions
        self._wake = threading.Event()
        self._closed = False
        self.batches = 0
        self.commands = 0
        self._thread = threading.Thread(target=self._linger_loop, name="command-batcher", daemon=True)
        self._thread.start()

    def send(self, account_id: str, encoded: bytes, on_delivery: Callable[..., Any] | None = None) -> None:
        body = body_of(encoded, self._schema_id)
        p = partition_for(account_id, self.partitions)
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher is closed")
            items = self._items[p]
            if items and self._sizes[p] + len(body) > self.max_bytes:
                self._send(p, *self._take(p))
                items = self._items[p]
            if not items:
                self._since[p] = time.monotonic()
                self._wake.set()
            items.append(body)
            self._sizes[p] += len(body)
            if on_delivery is not None:
                self._callbacks[p].append(on_delivery)
            if len(items) >= self.max_items:
                self._send(p, *self._take(p))

    def _take(self, p: int) -> tuple[list[bytes], list[Callable[..., Any]]]:
        taken = (self._items[p], self._callbacks[p])
        self._items[p], self._callbacks[p], self._sizes[p] = [], [], 0
        return taken

    def flush(self) -> None:
        """Send every waiting command now (the caller still flushes the producer)."""
        with self._lock:
            for p, items in enumerate(self._items):
                if items:
                    self._send(p, *self._take(p))

    def close(self) -> None:
        with self._lock:
            self.flush()
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)

    def abort(self, error: Any) -> None:
        """Fail every waiting command with `error` without producing it (its producer is
        being replaced) and refuse new ones."""
        with self._lock:
            self._closed = True
            waiting = [self._take(p)[1] for p in range(self.partitions)]
        self._wake.set()
        for callbacks in waiting:
            for cb in callbacks:
                cb(error, None)

    def _send(self, partition: int, bodies: list[bytes], callbacks: list[Callable[..., Any]]) -> None:
        """Produce one batch (the caller holds the lock). A batch that cannot be produced
        fails its commands' callbacks with the error; the batcher goes on."""
        value = assemble(self._header, str(uuid.uuid4()), partition, self.partitions, bodies)
        key = key_for_partition(partition, self.partitions)
        outer = self.on_delivery

        def delivered(err: Any, msg: Any) -> None:
            if outer is not None:
                outer(err, msg)
            for cb in callbacks:
                cb(err, msg)

        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, partition=partition,
                                       on_delivery=delivered)
                break
            except BufferError as exc:
                if not self.block:
                    log.warning("local queue full: failing a batch of %d commands", len(bodies))
                    delivered(exc, None)
                    return
                self.producer.poll(0.05)
            except Exception as exc:
                log.exception("could not produce a batch of %d commands to partition %d", len(bodies), partition)
                delivered(exc, None)
                return
        self.batches += 1
        self.commands += len(bodies)

    def _linger_loop(self) -> None:
        """Send each partition's batch when its oldest command has waited `linger_ms`,
        sleeping until the next such moment. (Waking every `linger_ms` from the last
        wake-up instead let a command that arrived just after one wait almost two
        windows; `send` wakes the loop when a partition gets its first command.)"""
        due: float | None = None
        while not self._closed:
            self._wake.wait(None if due is None else max(0.0, due - time.monotonic()))
            self._wake.clear()
            due = None
            with self._lock:
                now = time.monotonic()
                for p, items in enumerate(self._items):
                    if not items:
                        continue
                    deadline = self._since[p] + self.linger_s
                    if now >= deadline:
                        self._send(p, *self._take(p))
                    elif due is None or deadline < due:
                        due = deadline
