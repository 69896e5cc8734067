"""Every use of Quix Streams' private API in paystream, with the reason for it.

Checked against quixstreams 3.28 (pinned in pyproject.toml). Each function fails
loudly when the attribute it needs is gone, so an upgrade breaks here, in one
place, and not silently somewhere in a pipeline.
"""

from __future__ import annotations

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


def transactional_producer(app: Application) -> Any:
    """The producer whose transaction each checkpoint commits. Producing through it
    inside a processing function is part of the same exactly-once transaction as the
    state and the input offsets; it skips Quix's per-row expansion and serializer
    calls, which cost more than the ledger's rules per output (docs/LEDGER.md).
    (`app.get_producer()` is another, non-transactional producer: never use it here.)"""
    producer = getattr(app, "_producer", None)
    if producer is None or not hasattr(producer, "produce"):
        raise RuntimeError(f"quixstreams changed: no Application._producer (checked {CHECKED_VERSION})")
    return producer


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
