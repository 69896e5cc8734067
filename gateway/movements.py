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

Kind = Literal["transfer", "deposit", "withdrawal"]

# The endpoint a kind is requested on: idempotency keys are scoped to it.
ENDPOINTS: dict[str, str] = {"transfer": "payments", "deposit": "deposits", "withdrawal": "withdrawals"}


@dataclass(frozen=True, slots=True)
class Movement:
    """`source` pays for a transfer or withdrawal, `target` receives a transfer or
    deposit; deposits and withdrawals have the outside world on the other end."""

    kind: Kind
    user_id: str
    idem_key: str
    minor: int
    currency: str
    description: str | None
    source: AccountRef | None = None
    target: AccountRef | None = None

    @property
    def endpoint(self) -> str:
        return ENDPOINTS[self.kind]

    @property
    def payment_id(self) -> str:
        # Deposits and withdrawals are scoped to their endpoint, so one key on two
        # endpoints never names one command (gateway/README.md, Idempotency).
        client = self.user_id if self.kind == "transfer" else f"{self.user_id}/{self.endpoint}"
        return C.payment_id_for(client, self.idem_key)

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
        meta = {"description": self.description} if self.description else {}
        kw: dict[str, Any] = {"command_id": self.payment_id, "requested_by": self.user_id, "metadata": meta}
        if self.kind == "transfer":
            assert self.target is not None
            return C.transfer(self.account.account_id, self.target.account_id, self.minor, self.currency, **kw)
        build = C.deposit if self.kind == "deposit" else C.withdraw
        return build(self.account.account_id, self.minor, self.currency, **kw)

    def record(self) -> dict[str, Any]:
        """The payment as the gateway shows it until the read model has it."""
        owners = [r.owner_id for r in (self.source, self.target) if r is not None]
        return {
            "id": self.payment_id, "object": "payment", "kind": self.kind, "status": "pending",
            "from_account": self.source.account_number if self.source else None,
            "to_account": self.target.account_number if self.target else None,
            "amount": format_minor(self.minor, self.currency), "currency": self.currency,
            "description": self.description, "reason": None,
            "created_at": _now_iso(), "owners": owners,
        }  # fmt: skip


def iso(ts: Any) -> str:
    """A time as the API shows it: RFC 3339 UTC with a Z."""
    if isinstance(ts, datetime):
        return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(ts)


def _now_iso() -> str:
    return iso(int(time.time() * 1000))
