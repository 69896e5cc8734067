"""Ledger rules as plain functions over plain data.

The ledger owns one account per message key. Everything an account's partition
decides is decided here, from three inputs only: the account's own state (a
key/value `Store`), the command or leg being applied, and the wall-clock time to
stamp on events. No I/O happens here, so hypothesis can drive it and the Kafka
adapter (`pipelines/ledger/app.py`) stays thin.

State layout per account key (each entry is a separate state key, so the
changelog compacts per entry and no value grows without bound):

* ``a``        the account: currency, kind, status, balance, number, owner
* ``a``        also holds ``seq``, the last sequence number used on this key
* ``q``        the sequence for a key that is not (yet) an account
* ``h``        likewise its hash chain head (an account's is ``h`` in ``a``, beside ``seq``)
* ``c:<id>``   every command id ever applied here, with its fingerprint and result
* ``p:<id>``   payments credited to (or refused by) this account: for reversals, and
               the dedupe marker of credit legs
* ``l:<id>``   refund and reversal-credit legs applied here (legs are at-most-once)
* ``h:<id>``   holds placed by this account (AUTHORIZE), with their state: HELD, then
               CAPTURED, VOIDED or EXPIRED; the account record keeps their total, ``held``

One key per partition that is no account, `clock_key`, keeps the partition's hold
timers (`HoldTimers`): the ledger's ticks, records it writes to every partition of
its legs topic, carry the log's time to it, and each tick expires the holds due by
then. Time is never read from a clock here: an expiry is decided by the timestamps of
the records, so a replay decides it the same way (docs/LEDGER.md, "Holds").

Ids are remembered for the life of the account: each is a distinct key in a
compacted changelog, so compaction keeps it (it only drops *older values of the
same key*). See docs/LEDGER.md for the cost and why there is no TTL.

Money in flight sits in a per-currency transit account; deposits and
withdrawals post against a per-currency settlement account. Neither has a
single writer (they are never checked for funds), so their balances are
derived from postings downstream and never kept in state here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Generic, TypeAlias, TypedDict, TypeVar, cast

from paystream import ids, topics

# The structural check of a command (dead-lettered INVALID when it fails) lives in the core,
# so that direct producers (`paystream.producer`) refuse what the ledger would, with the
# very same function.
from paystream.commands import command_problem as command_problem
from paystream.commands import is_uuid as is_uuid
from paystream.journal import GENESIS, event_hash_fast
from paystream.money import MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR, is_currency
from paystream.partitioning import partition_for

# Enum symbols by bare name, not `records.X`: a global is one lookup, an attribute two,
# and these are read on every command and leg. The types only annotate.
from paystream.records import (
    ACCOUNT_FROZEN,
    ACCOUNT_OPENED,
    ACCOUNT_UNFROZEN,
    AUTHORIZE,
    CAPTURE,
    COMMAND_DUPLICATE,
    COMMAND_REJECTED,
    CREDIT,
    DEPOSIT,
    DEPOSITED,
    FREEZE,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PLACED,
    HOLD_VOIDED,
    OPEN_ACCOUNT,
    REFUND,
    REVERSAL_CHECK,
    REVERSAL_CREDIT,
    REVERSAL_DEBITED,
    REVERSE,
    REVERSE_TRANSFER,
    TICK,
    TRANSFER,
    TRANSFER_COMPLETED,
    TRANSFER_DEBITED,
    TRANSFER_FAILED,
    TRANSFER_REVERSED,
    UNFREEZE,
    VOID,
    WITHDRAW,
    WITHDRAWN,
    AccountInfo,
    AccountKind,
    CommandType,
    DeadLetterReason,
    EventType,
    LedgerEvent,
    Leg,
    LegKind,
    Movement,
    OutcomeStatus,
    Posting,
    ReasonCode,
)
from paystream.stream.memo import PartitionMemo
from paystream.stream.store import Store

NAMESPACE = ids.LEDGER_NAMESPACE

EVENTS = topics.EVENTS
LEGS = topics.LEGS
# Not a topic: an input the ledger cannot apply, for the adapter to dead-letter with
# its reason (value: code, reason, and the item itself). Nothing is written for it.
DEAD = "dead-letter"


_MISSING = object()


class _CachedAccount:
    """One account's store during one batch: the account entry is read (and
    deserialized) once and written once, however many items touch it; the
    per-id memos pass straight through, each written when it happens.

    `known` (optional) holds account entries across batches, for as long as this
    writer owns the account's partition: a read found there costs no state read at
    all. Every write goes to the store as well, so the store (and its changelog)
    stays the record and `known` is only ever a copy of what was last written."""

    __slots__ = ("_account", "_dirty", "_id", "_known", "_store")

    def __init__(self, store: Store, account_id: str, known: AccountMemo | None) -> None:
        self._store = store
        self._id = account_id
        self._known = known
        self._account: Any = _MISSING
        self._dirty = False

    def get(self, key: str, default: Any = None) -> Any:
        if key == "a":
            if self._account is _MISSING:
                known = self._known
                account = _MISSING if known is None else known.get(self._id, _MISSING)
                if account is _MISSING:
                    account = self._store.get("a")
                    if known is not None:
                        known.put(self._id, account)
                self._account = account
            return default if self._account is None else self._account
        return self._store.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if key == "a":
            self._account = value
            self._dirty = True
        else:
            self._store.set(key, value)

    def delete(self, key: str) -> None:
        self._store.delete(key)

    def flush(self) -> None:
        if self._dirty:
            self._store.set("a", self._account)
            if self._known is not None:
                self._known.put(self._id, self._account)
            self._dirty = False


AccountMemo: TypeAlias = PartitionMemo[Any]
"""Account entries of one partition, kept between batches by the partition's single
writer. Entries are the very dicts the rules mutate, written to the store at every
batch's end, so an entry is only ever a copy of what the store holds."""


class BatchStores:
    """The stores of the accounts one batch touches. The single writer is what makes
    this safe: nobody else reads or writes these accounts between two commits, so
    applying many items in memory and writing each account once at the end is the
    same as writing it after every item (property-tested: any split of a stream of
    commands into batches gives the same events and balances)."""

    def __init__(self, store_of: Callable[[str], Store], known: AccountMemo | None = None, *,
                 clock: str | None = None, limits: HoldLimits | None = None) -> None:
        self._store_of = store_of
        self._known = known
        self._open: dict[str, _CachedAccount] = {}
        # The partition's clock key (`clock_key`); the adapter names it from the
        # partition it consumes. Tests and replays of one partition may keep the default.
        self.clock = clock or DEFAULT_CLOCK
        self.limits = limits or HoldLimits()
        self._holds: Holds | None = None

    def holds(self) -> Holds:
        """The partition's hold timers and limits, opened on first use in a batch."""
        if self._holds is None:
            self._holds = Holds(HoldTimers(self(self.clock)), self.limits)
        return self._holds

    def __call__(self, account: str) -> Store:
        cached = self._open.get(account)
        if cached is None:
            cached = self._open[account] = _CachedAccount(self._store_of(account), account, self._known)
        return cached

    def flush(self) -> None:
        for cached in self._open.values():
            cached.flush()
        self._open.clear()
        self._holds = None


def apply_batch(stores: BatchStores, items: list[dict[str, Any]], now_ms: int, *, legs: bool) -> list[LedgerOutput]:
    """Apply checked items of one batch in order, each as if it came alone, then write
    each touched account once. Commands must have passed `command_problem`."""
    out: list[LedgerOutput] = []
    if legs:
        for item in items:
            if item["kind"] == TICK:
                out.extend(expire_due(stores, now_ms))
            else:
                out.extend(apply_leg(stores(item["account_id"]), item, now_ms))
    else:
        for item in items:
            # Only an authorization needs the partition's timers; the others never open them.
            holds = stores.holds() if item["type"] == AUTHORIZE else None
            out.extend(apply_command(stores(item["account_id"]), item, now_ms, holds))
    stores.flush()
    return out


# ------------------------------------------------------------------- holds and time


@dataclass(frozen=True, slots=True)
class HoldLimits:
    """How long a hold lasts when its authorization names no timeout, and the longest
    one may ask for (settings `ledger_hold_default_seconds`, `ledger_hold_max_seconds`)."""

    default_ms: int = 7 * 86_400_000
    max_ms: int = 30 * 86_400_000


# Timers are bucketed per second of expiry time; a tick expires every bucket that ended
# before its own time. So an expiry lags its hold's `expires_at` by at most one bucket
# plus the tick interval (and any lag of the ledger itself); a capture or void decides
# by the hold's own `expires_at`, so no client can capture a lapsed hold meanwhile.
TIMER_BUCKET_MS: Final = 1000
# Buckets one tick walks at most (after a long stop, the rest wait for the next ticks),
# so a tick's work, and the Kafka transaction it is part of, stays bounded.
MAX_BUCKETS_PER_TICK: Final = 3600


@lru_cache(maxsize=1024)
def clock_key(partition: int, partitions: int) -> str:
    """The state key of a partition's hold timers, and the key its ticks carry: a UUID
    (so every check on legs accepts it) that lands on that partition."""
    i = 0
    while True:
        key = ids.uuid5(NAMESPACE, f"clock:{partition}:{i}")
        if partition_for(key, partitions) == partition:
            return key
        i += 1


DEFAULT_CLOCK = ids.uuid5(NAMESPACE, "clock")


class HoldTimers:
    """The expiry times of a partition's open holds, in its clock key's state.

    Quix state has no range scan, so timers sit in per-second buckets read in order:
    ``tn`` the next bucket to scan, ``tc`` how many timers are pending, ``t:<b>`` the
    count of bucket b and ``t:<b>:<i>`` its entries (account, payment id). Adding one
    costs a read and three writes whatever the bucket holds; a bucket is deleted once
    scanned. A timer of a hold captured or voided meanwhile is simply skipped then.

    ``tn`` only ever moves to a time the partition has seen (a tick's, or an
    authorization's), never to a timer's: every bucket before it is then both scanned
    and past, so a timer that falls there is due and goes to ``tn`` itself."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, expires_at: int, now_ms: int, account: str, payment_id: str) -> None:
        s = self._store
        pending = s.get("tc", 0)
        bucket = expires_at // TIMER_BUCKET_MS
        nxt = s.get("tn")
        if nxt is None:
            nxt = now_ms // TIMER_BUCKET_MS
            s.set("tn", nxt)
        if bucket < nxt:
            bucket = nxt  # due already (its time is before what the ticks passed): next tick
        n = s.get(f"t:{bucket}", 0)
        s.set(f"t:{bucket}:{n}", [account, payment_id])
        s.set(f"t:{bucket}", n + 1)
        s.set("tc", pending + 1)

    def due(self, now_ms: int) -> list[tuple[str, str]]:
        """Timers of every bucket that ended by `now_ms`, removed from the store."""
        s = self._store
        pending = s.get("tc", 0)
        bucket, end = s.get("tn"), now_ms // TIMER_BUCKET_MS
        if not pending:
            if bucket is None or end > bucket:
                s.set("tn", end)  # nothing to scan on the way: skip ahead to the present
            return []
        out: list[tuple[str, str]] = []
        scanned = 0
        while bucket < end and pending and scanned < MAX_BUCKETS_PER_TICK:
            n = s.get(f"t:{bucket}", 0)
            for i in range(n):
                account, payment_id = s.get(f"t:{bucket}:{i}")
                out.append((account, payment_id))
                s.delete(f"t:{bucket}:{i}")
            if n:
                s.delete(f"t:{bucket}")
                pending -= n
            bucket += 1
            scanned += 1
        s.set("tn", bucket)
        s.set("tc", pending)
        return out


@dataclass(frozen=True, slots=True)
class Holds:
    """What an authorization needs besides its account: the partition's timers and the limits."""

    timers: HoldTimers
    limits: HoldLimits


def expire_due(stores: BatchStores, now_ms: int) -> list[LedgerOutput]:
    """A tick: release every hold of this partition whose time is up by `now_ms` (the
    tick's log time), exactly once: the hold's state says whether a capture, a void or
    an earlier expiry won, and it commits with the timers in one transaction."""
    out: list[LedgerOutput] = []
    holds = stores.holds()
    for account, payment_id in holds.timers.due(now_ms):
        ctx = _Ctx(stores(account), account, now_ms)
        hold = ctx.store.get(f"h:{payment_id}")
        if hold is None or hold["st"] != "HELD":
            continue
        if hold["exp"] > now_ms:  # not reachable by the bucketing; kept for the next tick if it were
            holds.timers.add(hold["exp"], now_ms, account, payment_id)
            continue
        _expire(ctx, payment_id, hold)
        out.extend(ctx.finish())
    return out


V = TypeVar("V", covariant=True)


@dataclass(frozen=True, slots=True)
class Output(Generic[V]):
    """One record to write: `value` is a `LedgerEvent` on EVENTS, a `Leg` on LEGS and a
    `DeadItem` on DEAD (see `LedgerOutput`). Generic rather than a union-typed field
    so the adapter, which hands `value` to `Codec.encode(dict[str, Any])`, reads a
    bare `Output` as `Output[Any]`. A generic class costs nothing per instance."""

    topic: str
    key: str
    value: V


class DeadItem(TypedDict):
    """What `DEAD` carries: the dead-letter reason code and text, and the item itself."""

    code: DeadLetterReason
    reason: str
    item: dict[str, Any]


LedgerOutput: TypeAlias = Output[LedgerEvent | Leg | DeadItem]


@lru_cache(maxsize=256)
def transit_account(currency: str) -> str:
    return ids.uuid5(NAMESPACE, f"transit:{currency}")


@lru_cache(maxsize=256)
def settlement_account(currency: str) -> str:
    return ids.uuid5(NAMESPACE, f"settlement:{currency}")


def leg_id(payment_id: str, kind: LegKind) -> str:
    return ids.uuid5(NAMESPACE, f"leg:{payment_id}:{kind}")


def fingerprint(cmd: dict[str, Any]) -> str:
    """What makes two commands with one id "the same": type, accounts and money.

    Times, requester and free-form metadata are left out, so an honest retry
    matches; a changed amount, currency or receiver does not.
    """
    mv = cmd.get("movement") or {}
    rv = cmd.get("reversal") or {}
    oa = cmd.get("open_account") or {}
    parts: tuple[Any, ...] = (
        cmd["type"], cmd["account_id"], mv.get("amount"), mv.get("currency"),
        mv.get("counterparty_id"), rv.get("payment_id"), oa.get("currency"),
        oa.get("kind"), oa.get("external_number"),
    )  # fmt: skip
    # Appended only when set, so every command without them keeps the fingerprint it
    # had before holds existed (its memo may be years old).
    hv = cmd.get("hold")
    timeout = mv.get("hold_timeout_ms")
    if hv or timeout is not None:
        parts += (hv and hv["payment_id"], hv and hv.get("amount"), timeout)
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _posting(account_id: str, kind: AccountKind, amount: int, currency: str) -> Posting:
    return {"account_id": account_id, "account_kind": kind, "amount": amount, "currency": currency}


class InvariantBroken(Exception):
    """Money would be created or lost: a bug in the rules, never bad input (bad input
    is refused by the checks before any money moves). Raised before the account is
    written; the adapter lets it abort the Kafka transaction, so nothing of it is
    ever visible, and alarms (docs/LEDGER.md, "Run-time money assertions")."""


# Debits that must never take a user account below zero (a reversal may: chargeback).
_FUNDED_DEBITS = frozenset({TRANSFER_DEBITED, WITHDRAWN, HOLD_CAPTURED})


def _assert_money_kept(ctx: _Ctx) -> None:
    """Paired assertions, checked at run time for every input that emitted something:
    each event's postings sum to zero, the account's own postings add up to exactly
    the change of its balance, and a user account is not negative after a funded
    debit. Independent of the rules that should make them true, so a rule bug stops
    the ledger instead of moving money."""
    own = 0
    funded_debit = False
    for o in ctx.out:
        if o.topic != EVENTS:
            continue
        ev = cast(LedgerEvent, o.value)
        postings = ev["postings"]
        if postings:
            if sum(p["amount"] for p in postings) != 0:
                raise InvariantBroken(f"{ev['type']} {ev['event_id']}: postings do not sum to zero: {postings}")
            for p in postings:
                if p["account_id"] == ctx.key:
                    own += p["amount"]
        funded_debit = funded_debit or ev["type"] in _FUNDED_DEBITS
    account = ctx.account
    if account is None:
        return
    if account["balance"] - ctx.before != own:
        raise InvariantBroken(
            f"account {ctx.key}: balance moved by {account['balance'] - ctx.before}, its postings by {own}"
        )
    if funded_debit and account["kind"] == "USER" and account["balance"] < 0:
        raise InvariantBroken(f"user account {ctx.key} is at {account['balance']} after a funded debit")
    if account.get("held", 0) < 0:
        raise InvariantBroken(f"account {ctx.key} holds {account['held']}, less than nothing")


class _Ctx:
    """One application of one input to one account key."""

    def __init__(self, store: Store, key: str, now_ms: int) -> None:
        self.store = store
        self.key = key
        self.now_ms = now_ms
        self.account: dict[str, Any] | None = store.get("a")
        self.before: int = self.account["balance"] if self.account is not None else 0
        self.out: list[LedgerOutput] = []
        self.dirty = False

    def save_account(self) -> None:
        self.dirty = True

    def finish(self) -> list[LedgerOutput]:
        """Write the account once per input, however many events it produced: each
        write is a changelog record, the ledger's main cost per message."""
        if self.out:
            _assert_money_kept(self)
        if self.dirty:
            self.store.set("a", self.account)
        return self.out

    def next_sequence(self) -> int:
        # The sequence lives in the account record so that an event costs no extra
        # state write; keys that are not (yet) accounts keep it under "q".
        if self.account is not None:
            # "q" only for accounts written before "seq" moved into the record; read
            # lazily, since a state read costs as much as a rule (two per transfer).
            prev = self.account.get("seq")
            seq = int(prev if prev is not None else self.store.get("q", 0)) + 1
            self.account["seq"] = seq
            self.dirty = True
        else:
            seq = int(self.store.get("q", 0)) + 1
            self.store.set("q", seq)
        return seq

    def chain_head(self) -> str:
        """The hash of this key's last event (`journal.GENESIS` before its first): the
        account record's "h", kept beside "seq" so that it survives restarts exactly as
        the sequence does. Keys that are not accounts keep it under "h", as they keep
        the sequence under "q"; an account opened on such a key (or written before the
        chain existed: then `GENESIS`) reads it from there once."""
        if self.account is not None:
            head = self.account.get("h")
            if head is None:
                head = self.store.get("h", GENESIS)
            return cast(str, head)
        return cast(str, self.store.get("h", GENESIS))

    def set_chain_head(self, head: str) -> None:
        if self.account is not None:
            self.account["h"] = head  # next_sequence marked the record dirty
        else:
            self.store.set("h", head)

    def event(
        self,
        etype: EventType,
        *,
        command_id: str,
        payment_id: str,
        command_type: CommandType,
        status: OutcomeStatus,
        terminal: bool,
        requested_by: str,
        reason: ReasonCode | None = None,
        replay: bool = False,
        postings: list[Posting] | None = None,
        counterparty_id: str | None = None,
        amount: int | None = None,
        currency: str | None = None,
        account_info: AccountInfo | None = None,
        note: str | None = None,
        metadata: dict[str, str] | None = None,
        expires_at: int | None = None,
        hold: bool = False,
    ) -> None:
        """`hold`: the event changes the account's held total, and says what it is after."""
        seq = self.next_sequence()
        event: LedgerEvent = {
            "event_id": ids.uuid5(NAMESPACE, f"{command_id}|{etype}|{self.key}|{seq}"),
            "command_id": command_id,
            "payment_id": payment_id,
            "account_id": self.key,
            "sequence": seq,
            "type": etype,
            "command_type": command_type,
            "status": status,
            "terminal": terminal,
            "replay": replay,
            "reason": reason,
            "counterparty_id": counterparty_id,
            "amount": amount,
            "currency": currency,
            "balance_after": self.account["balance"] if self.account else None,
            "postings": postings or [],
            "account": account_info,
            "requested_by": requested_by,
            "note": note,
            "metadata": metadata or {},
            "occurred_at": self.now_ms,
            "held_after": self.account.get("held", 0) if hold and self.account else None,
            "expires_at": expires_at,
            "prev_hash": self.chain_head(),
            "hash": "",  # hashed empty, then set: journal.canonical_bytes
        }
        event["hash"] = head = event_hash_fast(event)
        self.set_chain_head(head)
        self.out.append(Output(EVENTS, self.key, event))

    def leg(self, kind: LegKind, *, target: str, payment_id: str, command_id: str,
            amount: int, currency: str, requested_by: str, reason: str | None = None) -> None:
        self.out.append(
            Output(
                LEGS,
                target,
                {
                    "leg_id": leg_id(payment_id, kind),
                    "kind": kind,
                    "command_id": command_id,
                    "payment_id": payment_id,
                    "account_id": target,
                    "counterparty_id": self.key,
                    "amount": amount,
                    "currency": currency,
                    "reason": reason,
                    "requested_by": requested_by,
                    "issued_at": self.now_ms,
                },
            )
        )


# --------------------------------------------------------------------------- commands


def apply_command(store: Store, cmd: dict[str, Any], now_ms: int, holds: Holds | None = None) -> list[LedgerOutput]:
    """Apply one decoded, key-checked command to its account. Never raises on bad input:
    every refusal is an outcome event. An AUTHORIZE needs `holds` (`apply_batch` gives it)."""
    ctx = _Ctx(store, cmd["account_id"], now_ms)
    command_id = cmd["command_id"]
    fp = fingerprint(cmd)
    seen = store.get(f"c:{command_id}")
    if seen is not None:
        _replay(ctx, cmd, seen, fp)
        return ctx.finish()
    ctype = cmd["type"]
    if ctype == AUTHORIZE:
        if holds is None:
            raise ValueError("an AUTHORIZE is applied with the partition's hold timers (apply_batch)")
        _authorize(ctx, cmd, fp, holds)
        return ctx.finish()
    handler = _HANDLERS.get(ctype)
    if handler is None:
        _reject(ctx, cmd, "NOT_ALLOWED", fp)
    else:
        handler(ctx, cmd, fp)
    return ctx.finish()


def _payment_id(cmd: dict[str, Any]) -> str:
    body = cmd.get("reversal") or cmd.get("hold")
    return body["payment_id"] if body else cmd["command_id"]


def _remember(ctx: _Ctx, cmd: dict[str, Any], fp: str, status: OutcomeStatus, reason: ReasonCode | None) -> None:
    ctx.store.set(f"c:{cmd['command_id']}", {"fp": fp, "st": status, "rs": reason})


def _reject(ctx: _Ctx, cmd: dict[str, Any], reason: ReasonCode, fp: str) -> None:
    _remember(ctx, cmd, fp, "REJECTED", reason)
    mv = cmd.get("movement") or {}
    ctx.event(
        COMMAND_REJECTED, command_id=cmd["command_id"], payment_id=_payment_id(cmd),
        command_type=cmd["type"], status="REJECTED", terminal=True, reason=reason,
        requested_by=cmd["requested_by"], amount=mv.get("amount"), currency=mv.get("currency"),
        counterparty_id=mv.get("counterparty_id"),
    )  # fmt: skip


def _replay(ctx: _Ctx, cmd: dict[str, Any], seen: dict[str, Any], fp: str) -> None:
    """TigerBeetle's rule: a repeated id gets the first result back, or a refusal if
    its fields changed. Either way nothing moves."""
    same = seen["fp"] == fp
    ctx.event(
        COMMAND_DUPLICATE if same else COMMAND_REJECTED,
        command_id=cmd["command_id"], payment_id=_payment_id(cmd), command_type=cmd["type"],
        status=seen["st"] if same else "REJECTED", terminal=True, replay=True,
        reason=seen["rs"] if same else "ID_REUSED_WITH_DIFFERENT_FIELDS",
        requested_by=cmd["requested_by"],
        note="duplicate of an earlier command; this repeats its result" if same else None,
    )  # fmt: skip


# The rule checks below are public because ops/lab/bench/baseline.py, the row-lock
# design paystream is measured against, decides with the very same functions.


def amount_problem(mv: Movement | None, max_amount: int = MAX_AMOUNT_MINOR) -> ReasonCode | None:
    if not mv:
        return "NOT_ALLOWED"
    if not is_currency(mv["currency"]):
        return "UNKNOWN_CURRENCY"
    if mv["amount"] <= 0:
        return "NON_POSITIVE_AMOUNT"
    if mv["amount"] > max_amount:
        return "AMOUNT_TOO_LARGE"
    return None


def sender_problem(acct: dict[str, Any] | None, currency: str) -> ReasonCode | None:
    if acct is None:
        return "UNKNOWN_ACCOUNT"
    if acct["status"] == "CLOSED":
        return "ACCOUNT_CLOSED"
    if acct["status"] == "FROZEN":
        return "ACCOUNT_FROZEN"
    if acct["currency"] != currency:
        return "CURRENCY_MISMATCH"
    return None


def has_funds(acct: dict[str, Any], amount: int) -> bool:
    # Only user accounts are checked: settlement accounts stand for the outside
    # world and may go negative. Held funds are not available (`_authorize`).
    return acct["kind"] != "USER" or acct["balance"] - acct.get("held", 0) >= amount


def _open_account(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    oa = cmd.get("open_account")
    if not oa or oa["kind"] == "TRANSIT":
        return _reject(ctx, cmd, "NOT_ALLOWED", fp)
    if not is_currency(oa["currency"]):
        return _reject(ctx, cmd, "UNKNOWN_CURRENCY", fp)
    if ctx.key in (transit_account(oa["currency"]), settlement_account(oa["currency"])):
        # The books' own accounts: their balances are the sums of their postings,
        # never a record here (an account record would take both sides of a posting).
        return _reject(ctx, cmd, "NOT_ALLOWED", fp)
    if ctx.account is not None:
        return _reject(ctx, cmd, "ALREADY_EXISTS", fp)
    ctx.account = {
        "currency": oa["currency"], "kind": oa["kind"], "status": "ACTIVE", "balance": 0,
        "number": oa["external_number"], "owner": oa["owner_id"], "seq": ctx.store.get("q", 0),
    }  # fmt: skip
    ctx.save_account()
    _remember(ctx, cmd, fp, "COMPLETED", None)
    ctx.event(
        ACCOUNT_OPENED, command_id=cmd["command_id"], payment_id=cmd["command_id"],
        command_type=cmd["type"], status="COMPLETED", terminal=True,
        requested_by=cmd["requested_by"], currency=oa["currency"],
        account_info=dict(oa),  # type: ignore[arg-type]  # a copy of an OpenAccount: AccountInfo's fields
    )  # fmt: skip


def _status_change(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    freeze = cmd["type"] == FREEZE
    sc = cmd.get("status_change") or {"reason": "", "actor": cmd["requested_by"]}
    if ctx.account is None:
        return _reject(ctx, cmd, "UNKNOWN_ACCOUNT", fp)
    if ctx.account["status"] == "CLOSED":
        return _reject(ctx, cmd, "ACCOUNT_CLOSED", fp)
    if freeze and ctx.account["status"] == "FROZEN":
        return _reject(ctx, cmd, "ALREADY_FROZEN", fp)
    if not freeze and ctx.account["status"] != "FROZEN":
        return _reject(ctx, cmd, "NOT_FROZEN", fp)
    ctx.account["status"] = "FROZEN" if freeze else "ACTIVE"
    ctx.save_account()
    _remember(ctx, cmd, fp, "COMPLETED", None)
    ctx.event(
        ACCOUNT_FROZEN if freeze else ACCOUNT_UNFROZEN, command_id=cmd["command_id"],
        payment_id=cmd["command_id"], command_type=cmd["type"], status="COMPLETED",
        terminal=True, requested_by=sc["actor"], note=sc["reason"],
    )  # fmt: skip


def _deposit_or_withdraw(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    mv = cmd.get("movement")
    reason = amount_problem(mv)
    if reason is not None or mv is None:
        return _reject(ctx, cmd, reason or "NOT_ALLOWED", fp)
    account = ctx.account
    reason = sender_problem(account, mv["currency"])
    if reason is not None or account is None:
        return _reject(ctx, cmd, reason or "UNKNOWN_ACCOUNT", fp)
    if cmd["type"] == WITHDRAW and not has_funds(account, mv["amount"]):
        return _reject(ctx, cmd, "INSUFFICIENT_FUNDS", fp)
    if cmd["type"] == DEPOSIT and account["balance"] + mv["amount"] > MAX_BALANCE_MINOR:
        return _reject(ctx, cmd, "BALANCE_LIMIT", fp)
    amount, cur = mv["amount"], mv["currency"]
    sign = 1 if cmd["type"] == DEPOSIT else -1
    account["balance"] += sign * amount
    ctx.save_account()
    _remember(ctx, cmd, fp, "COMPLETED", None)
    ctx.event(
        DEPOSITED if sign > 0 else WITHDRAWN, command_id=cmd["command_id"],
        payment_id=cmd["command_id"], command_type=cmd["type"], status="COMPLETED",
        terminal=True, requested_by=cmd["requested_by"], amount=amount, currency=cur,
        counterparty_id=settlement_account(cur), metadata=mv.get("metadata"),
        postings=[
            _posting(settlement_account(cur), "SETTLEMENT", -sign * amount, cur),
            _posting(ctx.key, account["kind"], sign * amount, cur),
        ],
    )  # fmt: skip


def _outgoing_problem(ctx: _Ctx, mv: Movement | None) -> ReasonCode | None:
    """Why money cannot leave this account for `mv`'s receiver (a transfer, or the
    promise of one: an authorization), funds apart."""
    reason = amount_problem(mv)
    if reason is not None or mv is None:
        return reason or "NOT_ALLOWED"
    if not mv.get("counterparty_id"):
        return "UNKNOWN_ACCOUNT"
    if mv["counterparty_id"] == ctx.key:
        return "SAME_ACCOUNT"
    return sender_problem(ctx.account, mv["currency"])


def _transfer(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    mv, account = cmd.get("movement"), ctx.account
    reason = _outgoing_problem(ctx, mv)
    if reason is not None or mv is None or account is None:
        return _reject(ctx, cmd, reason or "NOT_ALLOWED", fp)
    if not has_funds(account, mv["amount"]):
        return _reject(ctx, cmd, "INSUFFICIENT_FUNDS", fp)
    amount, cur, to = mv["amount"], mv["currency"], mv["counterparty_id"]
    account["balance"] -= amount
    ctx.save_account()
    _remember(ctx, cmd, fp, "PENDING", None)
    ctx.event(
        TRANSFER_DEBITED, command_id=cmd["command_id"], payment_id=cmd["command_id"],
        command_type=cmd["type"], status="PENDING", terminal=False,
        requested_by=cmd["requested_by"], amount=amount, currency=cur, counterparty_id=to,
        metadata=mv.get("metadata"),
        postings=[
            _posting(ctx.key, account["kind"], -amount, cur),
            _posting(transit_account(cur), "TRANSIT", amount, cur),
        ],
    )  # fmt: skip
    ctx.leg(
        CREDIT, target=to, payment_id=cmd["command_id"], command_id=cmd["command_id"],
        amount=amount, currency=cur, requested_by=cmd["requested_by"],
    )  # fmt: skip


def _reverse(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    """Compensation on the original receiver: take the money back even into the red
    (a chargeback), at most once per payment, then credit the sender by a leg."""
    rv = cmd.get("reversal")
    if not rv:
        return _reject(ctx, cmd, "NOT_ALLOWED", fp)
    pid = rv["payment_id"]
    pay = ctx.store.get(f"p:{pid}")
    if ctx.account is None:
        return _reject(ctx, cmd, "UNKNOWN_ACCOUNT", fp)
    if pay is None or pay["st"] == "ABANDONED":
        if not rv.get("sender_id"):
            return _reject(ctx, cmd, "UNKNOWN_PAYMENT", fp)
        return _await_credit(ctx, cmd, fp, rv["sender_id"])
    if pay["st"] == "AWAITING_CREDIT" or ("rev" in pay and pay["rev"]["command_id"] != cmd["command_id"]):
        return _reject(ctx, cmd, "ALREADY_REVERSED", fp)  # another reversal of it waits already
    if pay["st"] == "REFUSED":
        return _reject(ctx, cmd, "TRANSFER_NOT_COMPLETED", fp)
    if pay["st"] == "REVERSED":
        return _reject(ctx, cmd, "ALREADY_REVERSED", fp)
    amount, cur, sender = pay["amount"], pay["currency"], pay["from"]
    ctx.account["balance"] -= amount
    ctx.store.set(f"p:{pid}", {"st": "REVERSED", "from": sender, "amount": amount, "currency": cur})
    _remember(ctx, cmd, fp, "PENDING", None)
    ctx.event(
        REVERSAL_DEBITED, command_id=cmd["command_id"], payment_id=rv["payment_id"],
        command_type=cmd["type"], status="PENDING", terminal=False, requested_by=rv["actor"],
        amount=amount, currency=cur, counterparty_id=sender, note=rv["reason"],
        postings=[
            _posting(ctx.key, ctx.account["kind"], -amount, cur),
            _posting(transit_account(cur), "TRANSIT", amount, cur),
        ],
    )  # fmt: skip
    if rv.get("freeze_receiver") and ctx.account["status"] == "ACTIVE":
        ctx.account["status"] = "FROZEN"
        ctx.event(
            ACCOUNT_FROZEN, command_id=cmd["command_id"], payment_id=rv["payment_id"],
            command_type=cmd["type"], status="COMPLETED", terminal=False,
            requested_by=rv["actor"], note=f"reversal: {rv['reason']}",
        )  # fmt: skip
    ctx.save_account()
    ctx.leg(
        REVERSAL_CREDIT, target=sender, payment_id=rv["payment_id"],
        command_id=cmd["command_id"], amount=amount, currency=cur, requested_by=rv["actor"],
        reason=rv["reason"],
    )  # fmt: skip


def _await_credit(ctx: _Ctx, cmd: dict[str, Any], fp: str, sender: str) -> None:
    """A reversal for a payment this receiver has not been credited. Either the
    credit lags (a restart, a failover, a backlog) or the payment never came here.
    Refusing at once was for good (the reversal's id is fixed, so every retry
    replayed the refusal) and left the money with the receiver. So the reversal
    waits in the payment's record, and the sender is asked: its answer (a REVERSE
    leg) travels the path the credit took, from the sender's partition to this one,
    so it arrives after the credit if there is one, and `_reverse_answered` decides."""
    pid = cmd["reversal"]["payment_id"]
    ctx.store.set(f"p:{pid}", {"st": "AWAITING_CREDIT", "rev": cmd, "fp": fp})
    _remember(ctx, cmd, fp, "PENDING", None)
    ctx.leg(
        REVERSAL_CHECK, target=sender, payment_id=pid, command_id=cmd["command_id"], amount=0,
        currency=ctx.account["currency"] if ctx.account else "", requested_by=cmd["reversal"]["actor"],
    )  # fmt: skip


def _authorize(ctx: _Ctx, cmd: dict[str, Any], fp: str, holds: Holds) -> None:
    """A hold: the sender's available balance drops by the amount, its posted balance
    does not, and nothing moves until a CAPTURE. Checked as a transfer is, so a hold
    is exactly a promise the sender's single writer can keep."""
    mv, account = cmd.get("movement"), ctx.account
    reason = _outgoing_problem(ctx, mv)
    if reason is not None or mv is None or account is None:
        return _reject(ctx, cmd, reason or "NOT_ALLOWED", fp)
    timeout = mv.get("hold_timeout_ms")
    timeout = holds.limits.default_ms if timeout is None else timeout
    if not 0 < timeout <= holds.limits.max_ms:
        return _reject(ctx, cmd, "INVALID_EXPIRY", fp)
    if not has_funds(account, mv["amount"]):
        return _reject(ctx, cmd, "INSUFFICIENT_FUNDS", fp)
    pid, amount, cur, to = cmd["command_id"], mv["amount"], mv["currency"], mv["counterparty_id"]
    expires_at = ctx.now_ms + timeout
    account["held"] = account.get("held", 0) + amount
    ctx.save_account()
    ctx.store.set(f"h:{pid}", {"st": "HELD", "amount": amount, "currency": cur, "to": to, "exp": expires_at})
    holds.timers.add(expires_at, ctx.now_ms, ctx.key, pid)
    _remember(ctx, cmd, fp, "COMPLETED", None)
    ctx.event(
        HOLD_PLACED, command_id=pid, payment_id=pid, command_type=AUTHORIZE, status="COMPLETED",
        terminal=True, requested_by=cmd["requested_by"], amount=amount, currency=cur, counterparty_id=to,
        metadata=mv.get("metadata"), expires_at=expires_at, hold=True,
    )  # fmt: skip


# What a hold that is no longer HELD answers a CAPTURE or VOID with.
_HOLD_ENDED: Final[dict[str, ReasonCode]] = {
    "CAPTURED": "HOLD_CAPTURED", "VOIDED": "HOLD_VOIDED", "EXPIRED": "HOLD_EXPIRED",
}


def _open_hold(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> dict[str, Any] | None:
    """The hold a CAPTURE or VOID names, if it is still HELD; else the command is
    refused (and a hold whose time is up expires first: the single writer decides by
    the hold's own `expires_at` against this command's log time, so a capture that
    comes after it loses to the expiry however late the tick is)."""
    pid = cmd["hold"]["payment_id"]
    if ctx.account is None:
        _reject(ctx, cmd, "UNKNOWN_ACCOUNT", fp)
        return None
    hold: dict[str, Any] | None = ctx.store.get(f"h:{pid}")
    if hold is None:
        _reject(ctx, cmd, "UNKNOWN_HOLD", fp)
        return None
    if hold["st"] == "HELD" and ctx.now_ms >= hold["exp"]:
        _expire(ctx, pid, hold)
    if hold["st"] != "HELD":
        _reject(ctx, cmd, _HOLD_ENDED.get(hold["st"], "UNKNOWN_HOLD"), fp)
        return None
    return hold


def _capture(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    """Take all or part of a hold; the rest is released. The money then travels as a
    transfer's does: debited here into transit, credited (or refunded) by a leg."""
    hold = _open_hold(ctx, cmd, fp)
    account = ctx.account
    if hold is None or account is None:
        return None
    pid, cur, to = cmd["hold"]["payment_id"], hold["currency"], hold["to"]
    amount = cmd["hold"].get("amount")
    amount = hold["amount"] if amount is None else amount
    if amount <= 0:
        return _reject(ctx, cmd, "NON_POSITIVE_AMOUNT", fp)
    if amount > hold["amount"]:
        return _reject(ctx, cmd, "CAPTURE_EXCEEDS_HOLD", fp)
    if (reason := sender_problem(account, cur)) is not None:
        return _reject(ctx, cmd, reason, fp)  # a frozen account's holds wait (or are voided)
    if account["kind"] == "USER" and account["balance"] < amount:
        # Only after a chargeback took the account below what it holds.
        return _reject(ctx, cmd, "INSUFFICIENT_FUNDS", fp)
    account["held"] -= hold["amount"]
    account["balance"] -= amount
    ctx.save_account()
    hold.update(st="CAPTURED", cap=amount)
    ctx.store.set(f"h:{pid}", hold)
    _remember(ctx, cmd, fp, "PENDING", None)
    ctx.event(
        HOLD_CAPTURED, command_id=cmd["command_id"], payment_id=pid, command_type=CAPTURE,
        status="PENDING", terminal=False, requested_by=cmd["requested_by"], amount=amount, currency=cur,
        counterparty_id=to, hold=True,
        note=f"released {hold['amount'] - amount} of {hold['amount']}" if amount < hold["amount"] else None,
        postings=[
            _posting(ctx.key, account["kind"], -amount, cur),
            _posting(transit_account(cur), "TRANSIT", amount, cur),
        ],
    )  # fmt: skip
    ctx.leg(
        CREDIT, target=to, payment_id=pid, command_id=cmd["command_id"], amount=amount, currency=cur,
        requested_by=cmd["requested_by"],
    )  # fmt: skip
    return None


def _void(ctx: _Ctx, cmd: dict[str, Any], fp: str) -> None:
    """Release a hold, whatever the account's status: it only gives back what was the owner's."""
    hold = _open_hold(ctx, cmd, fp)
    account = ctx.account
    if hold is None or account is None:
        return None
    pid = cmd["hold"]["payment_id"]
    account["held"] -= hold["amount"]
    ctx.save_account()
    hold["st"] = "VOIDED"
    ctx.store.set(f"h:{pid}", hold)
    _remember(ctx, cmd, fp, "COMPLETED", None)
    ctx.event(
        HOLD_VOIDED, command_id=cmd["command_id"], payment_id=pid, command_type=VOID, status="COMPLETED",
        terminal=True, requested_by=cmd["requested_by"], amount=hold["amount"], currency=hold["currency"],
        counterparty_id=hold["to"], hold=True,
    )  # fmt: skip
    return None


def _expire(ctx: _Ctx, payment_id: str, hold: dict[str, Any]) -> None:
    """Release a hold whose time is up: by a tick, or by the CAPTURE or VOID that came
    too late. Not a command's outcome (the AUTHORIZE ended with HOLD_PLACED), so not
    terminal; its event id is fixed by the payment, like every event's."""
    account = _the_account(ctx)  # holds exist only on accounts
    account["held"] -= hold["amount"]
    ctx.save_account()
    hold["st"] = "EXPIRED"
    ctx.store.set(f"h:{payment_id}", hold)
    ctx.event(
        HOLD_EXPIRED, command_id=payment_id, payment_id=payment_id, command_type=AUTHORIZE,
        status="COMPLETED", terminal=False, requested_by="ledger", amount=hold["amount"],
        currency=hold["currency"], counterparty_id=hold["to"], hold=True,
        note=f"expired at {hold['exp']}",
    )  # fmt: skip


_HANDLERS = {
    OPEN_ACCOUNT: _open_account,
    DEPOSIT: _deposit_or_withdraw,
    WITHDRAW: _deposit_or_withdraw,
    TRANSFER: _transfer,
    FREEZE: _status_change,
    UNFREEZE: _status_change,
    REVERSE_TRANSFER: _reverse,
    CAPTURE: _capture,
    VOID: _void,
}


# ------------------------------------------------------------------------------- legs

# The kinds besides CREDIT; a module constant, so the check below builds no tuple.
_RETURN_LEGS: Final = (REFUND, REVERSAL_CREDIT, REVERSAL_CHECK, REVERSE)


def apply_leg(store: Store, leg: dict[str, Any], now_ms: int) -> list[LedgerOutput]:
    """Apply the second half of a movement. A leg already applied is ignored: legs
    come only from the ledger itself, so a repeat is a replay, never a new request."""
    ctx = _Ctx(store, leg["account_id"], now_ms)
    kind = leg["kind"]
    if kind == CREDIT:
        # The payment record a credit writes doubles as its dedupe marker, saving a
        # state write on the hottest path. It is written even for a key that is not
        # an account: legs come only from the ledger, each after a real debit, so
        # this cannot be used to grow state at will.
        seen = store.get(f"p:{leg['payment_id']}")
        if seen is None or seen["st"] == "ABANDONED":
            _credit(ctx, leg)
        elif seen["st"] == "AWAITING_CREDIT":
            _credit(ctx, leg, waiting=seen)
        elif seen["from"] != leg["counterparty_id"]:
            _refund_reused_id(ctx, leg)
        return ctx.finish()
    if kind not in _RETURN_LEGS:
        return [_dead(leg, f"leg kind {kind!r} is not one the ledger writes")]
    if kind == REVERSAL_CHECK:
        if store.get(f"l:{leg['leg_id']}") is None:
            store.set(f"l:{leg['leg_id']}", 1)
            _answer_reversal_check(ctx, leg)
        return ctx.finish()
    if ctx.account is None:
        # Only a leg the ledger did not write can get here (it refunds or reverses
        # to the account that sent): refused without a trace in state, never an
        # exception that would stop the partition on this record for ever.
        return [_dead(leg, f"{kind} leg for {leg['account_id']}, which is not an account: money only "
                           "returns to the account that sent it")]
    if store.get(f"l:{leg['leg_id']}") is not None:
        return []
    store.set(f"l:{leg['leg_id']}", 1)
    if kind == REFUND:
        _refund(ctx, leg)
    elif kind == REVERSE:
        _reverse_answered(ctx, leg)
    else:
        _reversal_credit(ctx, leg)
    return ctx.finish()


def _answer_reversal_check(ctx: _Ctx, leg: dict[str, Any]) -> None:
    """On the sender: did this account debit the payment? A transfer's memo is
    PENDING once debited (it stays so when credited) and FAILED once refunded; either
    way a credit leg left for the receiver before this answer does."""
    seen = ctx.store.get(f"c:{leg['payment_id']}")
    debited = seen is not None and seen["st"] in ("PENDING", "FAILED")
    if not debited:  # a captured hold: the AUTHORIZE's memo says COMPLETED, the hold CAPTURED
        hold = ctx.store.get(f"h:{leg['payment_id']}")
        debited = hold is not None and hold["st"] == "CAPTURED"
    ctx.leg(
        REVERSE, target=leg["counterparty_id"], payment_id=leg["payment_id"], command_id=leg["command_id"],
        amount=0, currency=leg["currency"], requested_by=leg["requested_by"],
        reason=None if debited else "UNKNOWN_PAYMENT",
    )  # fmt: skip


def _reverse_answered(ctx: _Ctx, leg: dict[str, Any]) -> None:
    """On the receiver, the sender's answer to `_await_credit`: the credit, if any,
    came first, so the payment's record now says what to do with the reversal."""
    pid = leg["payment_id"]
    pay = ctx.store.get(f"p:{pid}")
    if pay is None or "rev" not in pay:
        return  # answered already (a second check of the same reversal)
    rev, fp = pay["rev"], pay["fp"]
    if pay["st"] == "AWAITING_CREDIT":
        # no credit came before the answer: the payment was never this account's
        ctx.store.set(f"p:{pid}", {"st": "ABANDONED"})
        _reject(ctx, rev, leg["reason"] or "UNKNOWN_PAYMENT", fp)
    elif pay["st"] == "REFUSED":
        del pay["rev"], pay["fp"]
        ctx.store.set(f"p:{pid}", pay)
        _reject(ctx, rev, "TRANSFER_NOT_COMPLETED", fp)
    else:
        _reverse(ctx, rev, fp)


def _the_account(ctx: _Ctx) -> dict[str, Any]:
    """The account a leg moves money on; the callers' checks make it exist, and if a
    change ever broke that, money would be lost: stop, as the money assertions do."""
    if ctx.account is None:
        raise InvariantBroken(f"a leg would move money on {ctx.key}, which is not an account")
    return ctx.account


def _dead(item: dict[str, Any], reason: str) -> Output[DeadItem]:
    return Output(DEAD, item["account_id"], {"code": "INVALID", "reason": reason, "item": item})


def receiver_problem(acct: dict[str, Any] | None, currency: str, amount: int = 0) -> ReasonCode | None:
    if acct is None:
        return "RECEIVER_UNKNOWN"
    if acct["status"] == "FROZEN":
        return "RECEIVER_FROZEN"
    if acct["status"] == "CLOSED":
        return "RECEIVER_CLOSED"
    if acct["currency"] != currency:
        return "RECEIVER_CURRENCY_MISMATCH"
    if acct["balance"] + amount > MAX_BALANCE_MINOR:
        return "RECEIVER_BALANCE_LIMIT"
    return None


def _refund_reused_id(ctx: _Ctx, leg: dict[str, Any]) -> None:
    """A credit whose payment id this receiver already holds from another sender: a
    second payment reusing the id (possible from direct producers). Its dedupe marker
    is taken, so it would never be credited; it is refunded instead, with a reason."""
    ctx.leg(
        REFUND, target=leg["counterparty_id"], payment_id=leg["payment_id"], command_id=leg["command_id"],
        amount=leg["amount"], currency=leg["currency"], requested_by=leg["requested_by"],
        reason="ID_REUSED_WITH_DIFFERENT_FIELDS",
    )  # fmt: skip


def _credit(ctx: _Ctx, leg: dict[str, Any], waiting: dict[str, Any] | None = None) -> None:
    """`waiting`: the record of a reversal that came first (`_await_credit`); it stays
    with the payment until the sender's answer arrives, right behind this credit."""
    amount, cur, pid, sender = leg["amount"], leg["currency"], leg["payment_id"], leg["counterparty_id"]
    keep = {"rev": waiting["rev"], "fp": waiting["fp"]} if waiting else {}
    refusal = receiver_problem(ctx.account, cur, amount)
    if refusal is not None:
        ctx.store.set(f"p:{pid}", {"st": "REFUSED", "from": sender, "amount": amount, "currency": cur, **keep})
        ctx.leg(
            REFUND, target=sender, payment_id=pid, command_id=leg["command_id"],
            amount=amount, currency=cur, requested_by=leg["requested_by"], reason=refusal,
        )  # fmt: skip
        return
    account = _the_account(ctx)  # receiver_problem refused a credit to no account
    account["balance"] += amount
    ctx.save_account()
    ctx.store.set(f"p:{pid}", {"st": "CREDITED", "from": sender, "amount": amount, "currency": cur, **keep})
    ctx.event(
        TRANSFER_COMPLETED, command_id=leg["command_id"], payment_id=pid,
        command_type=TRANSFER, status="COMPLETED", terminal=True,
        requested_by=leg["requested_by"], amount=amount, currency=cur, counterparty_id=sender,
        postings=[
            _posting(transit_account(cur), "TRANSIT", -amount, cur),
            _posting(ctx.key, account["kind"], amount, cur),
        ],
    )  # fmt: skip


def _refund(ctx: _Ctx, leg: dict[str, Any]) -> None:
    """Money returns to a sender whose receiver refused it, whatever the sender's
    status now: a refund only restores what the sender had."""
    amount, cur, pid = leg["amount"], leg["currency"], leg["payment_id"]
    account = _the_account(ctx)  # apply_leg dead-letters a refund to a non-account
    account["balance"] += amount
    ctx.save_account()
    seen = ctx.store.get(f"c:{leg['command_id']}")
    if seen is not None:
        seen.update(st="FAILED", rs=leg["reason"])
        ctx.store.set(f"c:{leg['command_id']}", seen)
    ctx.event(
        TRANSFER_FAILED, command_id=leg["command_id"], payment_id=pid,
        command_type=TRANSFER, status="FAILED", terminal=True, reason=leg["reason"],
        requested_by=leg["requested_by"], amount=amount, currency=cur,
        counterparty_id=leg["counterparty_id"],
        postings=[
            _posting(transit_account(cur), "TRANSIT", -amount, cur),
            _posting(ctx.key, account["kind"], amount, cur),
        ],
    )  # fmt: skip


def _reversal_credit(ctx: _Ctx, leg: dict[str, Any]) -> None:
    amount, cur, pid = leg["amount"], leg["currency"], leg["payment_id"]
    account = _the_account(ctx)  # apply_leg dead-letters a reversal credit to a non-account
    account["balance"] += amount
    ctx.save_account()
    ctx.event(
        TRANSFER_REVERSED, command_id=leg["command_id"], payment_id=pid,
        command_type=REVERSE_TRANSFER, status="COMPLETED", terminal=True,
        requested_by=leg["requested_by"], amount=amount, currency=cur,
        counterparty_id=leg["counterparty_id"], note=leg["reason"],
        postings=[
            _posting(transit_account(cur), "TRANSIT", -amount, cur),
            _posting(ctx.key, account["kind"], amount, cur),
        ],
    )  # fmt: skip

