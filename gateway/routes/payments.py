"""Payments between accounts: made through the ledger, read back from the payment
record the gateway keeps and from the read model."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from starlette.responses import Response

from gateway import models as M
from gateway import store
from gateway.deps import (
    Cursor,
    GatewayDep,
    IdemKey,
    Limit,
    Number,
    Prefer,
    User,
    account_of,
    respond,
    wait_budget,
)
from gateway.movements import Movement, iso
from gateway.problems import Problem, responses
from gateway.security import Principal, valid_account_number
from gateway.service import (
    Gateway,
    json_response,
    later_status,
    list_response,
    public,
    public_reason,
)
from gateway.store import AccountRef
from paystream.money import Money, MoneyError, format_minor

router = APIRouter(prefix="/v1", tags=["payments"])
PaymentId = Annotated[str, Path(max_length=64)]

_ACCEPTED = {"description": "accepted; the outcome is not known yet", "model": M.PaymentOut}


@router.post(
    "/payments", status_code=201, response_model=M.PaymentOut,
    responses={**responses(400, 401, 402, 404, 409, 413, 422, 429, 503), 202: _ACCEPTED},
)  # fmt: skip
async def create_payment(
    body: M.PaymentIn, p: User, gw: GatewayDep, idempotency_key: IdemKey, prefer: Prefer = None
) -> Response:
    """Move money from one of the caller's accounts to any account. 201 when the
    ledger completed it, 402 when it refused or failed, 202 + Location when it did
    not answer within the wait budget (`Prefer: wait=N`)."""
    src = await account_of(gw, p, body.from_account, strict=True)
    dst = await gw.account(body.to_account) if valid_account_number(body.to_account) else None
    if dst is None:
        raise Problem(422, "unknown_account", "to_account does not exist")
    # Both ends, before anything reaches Kafka: the ledger would refuse the sender's
    # side (CURRENCY_MISMATCH) but take the debit of a transfer to an account in another
    # currency and refund it from the receiver's side (RECEIVER_CURRENCY_MISMATCH).
    # There is no conversion.
    for side, ref in (("from_account", src), ("to_account", dst)):
        if body.currency != ref.currency:
            raise Problem(422, "currency_mismatch", f"{side} holds {ref.currency}, not {body.currency}")
    move = Movement("transfer", p.user_id, idempotency_key, body.minor, body.currency, body.description,
                    source=src, target=dst, capture=body.capture, hold_seconds=body.hold_seconds)  # fmt: skip
    return respond(await gw.submit(move, wait_budget(gw, prefer)))


@router.post(
    "/payments/{payment_id}/capture", response_model=M.PaymentOut,
    responses={**responses(400, 401, 402, 404, 409, 422, 429, 503), 202: _ACCEPTED},
)  # fmt: skip
async def capture_payment(
    payment_id: PaymentId, p: User, gw: GatewayDep, idempotency_key: IdemKey,
    body: M.CaptureIn | None = None, prefer: Prefer = None,
) -> Response:  # fmt: skip
    """Capture an authorized payment (`"capture": false`): all of it, or `amount` of
    it (the rest is released). Either party may capture. 200 with the payment once the
    money moved; 402 when the ledger refused (`hold_expired`, `hold_voided`,
    `hold_captured`, `capture_exceeds_hold`, ...)."""
    hold = await _hold(gw, p, payment_id)
    minor = hold.authorized
    if body is not None and body.amount is not None:
        try:
            minor = Money.parse(body.amount, hold.currency).minor
        except MoneyError as exc:
            raise Problem(422, exc.code, exc.detail) from None
        if minor <= 0:
            raise Problem(422, "non_positive_amount", "amount must be greater than zero")
    return respond(await gw.submit(hold.action("capture", idempotency_key, minor), wait_budget(gw, prefer)))


@router.post(
    "/payments/{payment_id}/cancel", response_model=M.PaymentOut,
    responses={**responses(400, 401, 402, 404, 409, 429, 503), 202: _ACCEPTED},
)  # fmt: skip
async def cancel_payment(
    payment_id: PaymentId, p: User, gw: GatewayDep, idempotency_key: IdemKey, prefer: Prefer = None
) -> Response:
    """Release an authorized payment's hold. Either party may cancel. 200 `canceled`;
    402 when it was captured, canceled or expired already."""
    hold = await _hold(gw, p, payment_id)
    return respond(await gw.submit(hold.action("cancel", idempotency_key, 0), wait_budget(gw, prefer)))


@dataclass(frozen=True, slots=True)
class _Hold:
    """An authorized payment as a capture or cancel needs it."""

    p: Principal
    payment_id: str
    source: AccountRef
    target: AccountRef
    authorized: int
    currency: str
    description: str | None
    created_at: str | None

    def action(self, kind: Literal["capture", "cancel"], idem_key: str, minor: int) -> Movement:
        return Movement(
            kind, self.p.user_id, idem_key, minor, self.currency, self.description, source=self.source,
            target=self.target, hold_id=self.payment_id, authorized=self.authorized, created_at=self.created_at,
        )  # fmt: skip


async def _hold(gw: Gateway, p: Principal, payment_id: str) -> _Hold:
    """The payment `payment_id` if the caller is one of its parties and it is (or was)
    an authorization; else the same 404 as for a payment that does not exist. Whether
    it can still be captured or canceled is the ledger's to say."""
    not_found = Problem(404, "payment_not_found", "no such authorized payment")
    try:
        payment_id = str(uuid.UUID(payment_id))
    except ValueError:
        raise not_found from None
    rec = await gw.cached_payment(payment_id)
    row = await store.payment_row(gw.pool, payment_id)
    if rec is not None and rec.get("amount_authorized"):
        src, dst = await gw.account(rec["from_account"]), await gw.account(rec["to_account"])
        currency = str(rec["currency"])
        authorized = Money.parse(rec["amount_authorized"], currency).minor
        description, created = rec.get("description"), rec.get("created_at")
    elif row is not None and row.get("authorized_amount") is not None:
        refs = await gw.accounts_by_id([str(row["from_account"]), str(row["to_account"])])
        src, dst = refs.get(str(row["from_account"])), refs.get(str(row["to_account"]))
        currency, authorized = str(row["currency"]), int(row["authorized_amount"])
        description, created = row.get("description"), iso(row.get("created_at"))
    else:
        raise not_found
    if src is None or dst is None or p.user_id not in (src.owner_id, dst.owner_id):
        raise not_found
    return _Hold(p, payment_id, src, dst, authorized, currency, description, created)


@router.get(
    "/payments/{payment_id}",
    response_model=M.PaymentOut,
    responses=responses(401, 404),
)
async def get_payment(payment_id: Annotated[str, Path(max_length=64)], p: User, gw: GatewayDep) -> Response:
    view = await _payment_view(gw, p, payment_id)
    if view is None:
        raise Problem(404, "payment_not_found", "no such payment")
    return json_response(200, view)


async def _payment_view(gw: Gateway, p: Principal, payment_id: str) -> dict[str, Any] | None:
    try:
        payment_id = str(uuid.UUID(payment_id))
    except ValueError:
        return None
    rec = await gw.cached_payment(payment_id)
    # The read model is always asked: the cached record holds the outcome the POST
    # answered, and a later one (a reversal) reaches only the read model; a cached
    # "completed" must not hide it for the week the record lives.
    row = await store.payment_row(gw.pool, payment_id)
    if rec is not None:
        if not p.is_admin and p.user_id not in rec.get("owners", ()):
            return None
        if row is not None:
            status = str(row.get("status") or "").lower()
            if later_status(status, str(rec.get("status"))):
                reason = row.get("reason")
                rec = {**rec, "status": status, "reason": str(reason).lower() if reason else None}
            rec.update(_hold_view(row))
        return public(rec)
    if row is None:
        return None
    return await _row_view(gw, p, row)


async def _row_view(gw: Gateway, p: Principal, row: dict[str, Any]) -> dict[str, Any] | None:
    ids = [str(row[k]) for k in ("from_account", "to_account") if row.get(k)]
    refs = await gw.accounts_by_id(ids)
    if not p.is_admin and p.user_id not in {r.owner_id for r in refs.values()}:
        return None
    frm = refs.get(str(row.get("from_account")))
    to = refs.get(str(row.get("to_account")))
    kind = str(row.get("kind") or "transfer").lower()
    kind = {"deposit": "deposit", "withdraw": "withdrawal", "withdrawal": "withdrawal"}.get(kind, "transfer")
    status = str(row.get("status") or "pending").lower()
    amount = row["amount"] if row.get("amount") is not None else row.get("authorized_amount")
    return {
        "id": str(row["payment_id"]), "object": "payment", "kind": kind,
        "status": status,
        "from_account": frm.account_number if frm else None,
        "to_account": to.account_number if to else None,
        "amount": format_minor(int(amount or 0), str(row["currency"])),
        "currency": str(row["currency"]),
        "description": row.get("description"), "reason": public_reason(row.get("reason"), status),
        "created_at": iso(row.get("created_at")),
        **_hold_view(row),
    }  # fmt: skip


def _hold_view(row: dict[str, Any]) -> dict[str, Any]:
    """A hold's fields from its read-model row; nothing for a payment that is no hold.
    Once money moved, `amount` is what moved (a partial capture moves less)."""
    if row.get("authorized_amount") is None:
        return {}
    cur = str(row["currency"])
    out = {"amount_authorized": format_minor(int(row["authorized_amount"]), cur),
           "expires_at": iso(row["hold_expires_at"]) if row.get("hold_expires_at") else None}
    if row.get("amount") is not None:
        out["amount"] = format_minor(int(row["amount"]), cur)
    return out


@router.get("/accounts/{account_number}/holds", response_model=M.PaymentList, responses=responses(401, 404, 503))
async def account_holds(account_number: Number, p: User, gw: GatewayDep, limit: Limit = 20) -> Response:
    """The account's open holds (authorized payments, `requires_capture`), soonest to
    lapse first; the account's owner or an admin."""
    await gw.reads.settle(p.user_id)
    ref = await account_of(gw, p, account_number)
    rows = await store.open_holds(gw.pool, ref.account_id, limit + 1) or []
    data = [v for v in [await _row_view(gw, p, r) for r in rows[:limit]] if v is not None]
    return list_response(data, len(rows) > limit)


@router.get("/payments", response_model=M.PaymentList, responses=responses(400, 401, 503))
async def list_payments(p: User, gw: GatewayDep, limit: Limit = 20, starting_after: Cursor = None) -> Response:
    """Payments from or to the caller's accounts, newest first, from the read model."""
    await gw.reads.settle(p.user_id)
    refs = await store.accounts_of(gw.pool, p.user_id)
    ids = [r.account_id for r in refs]
    for r in refs:
        gw.accounts.put(r)
    before = None
    if starting_after is not None:
        try:
            sid = str(uuid.UUID(starting_after))
        except ValueError:
            raise Problem(400, "invalid_cursor", "starting_after is not a payment id") from None
        row = await store.payment_row(gw.pool, sid)
        # Only the caller's own payments are cursors: accepting anyone's would tell which
        # payment ids exist and when they were made. Unknown and foreign ids look alike.
        mine = row is not None and bool({str(row.get("from_account")), str(row.get("to_account"))} & set(ids))
        if row is None or not (mine or p.is_admin):
            raise Problem(400, "invalid_cursor", "starting_after is not one of your payments")
        before = (row["created_at"], sid)
    rows = await store.payments_of(gw.pool, ids, limit + 1, before) if ids else []
    rows = rows or []
    data = [v for v in [await _row_view(gw, p, r) for r in rows[:limit]] if v is not None]
    return list_response(data, len(rows) > limit)
