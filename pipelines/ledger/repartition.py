"""The ledger's state moved to a generation with more partitions (docs/PARTITIONS.md).

Everything the ledger keeps is state keyed by the account it belongs to (the layout in
`pipelines.ledger.domain`): the account record with its balance, holds total, sequence
and hash-chain head; the id memos that dedupe commands and legs for the life of the
account (`c:`, `p:`, `l:`); the holds (`h:`). Moving an account to its partition in the
new generation is therefore moving its changelog records, unchanged, to the changelog
partition murmur2 gives its id under the new count: the new ledger restores them as
Quix restores any changelog, and the account continues exactly where it stopped.

One thing is not an account's: each partition's hold timers, under its clock key
(`domain.clock_key`, which depends on the partition count). They are an index of the
partition's open holds, so they are not copied but rebuilt from the holds that are
still HELD, each under the clock key of its account's new partition, with the same
`HoldTimers` code the ledger uses. A hold whose time passed meanwhile lands in the
first bucket the new partition scans, and expires on its first tick, as it would have.

Pure: records in, (partition, record) out, so hypothesis drives it
(`tests/unit/test_repartition.py`); `ops/partitions.py` does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from paystream.partitioning import partition_for
from paystream.stream import quix_compat
from paystream.stream.store import DictStore
from pipelines.ledger import domain

HOLD = "h:"
HELD = "HELD"


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One changelog record: `<account>|<state key>`, its JSON value (None: deleted), headers."""

    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Repartition:
    """Routes the records of the old generation's changelog, in their order, to the new
    one's partitions (`route`), then gives the rebuilt hold timers (`timers`).

    Records of one account stay in their order: they all come from one old partition
    (the account's) and all go to one new partition, so the last value of each key
    wins in the new changelog as it did in the old."""

    old: int
    new: int
    moved: int = 0
    dropped: int = 0
    _clocks: frozenset[bytes] = field(init=False)
    _held: dict[tuple[str, str], int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.new <= 0 or self.old <= 0:
            raise ValueError("partition counts must be positive")
        self._clocks = frozenset(domain.clock_key(p, self.old).encode() for p in range(self.old))

    def route(self, record: StateRecord) -> tuple[int, StateRecord] | None:
        """The new partition and record for `record`; None for the old clock keys' timers."""
        prefix, name = quix_compat.split_changelog_key(record.key)
        if prefix in self._clocks:
            self.dropped += 1
            return None
        account = prefix.decode()
        if name.startswith(HOLD):
            self._track_hold(account, name[len(HOLD):], quix_compat.state_value(record.value))
        self.moved += 1
        headers = tuple(quix_compat.copied_headers(list(record.headers)))
        return partition_for(account, self.new), StateRecord(record.key, record.value, headers)

    def _track_hold(self, account: str, payment_id: str, hold: dict[str, Any] | None) -> None:
        if hold is not None and hold.get("st") == HELD:
            self._held[(account, payment_id)] = int(hold["exp"])
        else:
            self._held.pop((account, payment_id), None)

    @property
    def open_holds(self) -> int:
        return len(self._held)

    def timers(self, now_ms: int) -> list[tuple[int, StateRecord]]:
        """The new partitions' hold timers: one per hold still HELD, under the clock key
        of its account's new partition, as `HoldTimers.add` lays them out at `now_ms`."""
        stores: dict[int, DictStore] = {}
        for (account, payment_id), expires_at in sorted(self._held.items(), key=lambda kv: (kv[1], kv[0])):
            p = partition_for(account, self.new)
            store = stores.setdefault(p, DictStore())
            domain.HoldTimers(store).add(expires_at, now_ms, account, payment_id)
        headers = tuple(quix_compat.DEFAULT_CF_HEADERS)
        out = []
        for p, store in sorted(stores.items()):
            clock = domain.clock_key(p, self.new).encode()
            for name, value in store.data.items():
                out.append((p, StateRecord(quix_compat.changelog_key(clock, name), quix_compat.state_bytes(value),
                                           headers)))
        return out


def repartition(records: Iterable[StateRecord], old: int, new: int, now_ms: int) -> dict[int, list[StateRecord]]:
    """The whole move at once (tests, small stores): new partition -> its records, in order."""
    r = Repartition(old, new)
    out: dict[int, list[StateRecord]] = {}
    for record in records:
        routed = r.route(record)
        if routed is not None:
            out.setdefault(routed[0], []).append(routed[1])
    for p, record in r.timers(now_ms):
        out.setdefault(p, []).append(record)
    return out
