"""Compensation decisions as pure functions over a dict store."""

from __future__ import annotations

import uuid

from paystream.commands import reversal_command_id
from paystream.stream.store import DictStore
from pipelines.compensation.domain import apply_alert, apply_decision, unfreeze_command_id, void_command_id

SENDER, RECEIVER = str(uuid.uuid4()), str(uuid.uuid4())


def alert(risk: str = "HIGH") -> dict:
    return {"alert_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4()), "account_id": SENDER,
            "counterparty_id": RECEIVER, "risk": risk}


def decision(a: dict, verdict: str) -> dict:
    return {"decision_id": str(uuid.uuid4()), "alert_id": a["alert_id"],
            "payment_id": a["payment_id"], "sender_id": SENDER, "receiver_id": RECEIVER,
            "decision": verdict, "decided_by": "admin-1", "note": "checked"}


def kinds(cmds: list) -> list[tuple[str, str, str]]:
    return [(k, c["type"], c["command_id"]) for k, c in cmds]


def test_reject_reverses_once_and_unfreezes_the_sender():
    s = DictStore()
    a = alert()
    assert apply_alert(s, a) == []
    cmds = apply_decision(s, decision(a, "REJECTED"))
    # a hold nobody captured is voided before the sender is unfrozen (one topic, one
    # partition: the ledger applies them in this order), so nobody captures it then
    assert kinds(cmds) == [
        (SENDER, "VOID", void_command_id(a["payment_id"])),
        (RECEIVER, "REVERSE_TRANSFER", reversal_command_id(a["payment_id"])),
        (SENDER, "UNFREEZE", unfreeze_command_id(a["alert_id"])),
    ]
    assert cmds[0][1]["hold"]["payment_id"] == a["payment_id"]
    rev = cmds[1][1]
    assert rev["account_id"] == RECEIVER and rev["reversal"]["freeze_receiver"] is True
    assert apply_decision(s, decision(a, "REJECTED")) == []  # redelivered
    assert apply_decision(s, decision(a, "APPROVED")) == []  # contradicting replay: first wins


def test_approve_unfreezes_only_when_no_other_high_alert_holds_the_sender():
    s = DictStore()
    a1, a2 = alert(), alert()
    apply_alert(s, a1)
    apply_alert(s, a2)
    apply_alert(s, a1)  # redelivered alert
    assert apply_decision(s, decision(a1, "APPROVED")) == []
    cmds = apply_decision(s, decision(a2, "APPROVED"))
    assert kinds(cmds) == [(SENDER, "UNFREEZE", unfreeze_command_id(a2["alert_id"]))]


def test_medium_alerts_never_unfreeze():
    s = DictStore()
    high, medium = alert("HIGH"), alert("MEDIUM")
    apply_alert(s, high)
    apply_alert(s, medium)
    cmds = apply_decision(s, decision(medium, "REJECTED"))
    assert [c["type"] for _, c in cmds] == ["VOID", "REVERSE_TRANSFER"]  # the HIGH one still holds
    assert apply_decision(s, decision(medium, "APPROVED")) == []


def test_decision_before_its_alert_releases_the_freeze_when_the_alert_arrives():
    s = DictStore()
    a = alert()
    assert [c["type"] for _, c in apply_decision(s, decision(a, "APPROVED"))] == []
    cmds = apply_alert(s, a)
    assert kinds(cmds) == [(SENDER, "UNFREEZE", unfreeze_command_id(a["alert_id"]))]
    assert s.get("h", []) == []
