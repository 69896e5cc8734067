"""What a payment's parties see as its reason: ledger codes, never staff notes."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.security import Principal

NOTE = "fraud review 7f rejected: mule account per AML case 4411 (j.smith)"


@dataclass
class _Ref:
    account_id: str
    account_number: str
    owner_id: str


class _Gw:
    def __init__(self, refs: dict[str, _Ref]) -> None:
        self.refs = refs

    async def accounts_by_id(self, ids: list[str]) -> dict[str, _Ref]:
        return {i: self.refs[i] for i in ids if i in self.refs}


def _view(status: str, reason: str | None) -> dict[str, Any]:
    from gateway.routes.payments import _row_view

    owner, a, b = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    gw = _Gw({a: _Ref(a, "PS0000000001", owner), b: _Ref(b, "PS0000000002", str(uuid.uuid4()))})
    row = {"payment_id": str(uuid.uuid4()), "kind": "TRANSFER", "status": status, "from_account": a,
           "to_account": b, "amount": 500, "currency": "USD", "description": "rent", "reason": reason,
           "created_at": datetime.now(UTC)}
    view = asyncio.run(_row_view(gw, Principal(owner, "user"), row))  # type: ignore[arg-type]
    assert view is not None
    return view


def test_a_reversed_payment_does_not_show_the_admins_note() -> None:
    view = _view("REVERSED", NOTE)
    assert view["status"] == "reversed"
    assert view["reason"] == "reversed_after_review"
    assert "AML" not in str(view) and "j.smith" not in str(view)


def test_ledger_reason_codes_are_shown_lower_case() -> None:
    assert _view("FAILED", "RECEIVER_FROZEN")["reason"] == "receiver_frozen"
    assert _view("REJECTED", "INSUFFICIENT_FUNDS")["reason"] == "insufficient_funds"
    assert _view("COMPLETED", None)["reason"] is None


def test_public_reason_keeps_codes_and_drops_free_text() -> None:
    from gateway.service import public_reason

    assert public_reason("INSUFFICIENT_FUNDS", "rejected") == "insufficient_funds"
    assert public_reason(NOTE, "reversed") == "reversed_after_review"
    assert public_reason(NOTE, "failed") is None
