"""The caller's accounts and their transaction history, from the read model."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from gateway import models as M
from gateway import store
from gateway.deps import Cursor, GatewayDep, Limit, Number, User, account_of
from gateway.movements import iso
from gateway.problems import Problem, responses
from gateway.service import Gateway, json_response
from paystream.money import format_minor

router = APIRouter(prefix="/v1", tags=["accounts"])

# Signed effect of each money-moving event on the account that emitted it.
_SIGN = {
    "DEPOSITED": 1,
    "WITHDRAWN": -1,
    "TRANSFER_DEBITED": -1,
    "TRANSFER_COMPLETED": 1,
    "TRANSFER_FAILED": 1,
    "REVERSAL_DEBITED": -1,
    "TRANSFER_REVERSED": 1,
}


async def _account_views(gw: Gateway, refs: list[store.AccountRef]) -> list[dict[str, Any]]:
    states = await store.account_states(gw.pool, [r.account_id for r in refs])
    out = []
    for r in refs:
        st = states.get(r.account_id)
        balance = int(st["balance"]) if st and st.get("balance") is not None else 0
        held = int(st["held"]) if st and st.get("held") else 0
        out.append({
            "account_number": r.account_number, "currency": r.currency,
            "status": str(st["status"]).lower() if st and st.get("status") else "opening",
            "balance": format_minor(balance, r.currency),
            "posted": format_minor(balance, r.currency),
            "available": format_minor(balance - held, r.currency),
            "created_at": iso(r.created_at) if r.created_at else None,
        })  # fmt: skip
    return out


@router.get("/accounts", response_model=M.AccountList, responses=responses(401, 503))
async def my_accounts(p: User, gw: GatewayDep) -> Response:
    await gw.reads.settle(p.user_id)  # read-your-writes (gateway/reads.py)
    refs = await store.accounts_of(gw.pool, p.user_id)
    return json_response(200, {"object": "list", "data": await _account_views(gw, refs), "has_more": False})


@router.get(
    "/accounts/{account_number}",
    response_model=M.AccountOut,
    responses=responses(401, 404, 503),
)
async def get_account(account_number: Number, p: User, gw: GatewayDep) -> Response:
    await gw.reads.settle(p.user_id)  # read-your-writes (gateway/reads.py)
    ref = await account_of(gw, p, account_number)
    return json_response(200, (await _account_views(gw, [ref]))[0])


@router.get(
    "/accounts/{account_number}/transactions",
    response_model=M.TransactionList,
    responses=responses(401, 404, 503),
)
async def transactions(
    account_number: Number,
    p: User,
    gw: GatewayDep,
    limit: Limit = 20,
    starting_after: Cursor = None,
) -> Response:
    """Newest first. `starting_after` is the id of the last transaction of the
    previous page."""
    await gw.reads.settle(p.user_id)
    ref = await account_of(gw, p, account_number)
    before = None
    if starting_after is not None:
        before = await _event_cursor(gw, ref.account_id, starting_after)
    rows = await store.events_of(gw.pool, ref.account_id, limit + 1, before) or []
    others = [str(r["counterparty_id"]) for r in rows if r.get("counterparty_id")]
    names = await gw.accounts_by_id(others)
    data = []
    for r in rows[:limit]:
        sign = _SIGN.get(str(r["type"]), 1)
        cp = names.get(str(r["counterparty_id"])) if r.get("counterparty_id") else None
        data.append({
            "id": str(r["event_id"]), "type": str(r["type"]).lower(),
            "payment_id": str(r["payment_id"]),
            "amount": format_minor(sign * int(r["amount"]), ref.currency), "currency": ref.currency,
            "balance_after": format_minor(int(r["balance_after"]), ref.currency),
            "counterparty": cp.account_number if cp else None, "occurred_at": iso(r["occurred_at"]),
        })  # fmt: skip
    return json_response(200, {"object": "list", "data": data, "has_more": len(rows) > limit})


async def _event_cursor(gw: Gateway, account_id: str, event_id: str) -> int:
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise Problem(400, "invalid_cursor", "starting_after is not a transaction id") from None
    seq = await store.event_sequence(gw.pool, account_id, event_id)
    if seq is None:
        raise Problem(400, "invalid_cursor", "starting_after is not a transaction of this account")
    return seq
