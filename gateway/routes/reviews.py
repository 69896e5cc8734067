"""Admin API over the fraud review queue (`pipelines.fraud.reviews` fills it).

It speaks as the rest of the API does: amounts are decimal strings, accounts are
their numbers (the review rows keep the ledger's ids), lists are the one envelope
(`object`, `data`, `has_more`) paged with `starting_after` = the last review's id.
Authentication and the admin check are the gateway's own dependencies (JWT only);
the Postgres pool is the gateway's. A decision is one Postgres transaction: lock
the review, refuse unless it is open (409), write the decision and its outbox row.
`paystream run reviews` publishes the outbox to `fraud.decisions` (see
`pipelines.fraud.reviews` for why not produce here).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from starlette.responses import Response

from gateway import models as M
from gateway.deps import Admin, Cursor, GatewayDep, Limit, account_of
from gateway.movements import iso
from gateway.problems import Problem, responses
from gateway.service import Gateway, json_response, list_response
from paystream.money import format_minor
from pipelines.fraud.reviews import DECISIONS, OUTBOX_CHANNEL, decision_id

router = APIRouter(prefix="/v1/admin/reviews", tags=["admin", "reviews"])

ReviewId = Annotated[str, Path(max_length=64, description="the review's id (its alert's)")]
AccountNumber = Annotated[str | None, Query(max_length=32, json_schema_extra=M.NUMBER_SCHEMA,
                                            description="only reviews of payments this account sent")]


def _iso(ts: datetime | None) -> str | None:
    return iso(ts) if ts is not None else None


async def _views(gw: Gateway, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reviews as the API shows them: the accounts by number (one lookup for the page)."""
    ids = {str(r[k]) for r in rows for k in ("account_id", "counterparty_id")}
    refs = await gw.accounts_by_id(sorted(ids))

    def number(account_id: Any) -> str | None:
        ref = refs.get(str(account_id))
        return ref.account_number if ref else None

    return [{
        "id": str(r["alert_id"]), "object": "review", "payment_id": str(r["payment_id"]),
        "from_account": number(r["account_id"]), "to_account": number(r["counterparty_id"]),
        "amount": format_minor(int(r["amount"]), r["currency"]), "currency": r["currency"],
        "score": r["score"], "risk": r["risk"], "reasons": r["reasons"], "detected_at": _iso(r["detected_at"]),
        "status": r["state"], "decision_id": str(r["decision_id"]) if r["decision_id"] else None,
        "decided_by": r["decided_by"], "decided_by_email": r.get("decided_by_email"),
        "decided_at": _iso(r["decided_at"]), "note": r["note"],
    } for r in rows]  # fmt: skip


async def _view(gw: Gateway, row: dict[str, Any]) -> dict[str, Any]:
    return (await _views(gw, [row]))[0]


# A review with the email of the admin who decided it (the console shows who, not an id).
_REVIEWS = ("SELECT *, (SELECT u.email FROM users u WHERE u.user_id::text = reviews.decided_by)"
            " AS decided_by_email FROM reviews")

_NOT_FOUND = "no review with that id"


def _review_id(text: str) -> uuid.UUID:
    """The path's review id; a malformed one is the same 404 as an unknown one."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(404, "review_not_found", _NOT_FOUND) from None


async def _position(pool: AsyncConnectionPool, starting_after: str) -> tuple[datetime, uuid.UUID]:
    """Where the page after the review `starting_after` begins (the queue's order)."""
    try:
        alert = uuid.UUID(starting_after)
    except ValueError:
        raise Problem(400, "invalid_cursor", "starting_after is not a review id") from None
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT detected_at FROM reviews WHERE alert_id = %s", (alert,))
        row = await cur.fetchone()
    if row is None:
        raise Problem(400, "invalid_cursor", "starting_after is not a review")
    return row[0], alert


@router.get("", response_model=M.ReviewList, responses=responses(400, 401, 403, 404, 422))
async def list_reviews(
    p: Admin, gw: GatewayDep,
    status: Annotated[Literal["open", "approved", "rejected"] | None, Query()] = None,
    risk: Annotated[Literal["MEDIUM", "HIGH"] | None, Query()] = None,
    account: AccountNumber = None,
    limit: Limit = 20,
    starting_after: Cursor = None,
) -> Response:
    """Newest first; the next page starts after the last review of this one
    (`starting_after`). `account` is the sending account's number (404 if none)."""
    where: list[str] = []
    params: list[Any] = []
    if status:
        where.append("state = %s")
        params.append(status)
    if risk:
        where.append("risk = %s")
        params.append(risk)
    if account is not None:
        where.append("account_id = %s::uuid")
        params.append((await account_of(gw, p, account)).account_id)
    if starting_after is not None:
        where.append("(detected_at, alert_id) < (%s, %s)")
        params.extend(await _position(gw.pool, starting_after))
    sql = _REVIEWS + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY detected_at DESC, alert_id DESC LIMIT %s"
    async with gw.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, (*params, limit + 1))
        rows = await cur.fetchall()
    return list_response(await _views(gw, rows[:limit]), len(rows) > limit)


@router.get("/{review_id}", response_model=M.ReviewOut, responses=responses(401, 403, 404))
async def get_review(review_id: ReviewId, p: Admin, gw: GatewayDep) -> Response:
    async with gw.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_REVIEWS + " WHERE alert_id = %s", (_review_id(review_id),))
        row = await cur.fetchone()
    if row is None:
        raise Problem(404, "review_not_found", _NOT_FOUND)
    return json_response(200, await _view(gw, row))


# Alerts carry the sender's owner; for reviews written before they did, the read
# model (every account opened on Kafka) or the gateway's registry answers.
OWNER_OF = """
SELECT owner_id::text FROM accounts WHERE account_id = %s AND owner_id IS NOT NULL
UNION ALL
SELECT owner_id::text FROM gateway_accounts WHERE account_id = %s
LIMIT 1
"""


async def _decide(gw: Gateway, review: str, admin_id: str, verdict: str, body: M.DecisionIn | None) -> Response:
    review_id = _review_id(review)
    note = body.note if body else None
    state = "approved" if verdict == "APPROVED" else "rejected"
    async with gw.pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_REVIEWS + " WHERE alert_id = %s FOR UPDATE", (review_id,))
        row = await cur.fetchone()
        if row is None:
            raise Problem(404, "review_not_found", _NOT_FOUND)
        if row["state"] != "open":
            raise Problem(409, "review_already_decided",
                          f"this review was already {row['state']}", review=await _view(gw, row))
        did = decision_id(str(review_id))
        await cur.execute(
            "UPDATE reviews SET state = %s, decision_id = %s, decided_by = %s, decided_at = now(),"
            " note = %s WHERE alert_id = %s RETURNING *, (SELECT u.email FROM users u"
            " WHERE u.user_id::text = reviews.decided_by) AS decided_by_email",
            (state, did, admin_id, note, review_id))
        row = await cur.fetchone()
        assert row is not None
        owner = row["sender_owner_id"]
        if owner is None:  # an alert from before alerts carried it
            await cur.execute(OWNER_OF, (row["account_id"], row["account_id"]))
            found = await cur.fetchone()
            owner = found["owner_id"] if found else None
        event = {
            "decision_id": did, "alert_id": str(review_id), "payment_id": str(row["payment_id"]),
            "sender_id": str(row["account_id"]), "receiver_id": str(row["counterparty_id"]),
            "decision": verdict, "decided_by": admin_id, "note": note,
            "decided_at": int(row["decided_at"].timestamp() * 1000) if row["decided_at"]
            else int(time.time() * 1000),
            "sender_owner_id": owner,
        }  # fmt: skip
        await cur.execute(
            "INSERT INTO review_outbox (decision_id, alert_id, message_key, payload)"
            " VALUES (%s, %s, %s, %s)", (did, review_id, event["sender_id"], Jsonb(event)))
        await cur.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return json_response(200, await _view(gw, row))


_DECIDE_DOC = (f"Decide an open review (terminal: a second decision is 409). The decision is "
               f"published to `{DECISIONS}` from a transactional outbox.")


@router.post("/{review_id}/approve", response_model=M.ReviewOut, description=_DECIDE_DOC,
             responses=responses(401, 403, 404, 409, 422))
async def approve(review_id: ReviewId, p: Admin, gw: GatewayDep, body: M.DecisionIn | None = None) -> Response:
    return await _decide(gw, review_id, p.user_id, "APPROVED", body)


@router.post("/{review_id}/reject", response_model=M.ReviewOut, description=_DECIDE_DOC,
             responses=responses(401, 403, 404, 409, 422))
async def reject(review_id: ReviewId, p: Admin, gw: GatewayDep, body: M.DecisionIn | None = None) -> Response:
    return await _decide(gw, review_id, p.user_id, "REJECTED", body)
