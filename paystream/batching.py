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

from paystream.partitioning import key_for_partition, partition_for

log = logging.getLogger("paystream.batching")

COMMANDS = "payments.commands"
COMMAND_BATCH = "io.paystream.commands.CommandBatch"
LEGS = "ledger.legs"
LEG_BATCH = "io.paystream.ledger.LegBatch"
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of an int or long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def assemble(header: bytes, batch_id: str, partition: int, partitions: int, bodies: Sequence[bytes]) -> bytes:
    """A batch in Confluent wire format from its items' Avro bodies (header excluded):
    the layout of `command_batch.avsc` and `leg_batch.avsc` (unit-tested against
    fastavro's own encoding)."""
    ident = batch_id.encode()
    parts = [header, zigzag_varint(len(ident)), ident, zigzag_varint(partition), zigzag_varint(partitions)]
    if bodies:
        parts.append(zigzag_varint(len(bodies)))
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
    `max_items` commands or its first command has waited `linger_ms`, whichever
    comes first. Batches are produced with an idempotent producer, to the
    partition Kafka's Java partitioner assigns each account (murmur2), so each
    account keeps one writer and its commands keep their order.

    `producer` is a `confluent_kafka.Producer` (idempotent, acks=all): a full local
    queue is waited out with `poll`, never dropped. `on_delivery` is passed to
    every batch's produce; a command's own `on_delivery` (given to `send`) is
    called with its batch's delivery report, so a caller can wait for its command
    to be durable (the gateway answers only then).
    """

    def __init__(
        self,
        producer: Any,
        *,
        header: bytes,
        command_schema_id: int,
        partitions: int,
        max_items: int = 256,
        linger_ms: float = 5.0,
        topic: str = COMMANDS,
        on_delivery: Callable[..., Any] | None = None,
    ) -> None:
        if partitions <= 0 or max_items <= 0 or linger_ms < 0:
            raise ValueError("partitions and max_items must be positive, linger_ms not negative")
        self._producer = producer
        self._header = header
        self._schema_id = command_schema_id
        self.partitions = partitions
        self.max_items = max_items
        self.linger_s = linger_ms / 1000
        self.topic = topic
        self.on_delivery = on_delivery
        self._lock = threading.Lock()
        self._items: list[list[bytes]] = [[] for _ in range(partitions)]
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
        full: tuple[list[bytes], list[Callable[..., Any]]] | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher is closed")
            items = self._items[p]
            if not items:
                self._since[p] = time.monotonic()
                self._wake.set()
            items.append(body)
            if on_delivery is not None:
                self._callbacks[p].append(on_delivery)
            if len(items) >= self.max_items:
                full = self._take(p)
        if full is not None:
            self._send(p, *full)

    def _take(self, p: int) -> tuple[list[bytes], list[Callable[..., Any]]]:
        taken = (self._items[p], self._callbacks[p])
        self._items[p], self._callbacks[p] = [], []
        return taken

    def flush(self) -> None:
        """Send every waiting command now (the caller still flushes the producer)."""
        with self._lock:
            ready = [(p, *self._take(p)) for p, items in enumerate(self._items) if items]
        for p, items, callbacks in ready:
            self._send(p, items, callbacks)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)

    def _send(self, partition: int, bodies: list[bytes], callbacks: list[Callable[..., Any]]) -> None:
        value = assemble(self._header, str(uuid.uuid4()), partition, self.partitions, bodies)
        key = key_for_partition(partition, self.partitions)
        extra: dict[str, Any] = {}
        if callbacks:
            outer = self.on_delivery

            def delivered(err: Any, msg: Any) -> None:
                if outer is not None:
                    outer(err, msg)
                for cb in callbacks:
                    cb(err, msg)

            extra["on_delivery"] = delivered
        elif self.on_delivery is not None:
            extra["on_delivery"] = self.on_delivery
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, partition=partition, **extra)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.batches += 1
        self.commands += len(bodies)

    def _linger_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.linger_s or 0.001)
            self._wake.clear()
            now = time.monotonic()
            due: list[tuple[int, list[bytes], list[Callable[..., Any]]]] = []
            with self._lock:
                for p, items in enumerate(self._items):
                    if items and now - self._since[p] >= self.linger_s:
                        due.append((p, *self._take(p)))
            for p, items, callbacks in due:
                try:
                    self._send(p, items, callbacks)
                except Exception:
                    log.exception("could not send a batch of %d commands to partition %d", len(items), p)
                    raise
