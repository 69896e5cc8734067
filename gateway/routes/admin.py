"""What only admins do to accounts: move money in and out from outside, freeze and
unfreeze. The review queue is `gateway.routes.reviews`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from gateway import models as M
from gateway.deps import Admin, GatewayDep, IdemKey, Number, Prefer, account_of, respond, wait_budget
from gateway.movements import Kind, Movement
from gateway.problems import Problem, responses
from gateway.security import Principal
from gateway.service import Gateway, json_response
from paystream import commands as C

router = APIRouter(prefix="/v1", tags=["admin"])


async def _movement(
    gw: Gateway,
    kind: Kind,
    account_number: str,
    body: M.MovementIn,
    p: Principal,
    idempotency_key: str,
    prefer: str | None,
) -> Response:
    ref = await account_of(gw, p, account_number)
    if body.currency != ref.currency:
        raise Problem(422, "currency_mismatch", f"the account holds {ref.currency}, not {body.currency}")
    source, target = (ref, None) if kind == "withdrawal" else (None, ref)
    move = Movement(kind, p.user_id, idempotency_key, body.minor, body.currency, body.description,
                    source=source, target=target)  # fmt: skip
    return respond(await gw.submit(move, wait_budget(gw, prefer)))


_MOVEMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(400, 401, 402, 403, 404, 409, 413, 422, 503),
    202: {"description": "accepted; the outcome is not known yet", "model": M.PaymentOut},
}


@router.post(
    "/accounts/{account_number}/deposits",
    status_code=201,
    response_model=M.PaymentOut,
    responses=_MOVEMENT_RESPONSES,
)
async def deposit(
    account_number: Number,
    body: M.MovementIn,
    p: Admin,
    gw: GatewayDep,
    idempotency_key: IdemKey,
    prefer: Prefer = None,
) -> Response:
    """Money entering from outside (admin only); idempotent like payments."""
    return await _movement(gw, "deposit", account_number, body, p, idempotency_key, prefer)


@router.post(
    "/accounts/{account_number}/withdrawals",
    status_code=201,
    response_model=M.PaymentOut,
    responses=_MOVEMENT_RESPONSES,
)
async def withdrawal(
    account_number: Number,
    body: M.MovementIn,
    p: Admin,
    gw: GatewayDep,
    idempotency_key: IdemKey,
    prefer: Prefer = None,
) -> Response:
    """Money leaving to the outside (admin only); idempotent like payments."""
    return await _movement(gw, "withdrawal", account_number, body, p, idempotency_key, prefer)


async def _status_change(
    gw: Gateway,
    ctype: str,
    account_number: str,
    body: M.StatusChangeIn | None,
    p: Principal,
    prefer: str | None,
) -> Response:
    ref = await account_of(gw, p, account_number)
    cmd = C.status_change(
        ctype,
        ref.account_id,
        reason=(body.reason if body else "") or "admin action",
        actor=p.user_id,
    )
    outcome = await gw.send_and_wait(cmd, wait_budget(gw, prefer))
    if outcome is None:
        return json_response(202, {"account_number": ref.account_number, "status": "pending"})
    if outcome.status != "completed":
        code = (outcome.reason or "rejected").lower()
        raise Problem(409, code, f"the account cannot be changed: {code.replace('_', ' ')}")
    return json_response(
        200,
        {
            "account_number": ref.account_number,
            "status": "frozen" if ctype == "FREEZE" else "active",
        },
    )


@router.post(
    "/admin/accounts/{account_number}/freeze",
    response_model=M.StatusOut,
    responses=responses(401, 403, 404, 409, 413, 422, 503),
)
async def freeze(
    account_number: Number,
    p: Admin,
    gw: GatewayDep,
    body: M.StatusChangeIn | None = None,
    prefer: Prefer = None,
) -> Response:
    return await _status_change(gw, "FREEZE", account_number, body, p, prefer)


@router.post(
    "/admin/accounts/{account_number}/unfreeze",
    response_model=M.StatusOut,
    responses=responses(401, 403, 404, 409, 413, 422, 503),
)
async def unfreeze(
    account_number: Number,
    p: Admin,
    gw: GatewayDep,
    body: M.StatusChangeIn | None = None,
    prefer: Prefer = None,
) -> Response:
    return await _status_change(gw, "UNFREEZE", account_number, body, p, prefer)
