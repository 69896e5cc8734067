"""What compensation decides, as pure functions over the sender's state.

The state (one per sending account, a `Store`) holds `h`, the HIGH alerts that keep
the sender frozen until they are decided, and `d:<alert id>`, the decisions already
acted on. The functions return the ledger commands to send, keyed by the account
whose partition applies them; every command id is derived, so a replay is a ledger
duplicate, never a second reversal or unfreeze.
"""

from __future__ import annotations

import uuid
from typing import Any

from paystream import commands as C
from paystream import ids
from paystream.records import HIGH, REJECTED, UNFREEZE, VOID, Decoded, FraudAlert, ReviewDecision
from paystream.stream.store import Store

NAMESPACE = uuid.UUID("9a2d6f1c-3e8b-4b7a-a1c5-7d0e2f4b6c83")

KeyedCommand = tuple[str, dict[str, Any]]  # (key, command)


def unfreeze_command_id(alert_id: str) -> str:
    return ids.uuid5(NAMESPACE, f"unfreeze:{alert_id}")


def void_command_id(payment_id: str) -> str:
    return ids.uuid5(NAMESPACE, f"void:{payment_id}")


def _holding(store: Store) -> list[str]:
    return list(store.get("h", []))


def _unfreeze(sender: str, alert_id: str, actor: str, why: str) -> KeyedCommand:
    return sender, C.status_change(UNFREEZE, sender, actor=actor, reason=why,
                                   command_id=unfreeze_command_id(alert_id))


def apply_alert(store: Store, alert: FraudAlert | Decoded) -> list[KeyedCommand]:
    """Track a HIGH alert as holding its sender frozen until it is decided. The
    processor passes the codec's untyped dict (`paystream.records.Decoded`)."""
    if alert["risk"] != HIGH:
        return []
    aid, sender = alert["alert_id"], alert["account_id"]
    held = _holding(store)
    if aid in held:
        return []
    if store.get(f"d:{aid}") is not None:
        # decided before we saw it: its freeze is already unwanted
        why = f"review of alert {aid} decided before the alert arrived"
        return [] if held else [_unfreeze(sender, aid, "fraud-compensation", why)]
    store.set("h", [*held, aid])
    return []


def apply_decision(store: Store, d: ReviewDecision | Decoded) -> list[KeyedCommand]:
    aid, sender = d["alert_id"], d["sender_id"]
    if store.get(f"d:{aid}") is not None:
        return []  # a redelivered decision: already acted on
    store.set(f"d:{aid}", d["decision"])
    held = _holding(store)
    was_holding = aid in held
    if was_holding:
        held.remove(aid)
        store.set("h", held)
    out: list[KeyedCommand] = []
    why = f"fraud review {aid} {d['decision'].lower()}"
    if d.get("note"):
        why += f": {d['note']}"
    if d["decision"] == REJECTED:
        # If the payment is a hold nobody captured yet, release it, before the sender
        # is unfrozen (both go to the sender's partition on one topic, in this order),
        # so nobody can capture what the review rejected. For any other payment the
        # ledger refuses the VOID UNKNOWN_HOLD (or HOLD_CAPTURED) and nothing moves;
        # the reversal then takes back what moved.
        out.append((sender, C.hold_action(VOID, sender, d["payment_id"], command_id=void_command_id(d["payment_id"]),
                                          requested_by=d["decided_by"])))
        cmd = C.reverse_transfer(d["receiver_id"], d["payment_id"], reason=why,
                                 actor=d["decided_by"], freeze_receiver=True, sender_id=sender)
        out.append((d["receiver_id"], cmd))
    if was_holding and not held:
        out.append(_unfreeze(sender, aid, d["decided_by"], why))
    return out
