"""Every use of Quix Streams' private API in paystream, with the reason for it.

Checked against quixstreams 3.28 (pinned in pyproject.toml). Each function fails
loudly when the attribute it needs is gone, so an upgrade breaks here, in one
place, and not silently somewhere in a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quixstreams import Application
from quixstreams.state import State

CHECKED_VERSION = "3.28"


def disable_time_alignment(app: Application) -> None:
    """`concat()` turns on cross-topic timestamp alignment, which holds a partition's
    commands back while its legs partition has an open transaction (always, under
    load: the ledger writes the legs). Quix has no public switch (docs/LEDGER.md)."""
    registry = app._dataframe_registry
    if not hasattr(registry, "_requires_time_alignment"):
        raise RuntimeError(f"quixstreams changed: no _requires_time_alignment (checked {CHECKED_VERSION})")
    registry._requires_time_alignment = False


class TransactionalProducer:
    """Produces through the very librdkafka producer whose transaction each
    checkpoint commits, so every record is part of the same exactly-once
    transaction as the state and the input offsets.

    It skips Quix's wrappers, which cost more than the record: a Python delivery
    callback per record (to track offsets of *changelog* topics), a `poll(0)` after
    each produce, and per-row serializer calls; about 4-5 us per record, with two
    to four output records per transfer (docs/LEDGER.md). No callback is needed for
    correctness: librdkafka fails `commit_transaction` when any record of the
    transaction failed, so the checkpoint aborts and the inputs are processed again.
    (`app.get_producer()` is another, non-transactional producer: never use it here.)
    """

    __slots__ = ("_quix", "_raw")

    def __init__(self, app: Application) -> None:
        internal = getattr(app, "_producer", None)
        quix = getattr(internal, "_producer", None)
        if quix is None or not hasattr(type(quix), "_producer"):
            raise RuntimeError(f"quixstreams changed: no Application._producer._producer (checked {CHECKED_VERSION})")
        self._quix = quix
        self._raw: Any = None

    def _producer(self) -> Any:
        # Quix creates its librdkafka producer (and calls init_transactions) on
        # first use and keeps it for the life of the application.
        if self._raw is None:
            self._raw = self._quix._producer
        return self._raw

    def produce(self, topic: str, value: bytes, key: str | bytes, timestamp: int,
                headers: Any = None, partition: int | None = None) -> None:
        raw = self._raw or self._producer()
        for _ in range(10):
            try:
                if partition is None:
                    raw.produce(topic, value, key, timestamp=timestamp, headers=headers)
                else:
                    raw.produce(topic, value, key, partition=partition, timestamp=timestamp, headers=headers)
                return
            except BufferError:
                # The local queue is full: let librdkafka send, then try again.
                raw.poll(0.1)
        raise BufferError(f"librdkafka's queue stayed full producing to {topic}")


def before_commit(app: Application, hook: Callable[[], None]) -> None:
    """Call `hook` just before Quix commits a non-empty checkpoint (on its interval,
    on a forced commit and on a partition revoke), while the checkpoint's Kafka
    transaction is still open: whatever `hook` produces through
    `TransactionalProducer(app)` commits or aborts with that checkpoint's state and
    input offsets. Quix 3.28 has no public hook for commits, so this wraps the
    processing context's `commit_checkpoint` (called once per poll loop iteration)."""
    ctx = getattr(app, "_processing_context", None)
    if ctx is None or not hasattr(ctx, "commit_checkpoint") or not hasattr(type(ctx), "checkpoint"):
        raise RuntimeError(f"quixstreams changed: no ProcessingContext.commit_checkpoint (checked {CHECKED_VERSION})")
    original = ctx.commit_checkpoint

    def committing(force: bool = False, revoking: bool = False) -> None:
        cp = ctx.checkpoint
        if (force or cp.expired()) and not cp.empty():
            hook()
        original(force=force, revoking=revoking)

    ctx.commit_checkpoint = committing


def state_for(state: State, prefix: bytes) -> State:
    """The state of another key in the same partition's store transaction.

    Quix scopes `State` to the message key. A batch carries many accounts of one
    partition, and each must read and write exactly the keys a single command for
    that account would (the prefix is the account id's UTF-8 bytes, as the message
    key of a single command), so both paths share one state per account."""
    transaction = getattr(state, "_transaction", None)
    if transaction is None:
        raise RuntimeError(f"quixstreams changed: no TransactionState._transaction (checked {CHECKED_VERSION})")
    return transaction.as_state(prefix=prefix)
