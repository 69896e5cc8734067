"""The shapes of paystream's Avro records, and the symbols of their enums, for mypy.

`schemas/*.avsc` are the source of truth; this module spells them in Python so
that code building or reading a record is checked against its fields, and code
comparing an enum is checked against its symbols. `tests/unit/test_records.py`
keeps the two equal: a field or symbol added, removed or renamed on one side only
fails there, not in production.

What is here, and why it costs nothing at run time:

* a `Literal` type per Avro enum, named as the enum (`CommandType`, `EventType`,
  ...): a misspelt symbol passed where one is expected fails mypy;
* a plain ``str`` constant per enum symbol, named as the symbol, for code that
  compares against one (``ev["type"] == TRANSFER_DEBITED``). Avro enums are plain
  strings on the wire and in decoded records, so a symbol that several enums share
  (``UNKNOWN``, ``OTHER``, ``REJECTED``, ``ACCOUNT_FROZEN``, ``ACCOUNT_UNFROZEN``)
  is one constant; the `Literal` at the place it is used says which enum is meant.
  Each is `Final`, so mypy reads it as its literal value and it fits the `Literal`
  types it belongs to;
* a `TypedDict` per record code builds or reads, named as the Avro record. A
  TypedDict is a plain dict at run time: annotating with one adds no work.

Conventions: every field is required (``total=True``), because the codec decodes a
record with all its fields (defaults filled in) and the builders set every field;
a nullable Avro field (a union with ``null``) is ``X | None``; ``uuid`` and
``timestamp-millis`` fields are ``str`` and ``int``, as the codec decodes them
(logical types stripped, see `paystream.codec`).

This module imports nothing from paystream or above: every floor may use it.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias, TypedDict

# ------------------------------------------------------------------------------ enums

CommandType: TypeAlias = Literal[
    "OPEN_ACCOUNT", "DEPOSIT", "WITHDRAW", "TRANSFER", "FREEZE", "UNFREEZE", "REVERSE_TRANSFER", "UNKNOWN",
    "AUTHORIZE", "CAPTURE", "VOID",
]  # fmt: skip
OPEN_ACCOUNT: Final = "OPEN_ACCOUNT"
DEPOSIT: Final = "DEPOSIT"
WITHDRAW: Final = "WITHDRAW"
TRANSFER: Final = "TRANSFER"
FREEZE: Final = "FREEZE"
UNFREEZE: Final = "UNFREEZE"
REVERSE_TRANSFER: Final = "REVERSE_TRANSFER"
AUTHORIZE: Final = "AUTHORIZE"
CAPTURE: Final = "CAPTURE"
VOID: Final = "VOID"
UNKNOWN: Final = "UNKNOWN"  # also an EventType, OutcomeStatus and LegKind: every reader's default

EventType: TypeAlias = Literal[
    "ACCOUNT_OPENED", "ACCOUNT_FROZEN", "ACCOUNT_UNFROZEN", "DEPOSITED", "WITHDRAWN",
    "TRANSFER_DEBITED", "TRANSFER_COMPLETED", "TRANSFER_FAILED", "REVERSAL_DEBITED", "TRANSFER_REVERSED",
    "COMMAND_REJECTED", "COMMAND_DUPLICATE", "UNKNOWN",
    "HOLD_PLACED", "HOLD_CAPTURED", "HOLD_VOIDED", "HOLD_EXPIRED",
]  # fmt: skip
ACCOUNT_OPENED: Final = "ACCOUNT_OPENED"
ACCOUNT_FROZEN: Final = "ACCOUNT_FROZEN"  # also a ReasonCode and a NotificationKind
ACCOUNT_UNFROZEN: Final = "ACCOUNT_UNFROZEN"  # also a NotificationKind
DEPOSITED: Final = "DEPOSITED"
WITHDRAWN: Final = "WITHDRAWN"
TRANSFER_DEBITED: Final = "TRANSFER_DEBITED"
TRANSFER_COMPLETED: Final = "TRANSFER_COMPLETED"
TRANSFER_FAILED: Final = "TRANSFER_FAILED"
REVERSAL_DEBITED: Final = "REVERSAL_DEBITED"
TRANSFER_REVERSED: Final = "TRANSFER_REVERSED"
COMMAND_REJECTED: Final = "COMMAND_REJECTED"
COMMAND_DUPLICATE: Final = "COMMAND_DUPLICATE"
HOLD_PLACED: Final = "HOLD_PLACED"
HOLD_CAPTURED: Final = "HOLD_CAPTURED"  # also a ReasonCode
HOLD_VOIDED: Final = "HOLD_VOIDED"  # also a ReasonCode
HOLD_EXPIRED: Final = "HOLD_EXPIRED"  # also a ReasonCode

OutcomeStatus: TypeAlias = Literal["PENDING", "COMPLETED", "FAILED", "REJECTED", "UNKNOWN"]
PENDING: Final = "PENDING"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
REJECTED: Final = "REJECTED"  # also a Decision

AccountKind: TypeAlias = Literal["USER", "SETTLEMENT", "TRANSIT"]
USER: Final = "USER"
SETTLEMENT: Final = "SETTLEMENT"
TRANSIT: Final = "TRANSIT"

ReasonCode: TypeAlias = Literal[
    "INSUFFICIENT_FUNDS", "ACCOUNT_FROZEN", "ACCOUNT_CLOSED", "UNKNOWN_ACCOUNT", "CURRENCY_MISMATCH",
    "SAME_ACCOUNT", "NON_POSITIVE_AMOUNT", "AMOUNT_TOO_LARGE", "UNKNOWN_CURRENCY", "ALREADY_EXISTS",
    "ID_REUSED_WITH_DIFFERENT_FIELDS", "UNKNOWN_PAYMENT", "ALREADY_REVERSED", "TRANSFER_NOT_COMPLETED",
    "ALREADY_FROZEN", "NOT_FROZEN", "RECEIVER_FROZEN", "RECEIVER_CLOSED", "RECEIVER_UNKNOWN",
    "RECEIVER_CURRENCY_MISMATCH", "NOT_ALLOWED", "OTHER", "BALANCE_LIMIT", "RECEIVER_BALANCE_LIMIT",
    "UNKNOWN_HOLD", "HOLD_CAPTURED", "HOLD_VOIDED", "HOLD_EXPIRED", "CAPTURE_EXCEEDS_HOLD", "INVALID_EXPIRY",
]  # fmt: skip
INSUFFICIENT_FUNDS: Final = "INSUFFICIENT_FUNDS"
ACCOUNT_CLOSED: Final = "ACCOUNT_CLOSED"
UNKNOWN_ACCOUNT: Final = "UNKNOWN_ACCOUNT"
CURRENCY_MISMATCH: Final = "CURRENCY_MISMATCH"
SAME_ACCOUNT: Final = "SAME_ACCOUNT"
NON_POSITIVE_AMOUNT: Final = "NON_POSITIVE_AMOUNT"
AMOUNT_TOO_LARGE: Final = "AMOUNT_TOO_LARGE"
UNKNOWN_CURRENCY: Final = "UNKNOWN_CURRENCY"
ALREADY_EXISTS: Final = "ALREADY_EXISTS"
ID_REUSED_WITH_DIFFERENT_FIELDS: Final = "ID_REUSED_WITH_DIFFERENT_FIELDS"
UNKNOWN_PAYMENT: Final = "UNKNOWN_PAYMENT"
ALREADY_REVERSED: Final = "ALREADY_REVERSED"
TRANSFER_NOT_COMPLETED: Final = "TRANSFER_NOT_COMPLETED"
ALREADY_FROZEN: Final = "ALREADY_FROZEN"
NOT_FROZEN: Final = "NOT_FROZEN"
RECEIVER_FROZEN: Final = "RECEIVER_FROZEN"
RECEIVER_CLOSED: Final = "RECEIVER_CLOSED"
RECEIVER_UNKNOWN: Final = "RECEIVER_UNKNOWN"
RECEIVER_CURRENCY_MISMATCH: Final = "RECEIVER_CURRENCY_MISMATCH"
NOT_ALLOWED: Final = "NOT_ALLOWED"
OTHER: Final = "OTHER"  # also a NotificationKind and a DeadLetterReason: their readers' default
BALANCE_LIMIT: Final = "BALANCE_LIMIT"
RECEIVER_BALANCE_LIMIT: Final = "RECEIVER_BALANCE_LIMIT"
UNKNOWN_HOLD: Final = "UNKNOWN_HOLD"
CAPTURE_EXCEEDS_HOLD: Final = "CAPTURE_EXCEEDS_HOLD"
INVALID_EXPIRY: Final = "INVALID_EXPIRY"

LegKind: TypeAlias = Literal["CREDIT", "REFUND", "REVERSAL_CREDIT", "UNKNOWN", "REVERSAL_CHECK", "REVERSE", "TICK"]
CREDIT: Final = "CREDIT"
REFUND: Final = "REFUND"
REVERSAL_CREDIT: Final = "REVERSAL_CREDIT"
REVERSAL_CHECK: Final = "REVERSAL_CHECK"
REVERSE: Final = "REVERSE"
TICK: Final = "TICK"

RiskLevel: TypeAlias = Literal["LOW", "MEDIUM", "HIGH"]
LOW: Final = "LOW"
MEDIUM: Final = "MEDIUM"
HIGH: Final = "HIGH"

Decision: TypeAlias = Literal["APPROVED", "REJECTED"]
APPROVED: Final = "APPROVED"

NotificationKind: TypeAlias = Literal[
    "PAYMENT_SENT", "PAYMENT_RECEIVED", "PAYMENT_FAILED", "PAYMENT_REVERSED", "ACCOUNT_FROZEN",
    "ACCOUNT_UNFROZEN", "REVIEW_DECIDED", "OTHER",
    "PAYMENT_AUTHORIZED", "PAYMENT_CAPTURED", "PAYMENT_CANCELED", "PAYMENT_EXPIRED",
]  # fmt: skip
PAYMENT_SENT: Final = "PAYMENT_SENT"
PAYMENT_RECEIVED: Final = "PAYMENT_RECEIVED"
PAYMENT_FAILED: Final = "PAYMENT_FAILED"
PAYMENT_REVERSED: Final = "PAYMENT_REVERSED"
PAYMENT_AUTHORIZED: Final = "PAYMENT_AUTHORIZED"
PAYMENT_CAPTURED: Final = "PAYMENT_CAPTURED"
PAYMENT_CANCELED: Final = "PAYMENT_CANCELED"
PAYMENT_EXPIRED: Final = "PAYMENT_EXPIRED"
REVIEW_DECIDED: Final = "REVIEW_DECIDED"

DeadLetterReason: TypeAlias = Literal[
    "UNDECODABLE", "UNKNOWN_SCHEMA", "INVALID", "KEY_MISMATCH", "FORBIDDEN_TYPE", "OTHER", "MISROUTED",
    "UNPRIVILEGED",
]  # fmt: skip
UNDECODABLE: Final = "UNDECODABLE"
UNKNOWN_SCHEMA: Final = "UNKNOWN_SCHEMA"
INVALID: Final = "INVALID"
KEY_MISMATCH: Final = "KEY_MISMATCH"
FORBIDDEN_TYPE: Final = "FORBIDDEN_TYPE"
MISROUTED: Final = "MISROUTED"
UNPRIVILEGED: Final = "UNPRIVILEGED"

Decoded: TypeAlias = dict[str, Any]
"""A record as `Codec.decode` returns it, not yet typed.

Functions fed decoded records (by the stream processors, the Postgres sink, the
operator tools, the lab) take ``LedgerEvent | Decoded`` (or ``FraudAlert | Decoded``,
...): mypy then checks every key they read against the TypedDict, and their callers
keep type-checking (a ``dict[str, Any]`` is not assignable to a TypedDict). Narrow
them to the TypedDict once `Codec.decode` returns typed records."""


# ---------------------------------------------------------------- schemas/command.avsc


class OpenAccount(TypedDict):
    external_number: str
    owner_id: str
    currency: str  # ISO 4217
    kind: AccountKind


class Movement(TypedDict):
    """DEPOSIT, WITHDRAW, TRANSFER and AUTHORIZE."""

    amount: int  # minor units of `currency`
    currency: str
    counterparty_id: str | None  # TRANSFER and AUTHORIZE: the receiving account
    metadata: dict[str, str]
    hold_timeout_ms: int | None  # AUTHORIZE: null takes the ledger's default


class StatusChange(TypedDict):
    """FREEZE and UNFREEZE."""

    reason: str
    actor: str


class Reversal(TypedDict):
    """REVERSE_TRANSFER, keyed by the original receiver."""

    payment_id: str
    reason: str
    actor: str
    freeze_receiver: bool
    sender_id: str | None


class HoldAction(TypedDict):
    """CAPTURE and VOID, keyed by the account holding the funds."""

    payment_id: str  # the AUTHORIZE command's id
    amount: int | None  # CAPTURE: at most the held amount; null takes all of it


class Command(TypedDict):
    """A request to the ledger; exactly one body field is set, the one `type` needs."""

    command_id: str
    type: CommandType
    account_id: str
    issued_at: int
    requested_by: str
    open_account: OpenAccount | None
    movement: Movement | None
    status_change: StatusChange | None
    reversal: Reversal | None
    hold: HoldAction | None


class CommandBatch(TypedDict):
    batch_id: str
    partition: int
    partition_count: int
    items: list[Command]


# ----------------------------------------------------------- schemas/ledger_event.avsc


class Posting(TypedDict):
    account_id: str
    account_kind: AccountKind
    amount: int  # signed change of the account's balance, minor units
    currency: str


class AccountInfo(TypedDict):
    """ACCOUNT_OPENED: the new account."""

    external_number: str
    owner_id: str
    currency: str
    kind: AccountKind


class LedgerEvent(TypedDict):
    """What the ledger did; postings sum to zero per currency."""

    event_id: str
    command_id: str
    payment_id: str
    account_id: str
    sequence: int
    type: EventType
    command_type: CommandType
    status: OutcomeStatus
    terminal: bool
    replay: bool
    reason: ReasonCode | None
    counterparty_id: str | None
    amount: int | None
    currency: str | None
    balance_after: int | None
    postings: list[Posting]
    account: AccountInfo | None
    requested_by: str
    note: str | None
    metadata: dict[str, str]
    occurred_at: int
    held_after: int | None  # hold events: the account's held total after it
    expires_at: int | None  # HOLD_PLACED
    prev_hash: str  # the chain: paystream.journal
    hash: str


# ------------------------------------------------------- schemas/leg.avsc, leg_batch.avsc


class Leg(TypedDict):
    """The second half of a movement, from the ledger to itself."""

    leg_id: str
    kind: LegKind
    command_id: str
    payment_id: str
    account_id: str  # applies the leg; equals the key
    counterparty_id: str
    amount: int
    currency: str
    reason: str | None
    requested_by: str
    issued_at: int


class LegBatch(TypedDict):
    batch_id: str
    partition: int
    partition_count: int
    items: list[Leg]


# ------------------------------------------------------------------- schemas/fraud_*.avsc


class RuleHit(TypedDict):
    rule: str
    score: int
    detail: str


class FraudAlert(TypedDict):
    alert_id: str
    payment_id: str
    account_id: str  # the sender
    counterparty_id: str
    amount: int
    currency: str
    score: int
    risk: RiskLevel
    reasons: list[RuleHit]
    detected_at: int
    sender_owner_id: str | None


class ReviewDecision(TypedDict):
    decision_id: str
    alert_id: str
    payment_id: str
    sender_id: str
    receiver_id: str
    decision: Decision
    decided_by: str
    note: str | None
    decided_at: int
    sender_owner_id: str | None


class FlowOrigin(TypedDict):
    account_id: str
    hops: int
    occurred_at: int


class FundsFlow(TypedDict):
    payment_id: str
    sender_id: str
    receiver_id: str
    amount: int
    currency: str
    occurred_at: int
    origins: list[FlowOrigin]


# --------------------------------------------------------------- schemas/notification.avsc


class Notification(TypedDict):
    notification_id: str
    user_id: str
    kind: NotificationKind
    payment_id: str | None
    account_id: str | None
    amount: int | None
    currency: str | None
    reason: str | None
    source_event_id: str
    created_at: int


# ---------------------------------------------------------------- schemas/dead_letter.avsc


class DeadLetter(TypedDict):
    dead_letter_id: str
    component: str
    reason_code: DeadLetterReason
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    failed_at: int
