"""The caller's accounts, their transaction history, balances at any instant and
statements, from the read model."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.responses import Response, StreamingResponse

from gateway import models as M
from gateway import store
from gateway.deps import Cursor, GatewayDep, IdemKey, Instant, Limit, Number, User, account_of, instant, respond
from gateway.movements import iso
from gateway.problems import Problem, responses
from gateway.service import Gateway, json_response, list_response
from gateway.statements import running
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
    "HOLD_CAPTURED": -1,
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
    return list_response(await _account_views(gw, refs), False)


@router.post(
    "/accounts",
    status_code=201,
    response_model=M.AccountOut,
    responses=responses(400, 401, 409, 413, 422, 503),
)
async def open_account(body: M.AccountIn, p: User, gw: GatewayDep, idempotency_key: IdemKey) -> Response:
    """Open another account for the caller, in any supported currency (registration
    opened the first). Idempotent like payments; at most `gateway_max_accounts_per_user`
    accounts per user (409 `too_many_accounts`). The ledger opens it shortly after:
    status `opening` until then."""

    async def view(ref: store.AccountRef) -> dict[str, Any]:
        return (await _account_views(gw, [ref]))[0]

    return respond(await gw.open_account(p.user_id, idempotency_key, body.currency, view))


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
    "/accounts/{account_number}/ledger-id",
    response_model=M.LedgerIdOut,
    responses=responses(401, 404),
)
async def ledger_id(account_number: Number, p: User, gw: GatewayDep) -> Response:
    """The ledger's id of an account, for Kafka-direct producers (commands carry ids,
    the API numbers); the owner's or, for an admin, any. The rest of the API never
    shows internal ids: this is the one place meant to hand them out."""
    ref = await account_of(gw, p, account_number)
    return json_response(200, {"object": "ledger_id", "account_number": ref.account_number,
                               "account_id": ref.account_id})


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
    return list_response(data, len(rows) > limit)


async def _event_cursor(gw: Gateway, account_id: str, event_id: str) -> int:
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise Problem(400, "invalid_cursor", "starting_after is not a transaction id") from None
    seq = await store.event_sequence(gw.pool, account_id, event_id)
    if seq is None:
        raise Problem(400, "invalid_cursor", "starting_after is not a transaction of this account")
    return seq


# ------------------------------------------------------------ balances and statements


@router.get(
    "/accounts/{account_number}/balance",
    response_model=M.BalanceOut,
    responses=responses(400, 401, 404, 503),
)
async def balance(account_number: Number, p: User, gw: GatewayDep, at: Instant = None) -> Response:
    """The posted balance as of `at` (RFC 3339 with an offset; default now): the sum
    of the account's postings in the journal stamped at or before it."""
    when = instant(at, "at") if at is not None else datetime.now(UTC)
    await gw.reads.settle(p.user_id)
    ref = await account_of(gw, p, account_number)
    minor = await store.balance_at(gw.pool, ref.account_id, when)
    return json_response(200, {
        "object": "balance", "account_number": ref.account_number, "currency": ref.currency,
        "at": iso(when), "balance": format_minor(minor, ref.currency),
    })  # fmt: skip


CSV_MEDIA = "text/csv"
CSV_COLUMNS = ("occurred_at", "id", "type", "payment_id", "counterparty", "description", "amount", "currency",
               "balance_after")  # fmt: skip
CSV_CHUNK = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATEMENT_200: dict[str, Any] = {"content": {CSV_MEDIA: {"schema": {"type": "string"}}}}
From = Annotated[str | None, Query(alias="from", json_schema_extra={"format": "date-time"})]
To = Annotated[str | None, Query(json_schema_extra={"format": "date-time"})]
Accept = Annotated[str | None, Header(max_length=500)]


@router.get(
    "/accounts/{account_number}/statement",
    response_model=M.StatementOut,
    responses={**responses(400, 401, 404, 503), 200: _STATEMENT_200},
)
async def statement(
    account_number: Number,
    p: User,
    gw: GatewayDep,
    start: From = None,
    to: To = None,
    limit: Limit = 20,
    starting_after: Cursor = None,
    accept: Accept = None,
) -> Response:
    """The window [from, to) (defaults: the beginning, now): the opening balance (just
    before `from`), each posting with the balance after it, oldest first, and the
    closing balance (just before `to`). JSON pages (`limit`, `starting_after` = the id
    of the last line of the previous page), or the whole window as CSV with
    `Accept: text/csv`."""
    first = instant(start, "from") if start is not None else _EPOCH
    last = instant(to, "to") if to is not None else datetime.now(UTC)
    if last < first:
        raise Problem(400, "invalid_window", "to is before from")
    await gw.reads.settle(p.user_id)
    ref = await account_of(gw, p, account_number)
    if wants_csv(accept):
        totals = await store.statement_totals(gw.pool, ref.account_id, first, last, 0)
        name = f"{ref.account_number}-statement.csv"
        return StreamingResponse(_csv(gw, ref, first, last, totals), media_type=f"{CSV_MEDIA}; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
    after = await _event_cursor(gw, ref.account_id, starting_after) if starting_after is not None else 0
    totals = await store.statement_totals(gw.pool, ref.account_id, first, last, after)
    rows = await store.statement_lines(gw.pool, ref.account_id, first, last, after, totals.upto, limit + 1)
    has_more = len(rows) > limit
    lines, balance = await _lines(gw, ref, rows[:limit], totals.opening + totals.carried)
    assert has_more or balance == totals.closing, f"statement of {ref.account_id}: lines end at {balance}, not {totals}"
    return list_response(lines, has_more, **{
        "account_number": ref.account_number, "currency": ref.currency, "from": iso(first), "to": iso(last),
        "opening_balance": format_minor(totals.opening, ref.currency),
        "closing_balance": format_minor(totals.closing, ref.currency),
    })  # fmt: skip


async def _lines(
    gw: Gateway, ref: store.AccountRef, rows: list[dict[str, Any]], carried: int
) -> tuple[list[dict[str, Any]], int]:
    """Statement lines as the API shows them, and the balance after the last one."""
    others = [str(r["counterparty_id"]) for r in rows if r.get("counterparty_id")]
    names = await gw.accounts_by_id(others)
    out, balance = [], carried
    for r, balance in zip(rows, running(carried, (int(r["amount"]) for r in rows)), strict=True):
        cp = names.get(str(r["counterparty_id"])) if r.get("counterparty_id") else None
        out.append({
            "id": str(r["event_id"]), "type": str(r["type"]).lower(), "payment_id": str(r["payment_id"]),
            "amount": format_minor(int(r["amount"]), ref.currency), "currency": ref.currency,
            "balance_after": format_minor(balance, ref.currency),
            "counterparty": cp.account_number if cp else None, "description": r.get("description"),
            "occurred_at": iso(r["occurred_at"]),
        })  # fmt: skip
    return out, balance


def wants_csv(accept: str | None) -> bool:
    """Whether the client prefers CSV to JSON: `text/csv` listed with a quality above
    that of `application/json` (absent = 0). Anything else gets JSON."""
    quality = {CSV_MEDIA: 0.0, "application/json": 0.0}
    for item in (accept or "").split(","):
        media, *params = (x.strip() for x in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media.lower() in quality:
            quality[media.lower()] = max(quality[media.lower()], q)
    return quality[CSV_MEDIA] > quality["application/json"]


def _cell(text: str | None) -> str:
    """Free text as a spreadsheet shows it, never as a formula (CSV injection)."""
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text or ""


async def _csv(
    gw: Gateway, ref: store.AccountRef, first: datetime, last: datetime, totals: store.StatementTotals
) -> AsyncIterator[bytes]:
    """The whole window: a header, an opening_balance row, the lines, read a chunk at
    a time up to the sequence the totals saw, and a closing_balance row."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")

    def flush() -> bytes:
        data = buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        return data

    cur = ref.currency
    out.writerow(CSV_COLUMNS)
    out.writerow([iso(first), "", "opening_balance", "", "", "", "", cur, format_minor(totals.opening, cur)])
    yield flush()
    after, balance = 0, totals.opening
    while True:
        rows = await store.statement_lines(gw.pool, ref.account_id, first, last, after, totals.upto, CSV_CHUNK)
        lines, balance = await _lines(gw, ref, rows, balance)
        for line in lines:
            out.writerow([line["occurred_at"], line["id"], line["type"], line["payment_id"], line["counterparty"] or "",
                          _cell(line["description"]), line["amount"], cur, line["balance_after"]])  # fmt: skip
        yield flush()
        if len(rows) < CSV_CHUNK:
            break
        after = int(rows[-1]["sequence"])
    assert balance == totals.closing, f"statement of {ref.account_id}: lines end at {balance}, not {totals}"
    out.writerow([iso(last), "", "closing_balance", "", "", "", "", cur, format_minor(totals.closing, cur)])
    yield flush()
