"""The HTTP API: `paystream run gateway` serves `create_app()` with uvicorn.

Routes are thin: authenticate (JWT only), check ownership, validate, then hand a
ledger command to `Gateway.execute`, which owns idempotency and waiting.
Every error is an RFC 9457 problem document (`gateway.problems`).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import models as M
from gateway import problems, store
from gateway.idempotency import fingerprint
from gateway.problems import Problem, problem_body, responses
from gateway.security import (
    Principal,
    bearer,
    client_ip,
    dummy_hash,
    hash_password,
    issue_token,
    rate_subject,
    valid_account_number,
    verify_password,
)
from gateway.service import (
    TERMINAL_STATUSES,
    Gateway,
    Outcome,
    iso,
    json_response,
    payment_record,
    public,
    public_reason,
    render_payment,
)
from paystream import commands as C
from paystream import runtime
from paystream.money import format_minor
from paystream.settings import Settings, get_settings

router = APIRouter(prefix="/v1")
_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT")
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)

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


def gw_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gw
    return gw


async def principal(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """Who is calling, from the verified JWT alone (X-User-Id and friends are ignored)."""
    gw = gw_of(request)
    return gw.tokens.verify(bearer(request.headers.get("authorization")))


async def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if not p.is_admin:
        raise Problem(403, "forbidden", "this operation needs the admin role")
    return p


User = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
IdemKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
Prefer = Annotated[str | None, Header(alias="Prefer", max_length=200)]
Number = Annotated[str, Path(max_length=32, json_schema_extra=M.NUMBER_SCHEMA)]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=64)]


def _ip(request: Request) -> str:
    peer = request.client.host if request.client else None
    return client_ip(peer, request.headers.get("x-forwarded-for"), gw_of(request).trusted)


def _ip_bucket(request: Request) -> str:
    """The per-IP rate limit's bucket: the client address, IPv6 by /64."""
    return rate_subject(_ip(request))


def _too_many(what: str, retry: int) -> Problem:
    return Problem(429, "rate_limited", f"too many {what}; retry in {retry} s", headers={"Retry-After": str(retry)})


async def _rate(gw: Gateway, bucket: str, ident: str, limit: int) -> None:
    retry = await gw.limiter.hit(bucket, ident, limit)
    if retry is not None:
        raise _too_many(f"{bucket} requests", retry)


def _wait(gw: Gateway, prefer: str | None) -> float:
    """`Prefer: wait=N` (RFC 7240) caps how long a request waits for the ledger."""
    if prefer:
        m = _WAIT.search(prefer)
        if m:
            return min(float(m.group(1)), gw.settings.gateway_wait_max_seconds)
    return gw.settings.gateway_wait_default_seconds


_NOT_FOUND = "no such account"


async def _account(gw: Gateway, p: Principal, number: str, *, strict: bool = False) -> store.AccountRef:
    """The account if the caller may see it (owner, or admin unless `strict`);
    otherwise the same 404 as for an account that does not exist."""
    if not valid_account_number(number):
        raise Problem(404, "account_not_found", _NOT_FOUND)
    ref = await gw.account(number)
    if ref is None or (ref.owner_id != p.user_id and (strict or not p.is_admin)):
        raise Problem(404, "account_not_found", _NOT_FOUND)
    return ref


async def _account_views(gw: Gateway, refs: list[store.AccountRef]) -> list[dict[str, Any]]:
    states = await store.account_states(gw.pool, [r.account_id for r in refs])
    out = []
    for r in refs:
        st = states.get(r.account_id)
        balance = int(st["balance"]) if st and st.get("balance") is not None else 0
        out.append({
            "account_number": r.account_number, "currency": r.currency,
            "status": str(st["status"]).lower() if st and st.get("status") else "opening",
            "balance": format_minor(balance, r.currency),
            "created_at": iso(r.created_at) if r.created_at else None,
        })  # fmt: skip
    return out


def _user_view(u: store.User) -> dict[str, Any]:
    return {
        "id": u.user_id,
        "email": u.email,
        "name": u.name,
        "role": u.role,
        "created_at": iso(u.created_at),
    }


# ------------------------------------------------------------------------------ auth


@router.post(
    "/auth/register",
    status_code=201,
    response_model=M.RegisterOut,
    responses=responses(400, 409, 413, 422, 429),
    tags=["auth"],
)
async def register(body: M.RegisterIn, request: Request) -> Response:
    """Create a user and their first account. The account is opened by the ledger
    shortly after (status `opening` until then)."""
    gw = gw_of(request)
    await _rate(gw, "register", _ip_bucket(request), gw.settings.gateway_rate_register_per_minute)
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
    tags=["auth"],
)
async def login(body: M.LoginIn, request: Request) -> Response:
    """The same 401 for an unknown email and a wrong password, after the same work.

    Two limits: per client address (IPv6 by /64), and per email, which locks an
    account out for exponentially longer after repeated failures, so guessing one
    account's password from many addresses does not work either. Both answer 429
    `rate_limited` with Retry-After, the same for unknown and known emails."""
    gw = gw_of(request)
    await _rate(gw, "login", _ip_bucket(request), gw.settings.gateway_rate_login_per_minute)
    email = body.email.strip().lower()
    locked = await gw.logins.attempt(email)
    if locked is not None:
        raise _too_many("failed logins for this account", locked)
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


@router.get("/me", response_model=M.UserOut, responses=responses(401), tags=["auth"])
async def me(p: User, request: Request) -> Response:
    user = await store.user_by_id(gw_of(request).pool, p.user_id)
    if user is None:
        raise Problem(401, "invalid_token", "the access token's user no longer exists")
    return json_response(200, _user_view(user))


# -------------------------------------------------------------------------- accounts


@router.get("/accounts", response_model=M.AccountList, responses=responses(401, 503), tags=["accounts"])
async def my_accounts(p: User, request: Request) -> Response:
    gw = gw_of(request)
    await gw.reads.settle(p.user_id)  # read-your-writes (gateway/reads.py)
    refs = await store.accounts_of(gw.pool, p.user_id)
    return json_response(200, {"object": "list", "data": await _account_views(gw, refs), "has_more": False})


@router.get(
    "/accounts/{account_number}",
    response_model=M.AccountOut,
    responses=responses(401, 404, 503),
    tags=["accounts"],
)
async def get_account(account_number: Number, p: User, request: Request) -> Response:
    gw = gw_of(request)
    await gw.reads.settle(p.user_id)  # read-your-writes (gateway/reads.py)
    ref = await _account(gw, p, account_number)
    return json_response(200, (await _account_views(gw, [ref]))[0])


@router.get(
    "/accounts/{account_number}/transactions",
    response_model=M.TransactionList,
    responses=responses(401, 404, 503),
    tags=["accounts"],
)
async def transactions(
    account_number: Number,
    p: User,
    request: Request,
    limit: Limit = 20,
    starting_after: Cursor = None,
) -> Response:
    """Newest first. `starting_after` is the id of the last transaction of the
    previous page."""
    gw = gw_of(request)
    await gw.reads.settle(p.user_id)
    ref = await _account(gw, p, account_number)
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


# -------------------------------------------------------------------------- payments


_ACCEPTED = {"description": "accepted; the outcome is not known yet", "model": M.PaymentOut}


@router.post(
    "/payments", status_code=201, response_model=M.PaymentOut, tags=["payments"],
    responses={**responses(400, 401, 402, 404, 409, 413, 422, 429, 503), 202: _ACCEPTED},
)  # fmt: skip
async def create_payment(
    body: M.PaymentIn, p: User, request: Request, idempotency_key: IdemKey, prefer: Prefer = None
) -> Response:
    """Move money from one of the caller's accounts to any account. 201 when the
    ledger completed it, 402 when it refused or failed, 202 + Location when it did
    not answer within the wait budget (`Prefer: wait=N`)."""
    gw = gw_of(request)
    src = await _account(gw, p, body.from_account, strict=True)
    dst = await gw.account(body.to_account) if valid_account_number(body.to_account) else None
    if dst is None:
        raise Problem(422, "unknown_account", "to_account does not exist")
    if body.currency != src.currency:
        raise Problem(422, "currency_mismatch", f"from_account holds {src.currency}, not {body.currency}")
    payment_id = C.payment_id_for(p.user_id, idempotency_key)
    fp = fingerprint(
        {
            "from": body.from_account,
            "to": body.to_account,
            "amount": body.minor,
            "currency": body.currency,
            "description": body.description,
        }
    )
    cmd = C.transfer(
        src.account_id,
        dst.account_id,
        body.minor,
        body.currency,
        command_id=payment_id,
        requested_by=p.user_id,
        metadata=_meta(body.description),
    )
    record = payment_record(
        payment_id=payment_id,
        kind="transfer",
        from_number=src.account_number,
        to_number=dst.account_number,
        minor=body.minor,
        currency=body.currency,
        description=body.description,
        owners=[src.owner_id, dst.owner_id],
    )
    return await gw.execute(
        user_id=p.user_id,
        endpoint="payments",
        idem_key=idempotency_key,
        fp=fp,
        command=cmd,
        record=record,
        wait=_wait(gw, prefer),
        render=render_payment,
        location=f"/v1/payments/{payment_id}",
        rate_limit=gw.settings.gateway_rate_payments_per_minute,
    )


def _meta(description: str | None) -> dict[str, str]:
    return {"description": description} if description else {}


@router.get(
    "/payments/{payment_id}",
    response_model=M.PaymentOut,
    responses=responses(401, 404),
    tags=["payments"],
)
async def get_payment(payment_id: Annotated[str, Path(max_length=64)], p: User, request: Request) -> Response:
    gw = gw_of(request)
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
            if status in TERMINAL_STATUSES:
                reason = row.get("reason")
                rec = {**rec, "status": status, "reason": str(reason).lower() if reason else None}
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
    return {
        "id": str(row["payment_id"]), "object": "payment", "kind": kind,
        "status": status,
        "from_account": frm.account_number if frm else None,
        "to_account": to.account_number if to else None,
        "amount": format_minor(int(row["amount"]), str(row["currency"])),
        "currency": str(row["currency"]),
        "description": row.get("description"), "reason": public_reason(row.get("reason"), status),
        "created_at": iso(row.get("created_at")),
    }  # fmt: skip


@router.get("/payments", response_model=M.PaymentList, responses=responses(400, 401, 503), tags=["payments"])
async def list_payments(p: User, request: Request, limit: Limit = 20, starting_after: Cursor = None) -> Response:
    """Payments from or to the caller's accounts, newest first, from the read model."""
    gw = gw_of(request)
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
    return json_response(200, {"object": "list", "data": data, "has_more": len(rows) > limit})


# ----------------------------------------------------------------------------- admin


async def _movement(
    kind: str,
    account_number: str,
    body: M.MovementIn,
    p: Principal,
    request: Request,
    idempotency_key: str,
    prefer: str | None,
) -> Response:
    gw = gw_of(request)
    ref = await _account(gw, p, account_number)
    if body.currency != ref.currency:
        raise Problem(422, "currency_mismatch", f"the account holds {ref.currency}, not {body.currency}")
    endpoint = "deposits" if kind == "deposit" else "withdrawals"
    payment_id = C.payment_id_for(f"{p.user_id}/{endpoint}", idempotency_key)
    build = C.deposit if kind == "deposit" else C.withdraw
    cmd = build(
        ref.account_id,
        body.minor,
        body.currency,
        command_id=payment_id,
        requested_by=p.user_id,
        metadata=_meta(body.description),
    )
    record = payment_record(
        payment_id=payment_id, kind=kind, description=body.description, owners=[ref.owner_id],
        from_number=ref.account_number if kind == "withdrawal" else None,
        to_number=ref.account_number if kind == "deposit" else None,
        minor=body.minor, currency=body.currency,
    )  # fmt: skip
    fp = fingerprint(
        {
            "account": account_number,
            "amount": body.minor,
            "currency": body.currency,
            "description": body.description,
        }
    )
    return await gw.execute(
        user_id=p.user_id,
        endpoint=endpoint,
        idem_key=idempotency_key,
        fp=fp,
        command=cmd,
        record=record,
        wait=_wait(gw, prefer),
        render=render_payment,
        location=f"/v1/payments/{payment_id}",
    )


_MOVEMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **responses(400, 401, 402, 403, 404, 409, 413, 422, 503),
    202: {"description": "accepted; the outcome is not known yet", "model": M.PaymentOut},
}


@router.post(
    "/accounts/{account_number}/deposits",
    status_code=201,
    response_model=M.PaymentOut,
    responses=_MOVEMENT_RESPONSES,
    tags=["admin"],
)
async def deposit(
    account_number: Number,
    body: M.MovementIn,
    p: Admin,
    request: Request,
    idempotency_key: IdemKey,
    prefer: Prefer = None,
) -> Response:
    """Money entering from outside (admin only); idempotent like payments."""
    return await _movement("deposit", account_number, body, p, request, idempotency_key, prefer)


@router.post(
    "/accounts/{account_number}/withdrawals",
    status_code=201,
    response_model=M.PaymentOut,
    responses=_MOVEMENT_RESPONSES,
    tags=["admin"],
)
async def withdrawal(
    account_number: Number,
    body: M.MovementIn,
    p: Admin,
    request: Request,
    idempotency_key: IdemKey,
    prefer: Prefer = None,
) -> Response:
    """Money leaving to the outside (admin only); idempotent like payments."""
    return await _movement("withdrawal", account_number, body, p, request, idempotency_key, prefer)


async def _status_change(
    ctype: str,
    account_number: str,
    body: M.StatusChangeIn | None,
    p: Principal,
    request: Request,
    prefer: str | None,
) -> Response:
    gw = gw_of(request)
    ref = await _account(gw, p, account_number)
    cmd = C.status_change(
        ctype,
        ref.account_id,
        reason=(body.reason if body else "") or "admin action",
        actor=p.user_id,
    )
    waiter = gw.listener.register(cmd["command_id"])
    try:
        try:
            await gw.sender.send(cmd)
        except Exception:
            raise Problem(
                503,
                "ledger_unavailable",
                "the command could not be submitted; retry later",
                headers={"Retry-After": "1"},
            ) from None
        outcome: Outcome | None = await gw.wait_outcome(waiter, _wait(gw, prefer))
    finally:
        gw.listener.unregister(waiter)
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
    tags=["admin"],
)
async def freeze(
    account_number: Number,
    p: Admin,
    request: Request,
    body: M.StatusChangeIn | None = None,
    prefer: Prefer = None,
) -> Response:
    return await _status_change("FREEZE", account_number, body, p, request, prefer)


@router.post(
    "/admin/accounts/{account_number}/unfreeze",
    response_model=M.StatusOut,
    responses=responses(401, 403, 404, 409, 413, 422, 503),
    tags=["admin"],
)
async def unfreeze(
    account_number: Number,
    p: Admin,
    request: Request,
    body: M.StatusChangeIn | None = None,
    prefer: Prefer = None,
) -> Response:
    return await _status_change("UNFREEZE", account_number, body, p, request, prefer)


# ------------------------------------------------------------------------------- app


class BodyLimit:
    """Refuses bodies over the limit with 413 before the app parses anything.

    Bodies are small (≤ 16 KiB by default), so buffering them here is cheap and
    lets the limit hold for chunked uploads without a Content-Length too.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._reject(send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = problem_body(413, "body_too_large", f"request bodies are limited to {self.limit} bytes")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", problems.PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_server_app() -> FastAPI:
    """What `paystream run gateway` serves: the app, plus process-wide tuning that
    in-process users of `create_app` (tests, tools) should not get."""
    app = create_app()
    app.state.server = True
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Refuse to start on a missing or weak JWT secret outside development (ConfigError),
    # now rather than at the first request.
    settings.jwt_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = Gateway(settings)
        await gw.start()
        app.state.gw = gw
        if getattr(app.state, "server", False):
            runtime.tune_gc()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="paystream gateway",
        version="1.0.0",
        lifespan=lifespan,
        # the API description and Swagger UI map every endpoint for an attacker; public
        # only in development unless PAYSTREAM_GATEWAY_DOCS_ENABLED says otherwise
        openapi_url="/openapi.json" if settings.gateway_serves_docs else None,
        docs_url="/docs" if settings.gateway_serves_docs else None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry instrumentation (on once a tracer provider exists)
        # is off: gateway/observability.py makes the one request span and the metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    problems.install(app)
    app.include_router(router)
    from pipelines.fraud.review_api import router as reviews_router
    from pipelines.notifications.webhook_api import router as webhooks_router

    app.include_router(reviews_router)  # admin review queue (pipelines/fraud)
    app.include_router(webhooks_router)  # webhook endpoints (pipelines/notifications)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> Response:
        gw = gw_of(request)
        return json_response(200, {"ok": gw.listener.ready.is_set(), "waiting": gw.listener.waiting})

    app.add_middleware(BodyLimit, limit=settings.gateway_max_body_bytes)
    from gateway import observability

    observability.install(app, settings)  # /metrics, request metrics and spans, /admin console
    return app
