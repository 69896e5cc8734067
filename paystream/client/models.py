"""What the API answers, as typed, immutable values.

Amounts are exact `decimal.Decimal`s parsed from the API's decimal strings with
`paystream.money` (strict: never through a float, never rounded); times are aware
`datetime`s. Fields the API adds later are ignored, so an older SDK keeps working
against a newer gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from paystream.money import Money

Json = Mapping[str, Any]

# A payment that has reached one of these will not change on its own any more
# (`requires_capture` waits for a capture or a cancel, or lapses at `expires_at`).
FINAL_STATUSES = frozenset({"completed", "failed", "rejected", "reversed", "canceled", "expired"})


def amount(text: str, currency: str) -> Decimal:
    """An API amount (``"-250.50"``) as an exact Decimal with the currency's decimals."""
    return Money.parse(text, currency).to_decimal()


def _amount_or_none(text: str | None, currency: str) -> Decimal | None:
    return None if text is None else amount(text, currency)


def instant(text: str) -> datetime:
    """An API time (RFC 3339 with an offset, ``...Z``) as an aware datetime."""
    return datetime.fromisoformat(text)


def _instant_or_none(text: str | None) -> datetime | None:
    return None if text is None else instant(text)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str
    role: str
    created_at: datetime

    @classmethod
    def from_api(cls, d: Json) -> User:
        return cls(str(d["id"]), d["email"], d["name"], d["role"], instant(d["created_at"]))


@dataclass(frozen=True, slots=True)
class Account:
    """An account as its owner sees it. `posted` is what has moved; `available` is
    posted minus what open holds reserve (what a payment may spend now). `status` is
    `opening` until the ledger has opened it, then `active` or `frozen`."""

    account_number: str
    currency: str
    status: str
    posted: Decimal
    available: Decimal
    created_at: datetime | None

    @classmethod
    def from_api(cls, d: Json) -> Account:
        cur = d["currency"]
        return cls(d["account_number"], cur, d["status"], amount(d["posted"], cur), amount(d["available"], cur),
                   _instant_or_none(d.get("created_at")))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Registration:
    """A new user and the first account registration opened for them."""

    user: User
    account: Account

    @classmethod
    def from_api(cls, d: Json) -> Registration:
        return cls(User.from_api(d["user"]), Account.from_api(d["account"]))


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    expires_in: int

    @classmethod
    def from_api(cls, d: Json) -> Token:
        return cls(d["access_token"], int(d["expires_in"]))


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment, deposit or withdrawal. `amount` is what moved (for an uncaptured
    hold: what it holds); a hold also has `amount_authorized` and `expires_at`.
    Statuses: `requires_capture` -> `pending` -> `completed` | `failed`, or
    `canceled` | `expired`; `rejected` (refused outright), `reversed` (by fraud
    review). `reason` says why a payment did not complete."""

    id: str
    kind: str
    status: str
    from_account: str | None
    to_account: str | None
    amount: Decimal
    currency: str
    description: str | None
    reason: str | None
    created_at: datetime | None
    amount_authorized: Decimal | None = None
    expires_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        """Whether the payment has an outcome that will not change on its own."""
        return self.status in FINAL_STATUSES

    @classmethod
    def from_api(cls, d: Json) -> Payment:
        cur = d["currency"]
        return cls(
            id=d["id"], kind=d.get("kind", "transfer"), status=d["status"], from_account=d.get("from_account"),
            to_account=d.get("to_account"), amount=amount(d["amount"], cur), currency=cur,
            description=d.get("description"), reason=d.get("reason"),
            created_at=_instant_or_none(d.get("created_at")),
            amount_authorized=_amount_or_none(d.get("amount_authorized"), cur),
            expires_at=_instant_or_none(d.get("expires_at")),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Transaction:
    """One posting on an account, newest first in `list_transactions`: `amount` is
    signed (negative when money left), `balance_after` the account's balance after it."""

    id: str
    type: str
    payment_id: str
    amount: Decimal
    currency: str
    balance_after: Decimal
    counterparty: str | None
    occurred_at: datetime

    @classmethod
    def from_api(cls, d: Json) -> Transaction:
        cur = d["currency"]
        return cls(d["id"], d["type"], d["payment_id"], amount(d["amount"], cur), cur,
                   amount(d["balance_after"], cur), d.get("counterparty"), instant(d["occurred_at"]))  # fmt: skip


@dataclass(frozen=True, slots=True)
class StatementLine(Transaction):
    """A statement's line: a posting with the running balance after it and the
    payment's description (the sender's, on both sides of a transfer)."""

    description: str | None = None

    @classmethod
    def from_api(cls, d: Json) -> StatementLine:
        line = Transaction.from_api(d)
        same: dict[str, Any] = {f.name: getattr(line, f.name) for f in fields(Transaction)}
        return cls(**same, description=d.get("description"))


@dataclass(frozen=True, slots=True)
class Statement:
    """The window [start, end) of an account: the balance just before `start`, every
    posting in it (oldest first, all pages), the balance just before `end`. The lines
    add up: opening + sum(amounts) == closing."""

    account_number: str
    currency: str
    start: datetime
    end: datetime
    opening_balance: Decimal
    closing_balance: Decimal
    lines: tuple[StatementLine, ...]

    @classmethod
    def of(cls, first_page: Json, lines: Sequence[StatementLine]) -> Statement:
        """The statement from its first JSON page (the window and its totals; every
        page was fetched with that window) and the lines of all its pages."""
        cur = first_page["currency"]
        return cls(first_page["account_number"], cur, instant(first_page["from"]), instant(first_page["to"]),
                   amount(first_page["opening_balance"], cur), amount(first_page["closing_balance"], cur),
                   tuple(lines))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Balance:
    """The posted balance of an account as of an instant, from the journal."""

    account_number: str
    currency: str
    at: datetime
    balance: Decimal

    @classmethod
    def from_api(cls, d: Json) -> Balance:
        cur = d["currency"]
        return cls(d["account_number"], cur, instant(d["at"]), amount(d["balance"], cur))


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """An admin's freeze or unfreeze: `frozen`, `active`, or `pending` when the
    ledger had not answered within the wait budget."""

    account_number: str
    status: str

    @classmethod
    def from_api(cls, d: Json) -> AccountStatus:
        return cls(d["account_number"], d["status"])


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A webhook endpoint. `secret` (the key of `Paystream-Signature`, see
    `paystream.webhooks`) is known only in the answer that created it."""

    endpoint_id: str
    url: str
    active: bool
    created_at: datetime
    secret: str | None = None

    @classmethod
    def from_api(cls, d: Json) -> WebhookEndpoint:
        return cls(d["endpoint_id"], d["url"], bool(d["active"]), instant(d["created_at"]), d.get("secret"))


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One fraud rule that fired: its name, what it added to the score, and why."""

    rule: str
    score: int
    detail: str


@dataclass(frozen=True, slots=True)
class Review:
    """A fraud alert in the review queue (admin only); its id is the alert's.
    `status` is `open` until an admin approves or rejects it (then final). The
    accounts are numbers, None for an account opened on Kafka directly."""

    id: str
    payment_id: str
    from_account: str | None
    to_account: str | None
    amount: Decimal
    currency: str
    score: int
    risk: str
    reasons: tuple[RuleHit, ...]
    detected_at: datetime
    status: str
    decided_by: str | None
    decided_by_email: str | None
    decided_at: datetime | None
    note: str | None

    @classmethod
    def from_api(cls, d: Json) -> Review:
        cur = d["currency"]
        return cls(
            id=d["id"], payment_id=d["payment_id"], from_account=d.get("from_account"),
            to_account=d.get("to_account"), amount=amount(d["amount"], cur), currency=cur, score=int(d["score"]),
            risk=d["risk"], reasons=tuple(RuleHit(h["rule"], int(h["score"]), h["detail"]) for h in d["reasons"]),
            detected_at=instant(d["detected_at"]), status=d["status"], decided_by=d.get("decided_by"),
            decided_by_email=d.get("decided_by_email"), decided_at=_instant_or_none(d.get("decided_at")),
            note=d.get("note"),
        )  # fmt: skip
