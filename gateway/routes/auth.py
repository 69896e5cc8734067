"""Registration, login and the caller's own user."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import models as M
from gateway import store
from gateway.deps import GatewayDep, User, gw_of, ip_bucket, rate_limit, too_many
from gateway.movements import iso
from gateway.problems import Problem, responses
from gateway.security import dummy_hash, hash_password, issue_token, verify_password
from gateway.service import json_response
from paystream.money import format_minor

router = APIRouter(prefix="/v1", tags=["auth"])


def _user_view(u: store.User) -> dict[str, Any]:
    return {
        "id": u.user_id,
        "email": u.email,
        "name": u.name,
        "role": u.role,
        "created_at": iso(u.created_at),
    }


# register and login look the gateway up themselves rather than take a GatewayDep:
# FastAPI resolves dependencies before it validates the body, and these two, the only
# routes without a token to check first, refuse a malformed body (422) before
# touching the gateway at all.


@router.post(
    "/auth/register",
    status_code=201,
    response_model=M.RegisterOut,
    responses=responses(400, 409, 413, 422, 429),
)
async def register(body: M.RegisterIn, request: Request) -> Response:
    """Create a user and their first account. The account is opened by the ledger
    shortly after (status `opening` until then)."""
    gw = await gw_of(request)
    await rate_limit(gw, "register", ip_bucket(gw, request), gw.settings.gateway_rate_register_per_minute)
    pw_hash = await asyncio.to_thread(hash_password, body.password)
    try:
        user, ref = await store.create_user(
            gw.pool,
            email=body.email,
            password_hash=pw_hash,
            name=body.name,
            role="user",
            currency=body.currency,
        )
    except store.EmailTaken:
        raise Problem(409, "email_taken", "an account with this email already exists") from None
    assert ref is not None
    gw.accounts.put(ref)
    account = {
        "account_number": ref.account_number,
        "currency": ref.currency,
        "status": "opening",
        "balance": format_minor(0, ref.currency),
        "posted": format_minor(0, ref.currency),
        "available": format_minor(0, ref.currency),
        "created_at": iso(user.created_at),
    }
    return json_response(
        201,
        {"user": _user_view(user), "account": account},
        {"Location": f"/v1/accounts/{ref.account_number}"},
    )


@router.post(
    "/auth/login",
    response_model=M.TokenOut,
    responses=responses(400, 401, 413, 422, 429),
)
async def login(body: M.LoginIn, request: Request) -> Response:
    """The same 401 for an unknown email and a wrong password, after the same work.

    Two limits: per client address (IPv6 by /64), and per email, which locks an
    account out for exponentially longer after repeated failures, so guessing one
    account's password from many addresses does not work either. Both answer 429
    `rate_limited` with Retry-After, the same for unknown and known emails."""
    gw = await gw_of(request)
    await rate_limit(gw, "login", ip_bucket(gw, request), gw.settings.gateway_rate_login_per_minute)
    email = body.email.strip().lower()
    locked = await gw.logins.attempt(email)
    if locked is not None:
        raise too_many("failed logins for this account", locked)
    user = await store.user_by_email(gw.pool, email)
    stored = user.password_hash if user else dummy_hash()
    ok = await asyncio.to_thread(verify_password, stored, body.password)
    if user is None or not ok:
        raise Problem(401, "invalid_credentials", "email or password is wrong")
    await gw.logins.succeeded(email)
    token = issue_token(gw.settings, user.user_id, user.role)
    return json_response(
        200,
        {"access_token": token, "token_type": "Bearer", "expires_in": gw.settings.jwt_ttl_seconds},
        {"Cache-Control": "no-store"},
    )


@router.get("/me", response_model=M.UserOut, responses=responses(401))
async def me(p: User, gw: GatewayDep) -> Response:
    user = await store.user_by_id(gw.pool, p.user_id)
    if user is None:
        raise Problem(401, "invalid_token", "the access token's user no longer exists")
    return json_response(200, _user_view(user))
