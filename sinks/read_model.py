"""What a batch of ledger events does to the read model, as pure functions.

The sink (`sinks.postgres_sink`) inserts a batch's events first and learns which
ones are new; everything here is then computed from the *new* events only, so a
batch replayed after a crash changes nothing. Keeping this free of I/O lets the
unit tests cover the money arithmetic and the payment lifecycle without services.

Order independence matters: each Kafka partition is consumed in order, but
partitions are not ordered with respect to each other, so a transfer's credit
(receiver's partition) can be read before its debit (sender's partition). Account
state only ever comes from that account's own partition (which is ordered), and
payments merge by rank (`merge_payment`), which gives the same result in any
order.

Events are typed ``LedgerEvent | Decoded``: mypy checks every key read here against
`paystream.records.LedgerEvent`, and the sink and `ops reprocess`, which hold the
codec's untyped dicts, still type-check passing them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

# Enum symbols by bare name: one global lookup each, on the sink's per-event path.
from paystream.records import (
    ACCOUNT_FROZEN,
    ACCOUNT_OPENED,
    ACCOUNT_UNFROZEN,
    AUTHORIZE,
    COMMAND_REJECTED,
    DEPOSIT,
    DEPOSITED,
    FREEZE,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PLACED,
    HOLD_VOIDED,
    REVERSE_TRANSFER,
    TRANSFER,
    TRANSFER_COMPLETED,
    TRANSFER_DEBITED,
    TRANSFER_FAILED,
    TRANSFER_REVERSED,
    UNFREEZE,
    WITHDRAW,
    WITHDRAWN,
    CommandType,
    Decoded,
    EventType,
    LedgerEvent,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

PAYMENT_RANK = {
    "REQUIRES_CAPTURE": -1, "PENDING": 0, "COMPLETED": 1, "FAILED": 1, "REJECTED": 1, "CANCELED": 1,
    "EXPIRED": 1, "REVERSED": 2,
}  # fmt: skip
MOVEMENT_COMMANDS: frozenset[CommandType] = frozenset({TRANSFER, DEPOSIT, WITHDRAW, AUTHORIZE})
ADMIN_COMMANDS: frozenset[CommandType] = frozenset({FREEZE, UNFREEZE, REVERSE_TRANSFER})
_STATUS_BY_EVENT: dict[EventType, str] = {
    ACCOUNT_OPENED: "ACTIVE",
    ACCOUNT_FROZEN: "FROZEN",
    ACCOUNT_UNFROZEN: "ACTIVE",
}


@lru_cache(maxsize=8192)
def ts(ms: int) -> datetime:
    """Epoch milliseconds as an aware datetime, exactly (no float rounding).

    Cached: the ledger stamps many events per millisecond-tick, and this is
    called per event and per posting on the sink's hot path.
    """
    return EPOCH + timedelta(milliseconds=ms)


def canonical_uuid(text: str) -> str:
    """The lowercase hyphenated spelling of a UUID (Postgres' output form).

    The ledger accepts any spelling `uuid.UUID` accepts (braces, no hyphens,
    upper case), so the sink and `verify` both key rows by this form.
    Raises ValueError for a non-UUID.
    """
    if _CANONICAL_UUID.fullmatch(text):
        return text
    return str(uuid.UUID(text))


def _clean(text: str) -> str:
    # Postgres text cannot hold NUL; jsonb rejects \u0000 as well.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


_ID_FIELDS = ("event_id", "account_id", "command_id", "payment_id")
_TEXT_FIELDS = ("requested_by", "note", "currency")


# The start of a refusal that is a broken money invariant, not malformed data: the
# sink counts these apart (paystream_money_invariant_violations_total) and alarms.
UNBALANCED = "postings do not sum to zero"


def normalize_event(ev: Decoded) -> str | None:
    """Make a decoded event storable in place, or say why it cannot be.

    The topic is written only by the ledger, so this guards against values that
    would make Postgres refuse the whole batch (and stall the sink), not against
    business errors: ids get their canonical spelling and NUL characters in free
    text are replaced. Only an event whose ids are not UUIDs at all is refused
    (and dead-lettered by the caller). Its input is the codec's untyped dict: this is
    the gate that makes it an event the rest of this module may rely on.
    """
    try:
        for name in _ID_FIELDS:
            ev[name] = canonical_uuid(ev[name])
        if ev.get("counterparty_id") is not None:
            ev["counterparty_id"] = canonical_uuid(ev["counterparty_id"])
        postings = ev.get("postings") or []
        for p in postings:
            p["account_id"] = canonical_uuid(p["account_id"])
            p["currency"] = _clean(p["currency"])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return f"an id is not a UUID: {exc}"
    if len(postings) > 32767:
        return "too many postings for one event"
    if sum(p["amount"] for p in postings) != 0:
        # The ledger asserts this when it emits; the sink asserts it again before it
        # folds, so a journal written by anything else cannot unbalance the books.
        return f"{UNBALANCED}: {[(p['account_id'], p['amount']) for p in postings]}"
    for name in _TEXT_FIELDS:
        if ev.get(name) is not None:
            ev[name] = _clean(ev[name])
    meta = ev.get("metadata")
    if meta and any("\x00" in k or "\x00" in v for k, v in meta.items()):
        ev["metadata"] = {_clean(k): _clean(v) for k, v in meta.items()}
    info = ev.get("account")
    if info:
        for name in ("external_number", "owner_id", "currency"):
            info[name] = _clean(info[name])
    return None


# ------------------------------------------------------------------------ payments


@dataclass
class PaymentChange:
    payment_id: str
    kind: str
    status: str
    from_account: str | None = None
    to_account: str | None = None
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    description: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    authorized: int | None = None  # a hold's amount (HOLD_PLACED)
    expires_ms: int | None = None  # a hold's expiry

    def row(self) -> tuple[Any, ...]:
        return (
            self.payment_id, self.kind, self.from_account, self.to_account, self.amount,
            self.currency, self.status, self.reason, self.requested_by, self.description,
            ts(self.created_ms), ts(self.updated_ms), self.authorized,
            None if self.expires_ms is None else ts(self.expires_ms),
        )  # fmt: skip


def payment_change(ev: LedgerEvent | Decoded) -> PaymentChange | None:
    """The payment fact one event states, or None if it says nothing about a payment.

    Replays (duplicates, reused ids) restate or refuse and never change a payment.
    REVERSAL_DEBITED is the reversal half-way: the payment stays COMPLETED until
    TRANSFER_REVERSED. A refused reversal leaves the payment as it was, and so do a
    refused capture or void (the hold stays as it was). A hold's events state no
    `amount` until money moves (HOLD_CAPTURED): a partial capture moves less than
    the authorized amount, which HOLD_PLACED states as `authorized`.
    """
    if ev["replay"]:
        return None
    etype, ctype = ev["type"], ev["command_type"]
    acct, other = ev["account_id"], ev.get("counterparty_id")
    if etype == DEPOSITED:
        kind, status, src, dst = DEPOSIT, "COMPLETED", other, acct
    elif etype == WITHDRAWN:
        kind, status, src, dst = WITHDRAW, "COMPLETED", acct, other
    elif etype == TRANSFER_DEBITED:
        kind, status, src, dst = TRANSFER, "PENDING", acct, other
    elif etype == TRANSFER_COMPLETED:
        kind, status, src, dst = TRANSFER, "COMPLETED", other, acct
    elif etype == TRANSFER_FAILED:
        kind, status, src, dst = TRANSFER, "FAILED", acct, other
    elif etype == TRANSFER_REVERSED:
        kind, status, src, dst = TRANSFER, "REVERSED", acct, other
    elif etype in _HOLD_STATUS:
        kind, status, src, dst = TRANSFER, _HOLD_STATUS[etype], acct, other
    elif etype == COMMAND_REJECTED and ctype in MOVEMENT_COMMANDS:
        kind, status = ctype, "REJECTED"
        src, dst = (None, acct) if ctype == DEPOSIT else (acct, other)
    else:
        return None
    reason = ev.get("note") if status == "REVERSED" else ev.get("reason")
    meta = ev.get("metadata") or {}
    amount = ev.get("amount")
    held = etype in _HOLD_STATUS and etype != HOLD_CAPTURED
    return PaymentChange(
        payment_id=ev["payment_id"], kind=kind, status=status, from_account=src,
        to_account=dst, amount=None if held else amount, currency=ev.get("currency"), reason=reason,
        requested_by=ev.get("requested_by"), description=meta.get("description"),
        created_ms=ev["occurred_at"], updated_ms=ev["occurred_at"],
        authorized=amount if etype == HOLD_PLACED else None, expires_ms=ev.get("expires_at"),
    )  # fmt: skip


_HOLD_STATUS: dict[EventType, str] = {
    HOLD_PLACED: "REQUIRES_CAPTURE",
    HOLD_CAPTURED: "PENDING",
    HOLD_VOIDED: "CANCELED",
    HOLD_EXPIRED: "EXPIRED",
}


def merge_payment(old: PaymentChange, new: PaymentChange) -> PaymentChange:
    """Combine two facts about one payment; the same rule as the SQL upsert.

    The status of higher rank wins (PENDING < terminal < REVERSED) and on a tie
    the one already known stays, so a terminal status never moves backwards and
    the outcome does not depend on which partition was read first. The reason
    follows the winning status; descriptive fields keep the first non-null value.
    """
    newer_wins = PAYMENT_RANK.get(new.status, 1) > PAYMENT_RANK.get(old.status, 1)
    return PaymentChange(
        payment_id=old.payment_id,
        kind=old.kind,
        status=new.status if newer_wins else old.status,
        from_account=old.from_account or new.from_account,
        to_account=old.to_account or new.to_account,
        amount=old.amount if old.amount is not None else new.amount,
        currency=old.currency or new.currency,
        reason=new.reason if newer_wins else old.reason,
        requested_by=old.requested_by or new.requested_by,
        description=old.description or new.description,
        created_ms=min(old.created_ms, new.created_ms),
        updated_ms=max(old.updated_ms, new.updated_ms),
        authorized=old.authorized if old.authorized is not None else new.authorized,
        expires_ms=old.expires_ms if old.expires_ms is not None else new.expires_ms,
    )


# ------------------------------------------------------------------------ accounts


@dataclass
class AccountChange:
    account_id: str
    kind: str | None = None
    currency: str | None = None
    external_number: str | None = None
    owner_id: str | None = None
    opened_ms: int | None = None
    status: str | None = None
    status_sequence: int | None = None
    delta: int = 0
    has_postings: bool = False
    last_sequence: int | None = None
    updated_ms: int = 0
    held: int | None = None  # held total after the hold event of highest sequence
    held_sequence: int | None = None

    @property
    def creates(self) -> bool:
        """Whether this change may create the row: an opening or a posting does; a
        rejected command against an account nobody opened does not."""
        return self.has_postings or self.opened_ms is not None

    def row(self) -> tuple[Any, ...]:
        return (
            self.account_id, self.kind, self.currency, self.external_number, self.owner_id,
            ts(self.opened_ms) if self.opened_ms is not None else None, self.status,
            self.status_sequence, self.delta, self.creates, self.last_sequence,
            ts(self.updated_ms), self.held, self.held_sequence,
        )  # fmt: skip


# ------------------------------------------------------------------------ the fold


@dataclass
class Effects:
    """Everything the new events of one batch change, ready to be written."""

    postings: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: dict[str, AccountChange] = field(default_factory=dict)
    payments: dict[str, PaymentChange] = field(default_factory=dict)
    audit: list[tuple[Any, ...]] = field(default_factory=list)
    duplicate_numbers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def posting_count(self) -> int:
        return len(self.postings)


def account_deltas(events: Iterable[LedgerEvent | Decoded]) -> dict[str, int]:
    """Net balance change per account over some events (the sum of their postings)."""
    out: dict[str, int] = {}
    for ev in events:
        for p in ev.get("postings") or []:
            out[p["account_id"]] = out.get(p["account_id"], 0) + p["amount"]
    return out


def fold(events: Iterable[LedgerEvent | Decoded]) -> Effects:
    """Fold newly inserted events (in per-partition order) into row changes."""
    fx = Effects()
    accounts = fx.accounts
    numbers: dict[str, str] = {}
    for ev in events:
        occurred = ev["occurred_at"]
        acct_id = ev["account_id"]
        acct = accounts.get(acct_id)
        if acct is None:
            acct = accounts[acct_id] = AccountChange(acct_id)
        seq = ev["sequence"]
        acct.last_sequence = seq if acct.last_sequence is None else max(acct.last_sequence, seq)
        acct.updated_ms = max(acct.updated_ms, occurred)
        etype = ev["type"]
        if not ev["replay"]:
            new_status = _STATUS_BY_EVENT.get(etype)
            if new_status is not None and (
                acct.status_sequence is None or seq > acct.status_sequence
            ):
                acct.status, acct.status_sequence = new_status, seq
            held = ev.get("held_after")
            if held is not None and (acct.held_sequence is None or seq > acct.held_sequence):
                acct.held, acct.held_sequence = held, seq
            info = ev.get("account")
            if etype == ACCOUNT_OPENED and info:
                acct.kind, acct.currency = info["kind"], info["currency"]
                acct.owner_id, acct.opened_ms = info["owner_id"], occurred
                number = info["external_number"]
                if number in numbers and numbers[number] != acct_id:
                    fx.duplicate_numbers.append((acct_id, number))
                else:
                    numbers[number] = acct_id
                    acct.external_number = number
        for idx, p in enumerate(ev.get("postings") or []):
            fx.postings.append((
                ev["event_id"], idx, ev["payment_id"], p["account_id"], p["account_kind"],
                p["amount"], p["currency"], seq, ts(occurred),
            ))  # fmt: skip
            target = accounts.get(p["account_id"])
            if target is None:
                target = accounts[p["account_id"]] = AccountChange(p["account_id"])
            target.delta += p["amount"]
            target.has_postings = True
            target.kind = target.kind or p["account_kind"]
            target.currency = target.currency or p["currency"]
            target.updated_ms = max(target.updated_ms, occurred)
        change = payment_change(ev)
        if change is not None:
            known = fx.payments.get(change.payment_id)
            fx.payments[change.payment_id] = (
                change if known is None else merge_payment(known, change)
            )
        if not ev["replay"] and ev["command_type"] in ADMIN_COMMANDS:
            fx.audit.append((
                ev["event_id"], ts(occurred), ev["requested_by"], etype, ev["command_type"],
                ev["command_id"], acct_id,
                ev["payment_id"] if ev["command_type"] == REVERSE_TRANSFER else None,
                ev["status"], ev.get("note") or ev.get("reason"),
            ))  # fmt: skip
    return fx


EVENT_COLUMNS = (
    "event_id", "account_id", "sequence", "type", "command_type", "command_id", "payment_id",
    "status", "terminal", "replay", "reason", "amount", "currency", "counterparty_id",
    "balance_after", "requested_by", "note", "metadata", "occurred_at", "topic_partition",
    "topic_offset", "account", "prev_hash", "hash", "held_after", "expires_at",
)  # fmt: skip


def event_row(ev: LedgerEvent | Decoded, partition: int, offset: int) -> tuple[Any, ...]:
    """The `ledger_events` row of an event: every field of it (postings go to their
    own table), so that `event_from_row` gives the event back and its hash can be
    recomputed from the read model alone. The chain's fields are NULL on events
    written before the chain existed (they decode as empty strings)."""
    info = ev.get("account")
    return (
        ev["event_id"], ev["account_id"], ev["sequence"], ev["type"], ev["command_type"],
        ev["command_id"], ev["payment_id"], ev["status"], ev["terminal"], ev["replay"],
        ev.get("reason"), ev.get("amount"), ev.get("currency"), ev.get("counterparty_id"),
        ev.get("balance_after"), ev["requested_by"], ev.get("note"),
        json.dumps(ev.get("metadata") or {}), ts(ev["occurred_at"]), partition, offset,
        None if info is None else json.dumps(info), ev.get("prev_hash") or None, ev.get("hash") or None,
        ev.get("held_after"), None if ev.get("expires_at") is None else ts(ev["expires_at"]),
    )  # fmt: skip


def epoch_ms(at: datetime) -> int:
    """The inverse of `ts`, exactly (integer arithmetic, no float)."""
    return (at - EPOCH) // timedelta(milliseconds=1)


# The event's fields a `ledger_events` row holds: all of them but `postings`. A field
# added to the event without its column fails `event_from_row` (and its unit test).
EVENT_FIELDS = tuple(name for name in LedgerEvent.__annotations__ if name != "postings")


def event_from_row(row: dict[str, Any], postings: list[dict[str, Any]]) -> Decoded:
    """The event a `ledger_events` row (ids as text, `metadata` and `account` as
    decoded JSON, `occurred_at` a timestamp) and its postings (in `idx` order: each
    with account_id as text, account_kind, amount, currency) stand for: what
    `paystream verify` hashes to check the read model's chains."""
    ev = {name: row[name] for name in EVENT_FIELDS}
    ev["occurred_at"] = epoch_ms(row["occurred_at"])
    ev["expires_at"] = None if row["expires_at"] is None else epoch_ms(row["expires_at"])
    ev["metadata"] = row["metadata"] or {}
    ev["prev_hash"] = row["prev_hash"] or ""
    ev["hash"] = row["hash"] or ""
    ev["postings"] = [
        {"account_id": p["account_id"], "account_kind": p["account_kind"], "amount": p["amount"],
         "currency": p["currency"]}
        for p in postings
    ]  # fmt: skip
    return ev
