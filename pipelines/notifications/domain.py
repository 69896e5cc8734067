"""Which ledger events and review decisions a user hears about, as pure functions.

The recipient is the owner of the account whose partition emitted the event:
each event is about that account (a transfer is announced to the sender on its
debit and to the receiver on its credit, each from their own partition), so the
owner learnt from that account's ACCOUNT_OPENED is all the state needed.
"""

from __future__ import annotations

import uuid

from paystream import ids
from paystream.records import (
    ACCOUNT_FROZEN,
    ACCOUNT_UNFROZEN,
    AUTHORIZE,
    COMMAND_REJECTED,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PLACED,
    HOLD_VOIDED,
    PAYMENT_AUTHORIZED,
    PAYMENT_CANCELED,
    PAYMENT_CAPTURED,
    PAYMENT_EXPIRED,
    PAYMENT_FAILED,
    PAYMENT_RECEIVED,
    PAYMENT_REVERSED,
    PAYMENT_SENT,
    REVERSAL_DEBITED,
    REVIEW_DECIDED,
    TRANSFER,
    TRANSFER_COMPLETED,
    TRANSFER_DEBITED,
    TRANSFER_FAILED,
    TRANSFER_REVERSED,
    Decoded,
    LedgerEvent,
    Notification,
    NotificationKind,
    ReviewDecision,
)

NAMESPACE = uuid.UUID("4c2b8e71-0d5a-4f3e-9b6c-1a7e8d2f5c90")

# event type -> notification kind (COMMAND_REJECTED of a transfer is handled apart)
KINDS: dict[str, NotificationKind] = {
    TRANSFER_DEBITED: PAYMENT_SENT,
    TRANSFER_COMPLETED: PAYMENT_RECEIVED,
    TRANSFER_FAILED: PAYMENT_FAILED,
    TRANSFER_REVERSED: PAYMENT_REVERSED,  # the original sender gets the money back
    REVERSAL_DEBITED: PAYMENT_REVERSED,  # the original receiver loses it
    # Holds, told to the account holding the funds; the receiver hears of the money
    # when it arrives (PAYMENT_RECEIVED), not of a hold that may never be captured.
    HOLD_PLACED: PAYMENT_AUTHORIZED,
    HOLD_CAPTURED: PAYMENT_CAPTURED,
    HOLD_VOIDED: PAYMENT_CANCELED,
    HOLD_EXPIRED: PAYMENT_EXPIRED,
    ACCOUNT_FROZEN: ACCOUNT_FROZEN,
    ACCOUNT_UNFROZEN: ACCOUNT_UNFROZEN,
}


def notification_id(source_event_id: str, recipient: str) -> str:
    """Stable across replays and restarts: receivers de-duplicate by it."""
    return ids.uuid5(NAMESPACE, f"{source_event_id}|{recipient}")


def kind_of(ev: LedgerEvent | Decoded) -> NotificationKind | None:
    """What the owner of the event's account is told, or None. Events are typed
    `LedgerEvent | Decoded`: the pipeline and ops/lab pass the codec's untyped dict."""
    if ev.get("replay"):
        return None  # a repeated command changed nothing the user has not heard about
    etype = ev.get("type")
    if etype == COMMAND_REJECTED:
        return PAYMENT_FAILED if ev.get("command_type") in (TRANSFER, AUTHORIZE) else None
    return KINDS.get(etype or "")


# What a user is told when the event carries no reason code. The event's `note` is
# never told: it is free text written by staff (a freeze reason, a reversal that
# quotes the reviewing admin's note), and the details stay in the review.
GENERIC_REASONS: dict[NotificationKind, str] = {
    ACCOUNT_FROZEN: "ACCOUNT_UNDER_REVIEW",
    PAYMENT_REVERSED: "REVERSED_AFTER_REVIEW",
}


def public_reason(kind: NotificationKind, ev: LedgerEvent | Decoded) -> str | None:
    """The ledger's reason code if there is one, else a generic reason for the kind."""
    return ev.get("reason") or GENERIC_REASONS.get(kind)


def notification_for(owner: str | None, ev: LedgerEvent | Decoded) -> Notification | None:
    kind = kind_of(ev)
    if kind is None or not owner:
        return None
    movement = kind.startswith("PAYMENT_")
    return {
        "notification_id": notification_id(ev["event_id"], owner),
        "user_id": owner,
        "kind": kind,
        "payment_id": ev["payment_id"] if movement else None,
        "account_id": ev["account_id"],
        "amount": ev.get("amount"),
        "currency": ev.get("currency"),
        "reason": public_reason(kind, ev),
        "source_event_id": ev["event_id"],
        # event time: a re-emitted notification is identical to the first
        "created_at": ev["occurred_at"],
    }


def decision_notification(decision: ReviewDecision | Decoded) -> Notification | None:
    """A review decision, told to the owner of the sending account (the user whose
    payment was held). The admin's note stays internal: only the verdict is told."""
    owner = decision.get("sender_owner_id")
    if not owner:
        return None
    return {
        "notification_id": notification_id(decision["decision_id"], owner),
        "user_id": owner,
        "kind": REVIEW_DECIDED,
        "payment_id": decision["payment_id"],
        "account_id": decision["sender_id"],
        "amount": None,
        "currency": None,
        "reason": decision["decision"],
        "source_event_id": decision["decision_id"],
        "created_at": decision["decided_at"],
    }
