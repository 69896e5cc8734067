"""The ledger's hash chain: what an event's hash is, and how a chain is checked.

Each account's events on `ledger.events` form a chain: every event carries
``prev_hash``, the ``hash`` of the event before it on the same account key (the
fixed `GENESIS` for the first one), and its own ``hash``::

    hash = sha256(canonical_bytes(event)).hexdigest()

    canonical_bytes(event) = the UTF-8 bytes of the JSON object holding every field
        of the event (``prev_hash`` included) with ``hash`` set to the empty string,
        null values left out at every depth, keys sorted, no whitespace, non-ASCII
        characters as themselves: Python's
        ``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.

Why canonical JSON and not the Avro bytes the issue first named: Avro's binary form
is a function of the *writer's schema version*. The same event is other bytes
under a later (compatible) version, so nobody holding a later schema, the read
model, or a JSON export could reproduce the hash without the exact writer schema.
The decoded field values do not depend on the version, and any JSON library
reproduces the bytes (`json` and `orjson` agree byte for byte; tested). Leaving
nulls out is what keeps old hashes valid when a field is added: a new field must
be nullable with default null (``tests/unit/test_journal.py`` holds schemas to it),
so events written before it decode with null there and hash as they did.

Cost: 2-3 us per event (orjson plus hashlib's SHA-256), against the ledger's 90 us
per transfer; `event_hash_fast` is the ledger's path, for events whose nested
records hold no null (the ledger's never do).

This module imports nothing from paystream: every floor may use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

ALGORITHM: Final = "sha256"
GENESIS: Final = "0" * 64
"""``prev_hash`` of an account's first chained event."""

_SORT: Final = orjson.OPT_SORT_KEYS
_sha256 = hashlib.sha256


def _strip(value: Any) -> Any:
    if type(value) is dict:
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_strip(v) for v in value]
    return value


def canonical_bytes(event: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash is taken over (see the module's docstring)."""
    body = {k: _strip(v) for k, v in event.items() if v is not None}
    body["hash"] = ""
    return orjson.dumps(body, option=_SORT)


def event_hash(event: Mapping[str, Any]) -> str:
    """The hash an event must carry, recomputed from its fields."""
    return _sha256(canonical_bytes(event)).hexdigest()


def event_hash_fast(event: Mapping[str, Any]) -> str:
    """`event_hash` of an event whose ``hash`` is still empty and whose nested records
    hold no null (the ledger's, as it builds them): one dict comprehension, one orjson
    call, one SHA-256 (2-3 us)."""
    return _sha256(orjson.dumps({k: v for k, v in event.items() if v is not None}, option=_SORT)).hexdigest()


# ------------------------------------------------------------------------ checking


@dataclass(frozen=True)
class Break:
    """The first broken link of one account's chain."""

    account_id: str
    sequence: int
    what: str  # "hash", "prev_hash", "sequence" or "unchained"
    expected: str
    found: str
    where: str = ""  # e.g. "ledger.events[3]@1207", or a read-model row

    def __str__(self) -> str:
        at = f" ({self.where})" if self.where else ""
        return (f"account {self.account_id} sequence {self.sequence}{at}: {self.what} "
                f"expected {self.expected}, found {self.found}")  # fmt: skip


@dataclass
class _Head:
    sequence: int
    hash: str  # "" while the account's events are unchained (written before the chain)


@dataclass
class ChainChecker:
    """Checks chains fed event by event, each account's events in sequence order (as
    its partition holds them). Keeps one head per account, and the first break of
    each account: after a break the account's chain is not followed further.

    Events written before the chain existed (``prev_hash`` and ``hash`` both empty)
    are accepted only as an account's first events; its first chained event then
    links to `GENESIS`. (So blanking both fields of an account's first event is seen
    only at the next link, and of an account's only event not at all: `unchained`
    counts them, and verify prints the count.)"""

    heads: dict[str, _Head] = field(default_factory=dict)
    breaks: dict[str, Break] = field(default_factory=dict)
    checked: int = 0
    unchained: int = 0

    def feed(self, ev: Mapping[str, Any], where: str = "", *, recompute: bool = True) -> Break | None:
        """Check one event's link; `recompute=False` follows the link without
        recomputing the hash (a read-model row whose text the sink had to clean)."""
        account = ev["account_id"]
        if account in self.breaks:
            return None
        seq = int(ev["sequence"])
        found_hash = ev.get("hash") or ""
        found_prev = ev.get("prev_hash") or ""
        head = self.heads.get(account)
        brk = None
        if head is None and seq != 1 and found_prev != GENESIS and found_hash:
            brk = Break(account, seq, "sequence", "1 (the account's first event)", str(seq), where)
        elif head is not None and seq != head.sequence + 1:
            brk = Break(account, seq, "sequence", str(head.sequence + 1), str(seq), where)
        elif not found_hash and not found_prev:
            if head is not None and head.hash:
                brk = Break(account, seq, "unchained", "a hash (the chain began before it)", "none", where)
            else:
                self.unchained += 1
        else:
            want_prev = head.hash if head is not None and head.hash else GENESIS
            want_hash = event_hash(ev) if recompute else found_hash
            if found_prev != want_prev:
                brk = Break(account, seq, "prev_hash", want_prev, found_prev or "none", where)
            elif found_hash != want_hash:
                brk = Break(account, seq, "hash", want_hash, found_hash or "none", where)
            else:
                self.checked += 1
        if brk is not None:
            self.breaks[account] = brk
            return brk
        self.heads[account] = _Head(seq, found_hash)
        return None

    def first_breaks(self) -> list[Break]:
        return list(self.breaks.values())


def check_chains(events: Iterable[Mapping[str, Any]]) -> list[Break]:
    """Every account's first broken link in `events` (per account in sequence order)."""
    checker = ChainChecker()
    for ev in events:
        checker.feed(ev)
    return checker.first_breaks()


def check_window(events: Sequence[Mapping[str, Any]], link: str) -> Break | None:
    """The first broken link of one account's consecutive events whose first event
    must link to `link`, the hash of the event before them (an audit export's window)."""
    if not events:
        return None
    account = events[0]["account_id"]
    checker = ChainChecker()
    checker.heads[account] = _Head(int(events[0]["sequence"]) - 1, link)
    for i, ev in enumerate(events):
        if ev["account_id"] != account:
            return Break(account, int(ev["sequence"]), "account_id", account, ev["account_id"], f"event {i}")
        brk = checker.feed(ev, f"event {i} of the window")
        if brk is not None:
            return brk
    return None
