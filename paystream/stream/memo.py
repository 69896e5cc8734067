"""A partition's decoded state, kept in memory between messages by its single writer.

The ledger keeps account entries and fraud keeps decoded accounts this way: a hit costs
no state read and no decode. Only the writer that owns the partition may hold one, and
only while it owns it (`quix_compat.partition_local` ties it to Quix's store partition,
closed on revocation), so a partition that comes back starts empty: another instance
may have changed it meanwhile.
"""

from __future__ import annotations

import itertools
from collections.abc import Container
from typing import Generic, TypeVar

V = TypeVar("V")

__all__ = ["PartitionMemo"]


class PartitionMemo(Generic[V]):
    """At most about `limit` values by key; the oldest leave first, an eighth at a time
    (cheaper than an LRU's bookkeeping on every hit, and a dropped value costs only one
    state read later). Keys in `pinned` are never dropped (fraud pins the accounts it
    changed and has not written yet, which exist nowhere else) and are passed over, so
    pinned keys at the front never stop the memo from shedding the others."""

    __slots__ = ("_entries", "limit", "pinned")

    def __init__(self, limit: int, pinned: Container[str] = ()) -> None:
        self.limit = max(1, limit)
        self.pinned = pinned
        self._entries: dict[str, V] = {}

    def get(self, key: str, default: V | None = None) -> V | None:
        return self._entries.get(key, default)

    def __getitem__(self, key: str) -> V:
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, value: V) -> None:
        entries = self._entries
        if key not in entries and len(entries) >= self.limit:
            pinned = self.pinned
            unpinned = (k for k in entries if k not in pinned)
            for old in list(itertools.islice(unpinned, max(1, self.limit // 8))):
                del entries[old]
        entries[key] = value

    def clear(self) -> None:
        self._entries.clear()
