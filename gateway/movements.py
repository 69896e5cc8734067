"""A money movement a client asked for, typed, built once.

A payment used to be spelled three times in each route (the fingerprint the
idempotency key remembers, the ledger command, the payment record the gateway keeps
for reads); now each is a view of one `Movement`, so they cannot disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.idempotency import fingerprint
from gateway.store import AccountRef
from paystream import commands as C
from paystream.money import format_minor
from paystream.records import CAPTURE, VOID

Kind = Literal["transfer", "deposit", "withdrawal", "capture", "cancel"]

# The endpoint a kind is requested on: idempotency keys are scoped to it (a capture's
# and a cancel's to the payment too, see `Movement.endpoint`).
ENDPOINTS: dict[str, str] = {"transfer": "payments", "deposit": "deposits", "withdrawal": "withdrawals"}

# The statuses that answer a request of each kind: a retry whose payment already shows
# one of them gets it without resending. A capture's answer is the money's outcome,
# not the hold the payment showed before it.
ANSWERS: dict[str, frozenset[str]] = {
    "transfer": frozenset({"completed", "failed", "rejected", "reversed", "requires_capture", "canceled",
                           "expired"}),
    "deposit": frozenset({"completed", "rejected", "reversed"}),
    "withdrawal": frozenset({"completed", "rejected", "reversed"}),
    "capture": frozenset({"completed", "failed", "reversed"}),
    "cancel": frozenset({"canceled"}),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Movement:
    """`source` pays for a transfer or withdrawal, `target` receives a transfer or
    deposit; deposits and withdrawals have the outside world on the other end.

    A transfer with `capture` False is an authorization (a hold on `source`). A
    capture or cancel acts on the hold `hold_id` (its payment's id): `source` and
    `target` are the payment's, `minor` what to capture (None: all of it)."""

    kind: Kind
    user_id: str
    idem_key: str
    minor: int
    currency: str
    description: str | None
    source: AccountRef | None = None
    target: AccountRef | None = None
    capture: bool = True
    hold_seconds: int | None = None
    hold_id: str | None = None
    authorized: int | None = None  # a capture's or cancel's hold amount, for the record
    created_at: str | None = None  # a capture's or cancel's payment, as first made

    @property
    def endpoint(self) -> str:
        if self.kind in ("capture", "cancel"):
            return f"payments/{self.hold_id}/{self.kind}"
        return ENDPOINTS[self.kind]

    @property
    def command_id(self) -> str:
        # Deposits and withdrawals are scoped to their endpoint, so one key on two
        # endpoints never names one command (gateway/README.md, Idempotency).
        client = self.user_id if self.kind == "transfer" else f"{self.user_id}/{self.endpoint}"
        return C.payment_id_for(client, self.idem_key)

    @property
    def payment_id(self) -> str:
        """The payment the request is about: its own command's, or the hold's."""
        return self.hold_id if self.hold_id is not None else self.command_id

    @property
    def answers(self) -> frozenset[str]:
        return ANSWERS[self.kind]

    @property
    def account(self) -> AccountRef:
        """The account whose partition the ledger applies the command on."""
        ref = self.target if self.kind == "deposit" else self.source
        if ref is None:
            raise ValueError(f"a {self.kind} needs its account")
        return ref

    def fingerprint(self) -> str:
        """What the key remembers of the request: a retry with another body is 422.
        The shapes are the ones keys were written with, so live keys stay valid."""
        if self.hold_id is not None:
            return fingerprint({"payment": self.hold_id, "amount": self.minor})
        if not self.capture:
            assert self.source is not None and self.target is not None
            return fingerprint({"from": self.source.account_number, "to": self.target.account_number,
                                "amount": self.minor, "currency": self.currency, "description": self.description,
                                "capture": False, "hold_seconds": self.hold_seconds})  # fmt: skip
        if self.kind == "transfer":
            assert self.source is not None and self.target is not None
            fields: dict[str, Any] = {
                "from": self.source.account_number,
                "to": self.target.account_number,
            }
        else:
            fields = {"account": self.account.account_number}
        return fingerprint({**fields, "amount": self.minor, "currency": self.currency,
                            "description": self.description})  # fmt: skip

    def command(self) -> dict[str, Any]:
        if self.hold_id is not None:
            return C.hold_action(
                CAPTURE if self.kind == "capture" else VOID, self.account.account_id, self.hold_id,
                amount=self.minor if self.kind == "capture" else None, command_id=self.command_id,
                requested_by=self.user_id,
            )  # fmt: skip
        meta = {"description": self.description} if self.description else {}
        kw: dict[str, Any] = {"command_id": self.command_id, "requested_by": self.user_id, "metadata": meta}
        if self.kind == "transfer":
            assert self.target is not None
            if not self.capture:
                timeout = None if self.hold_seconds is None else self.hold_seconds * 1000
                return C.authorize(self.account.account_id, self.target.account_id, self.minor, self.currency,
                                   hold_timeout_ms=timeout, **kw)  # fmt: skip
            return C.transfer(self.account.account_id, self.target.account_id, self.minor, self.currency, **kw)
        build = C.deposit if self.kind == "deposit" else C.withdraw
        return build(self.account.account_id, self.minor, self.currency, **kw)

    def record(self) -> dict[str, Any]:
        """The payment as the gateway shows it until the read model has it."""
        owners = [r.owner_id for r in (self.source, self.target) if r is not None]
        return {
            "id": self.payment_id, "object": "payment",
            "kind": "transfer" if self.hold_id is not None else self.kind, "status": "pending",
            "from_account": self.source.account_number if self.source else None,
            "to_account": self.target.account_number if self.target else None,
            "amount": format_minor(self.minor if self.kind != "cancel" else self.authorized or 0, self.currency),
            "currency": self.currency, "description": self.description, "reason": None,
            "created_at": self.created_at or _now_iso(), "owners": owners,
            **self._hold_fields(),
        }  # fmt: skip

    def _hold_fields(self) -> dict[str, Any]:
        if self.hold_id is None and self.capture:
            return {}
        held = self.minor if self.hold_id is None else self.authorized
        return {"amount_authorized": None if held is None else format_minor(held, self.currency)}


def iso(ts: Any) -> str:
    """A time as the API shows it: RFC 3339 UTC with a Z."""
    if isinstance(ts, datetime):
        return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(ts)


def _now_iso() -> str:
    return iso(int(time.time() * 1000))
