"""Admin API over the fraud review queue (`pipelines.fraud.reviews` fills it).

Authentication and the admin check are the gateway's own dependencies (JWT
only); the Postgres pool is the gateway's. A decision is one Postgres
transaction: lock the review, refuse unless it is open (409), write the decision
and its outbox row. `paystream run reviews` publishes the outbox to
`fraud.decisions` (see `pipelines.fraud.reviews` for why not produce here).
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from gateway import models as M
from gateway.deps import Admin, GatewayDep
from gateway.movements import iso
from gateway.problems import Problem, responses
from gateway.security import valid_account_number
from pipelines.fraud.reviews import DECISIONS, OUTBOX_CHANNEL, decision_id

router = APIRouter(prefix="/v1/admin/reviews", tags=["admin", "reviews"])

ReviewId = Annotated[uuid.UUID, Path(description="the alert id")]


# One decided review, as the examples of the reviews API show it.
_EXAMPLE: dict[str, Any] = {
    "alert_id": "1331832a-7ead-5421-8a79-2d7e4e89d5b7", "payment_id": M.EX_PAYMENT,
    "account_id": "0c6f3f2e-5a1b-4c7d-9e8f-1a2b3c4d5e6f", "counterparty_id": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "amount": 1200000, "currency": "USD", "score": 130, "risk": "HIGH",
    "reasons": [{"rule": "HIGH_VALUE", "score": 80, "detail": "1200000 minor units USD >= threshold 1000000"}],
    "detected_at": M.EX_TIME, "state": "rejected", "decision_id": "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091",
    "decided_by": "8d8a7703-dafe-4d84-bf32-09288bb3d09c", "decided_by_email": "admin@example.com",
    "decided_at": M.EX_TIME, "note": "mule account: refund the sender",
}


class DecisionIn(BaseModel):
    model_config = M.examples({"note": "mule account: refund the sender"}, {}, extra="forbid")
    note: str | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")


class RuleHitOut(BaseModel):
    rule: str
    score: int
    detail: str


class ReviewOut(BaseModel):
    model_config = M.examples(_EXAMPLE)
    alert_id: str
    payment_id: str
    account_id: str
    counterparty_id: str
    amount: int
    currency: str
    score: int
    risk: str
    reasons: list[RuleHitOut]
    detected_at: str
    state: str
    decision_id: str | None
    decided_by: str | None
    decided_by_email: str | None = None
    decided_at: str | None
    note: str | None


class ReviewPage(BaseModel):
    model_config = M.examples({"items": [_EXAMPLE], "next_cursor": "MTc5NjI5MTQ5MTAwMDAwMDoxMzMx"})
    items: list[ReviewOut]
    next_cursor: str | None


def _iso(ts: datetime | None) -> str | None:
    return iso(ts) if ts is not None else None


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "alert_id": str(row["alert_id"]), "payment_id": str(row["payment_id"]),
        "account_id": str(row["account_id"]), "counterparty_id": str(row["counterparty_id"]),
        "amount": row["amount"], "currency": row["currency"], "score": row["score"],
        "risk": row["risk"], "reasons": row["reasons"], "detected_at": _iso(row["detected_at"]),
        "state": row["state"],
        "decision_id": str(row["decision_id"]) if row["decision_id"] else None,
        "decided_by": row["decided_by"], "decided_by_email": row.get("decided_by_email"),
        "decided_at": _iso(row["decided_at"]), "note": row["note"],
    }  # fmt: skip


# A review with the email of the admin who decided it (the console shows who, not an id).
_REVIEWS = ("SELECT *, (SELECT u.email FROM users u WHERE u.user_id::text = reviews.decided_by)"
            " AS decided_by_email FROM reviews")


def _cursor(row: dict[str, Any]) -> str:
    """Opaque keyset cursor: the (detected_at, alert_id) of the last row returned."""
    micros = int(row["detected_at"].timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}:{row['alert_id']}".encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        micros, alert = raw.split(":", 1)
        return datetime.fromtimestamp(int(micros) / 1_000_000, UTC), str(uuid.UUID(alert))
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise Problem(400, "invalid_cursor", "the cursor is not one this API returned") from None


async def _account_filter(pool: AsyncConnectionPool, account: str) -> str:
    """An account id (UUID) or a customer-facing account number."""
    try:
        return str(uuid.UUID(account))
    except ValueError:
        pass
    if not valid_account_number(account):
        raise Problem(404, "account_not_found", "no account with that id or number")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT account_id FROM gateway_accounts WHERE account_number = %s", (account,))
        row = await cur.fetchone()
    if row is None:
        raise Problem(404, "account_not_found", "no account with that id or number")
    return str(row[0])


@router.get("", response_model=ReviewPage, responses=responses(400, 401, 403, 404, 422))
async def list_reviews(
    p: Admin, gw: GatewayDep,
    state: Annotated[Literal["open", "approved", "rejected"] | None, Query()] = None,
    risk: Annotated[Literal["MEDIUM", "HIGH"] | None, Query()] = None,
    account: Annotated[str | None, Query(max_length=64, description="account id or number")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Newest first, keyset-paginated: pass `next_cursor` back as `cursor`."""
    pool = gw.pool
    where: list[str] = []
    params: list[Any] = []
    if state:
        where.append("state = %s")
        params.append(state)
    if risk:
        where.append("risk = %s")
        params.append(risk)
    if account:
        where.append("account_id = %s::uuid")
        params.append(await _account_filter(pool, account))
    if cursor:
        where.append("(detected_at, alert_id) < (%s, %s::uuid)")
        params.extend(_decode_cursor(cursor))
    sql = _REVIEWS + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY detected_at DESC, alert_id DESC LIMIT %s"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, (*params, limit + 1))
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_view(r) for r in rows], "next_cursor": _cursor(rows[-1]) if more else None}


@router.get("/{review_id}", response_model=ReviewOut, responses=responses(401, 403, 404, 422))
async def get_review(review_id: ReviewId, p: Admin, gw: GatewayDep) -> dict[str, Any]:
    async with gw.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_REVIEWS + " WHERE alert_id = %s", (review_id,))
        row = await cur.fetchone()
    if row is None:
        raise Problem(404, "review_not_found", "no review with that id")
    return _view(row)


# Alerts carry the sender's owner; for reviews written before they did, the read
# model (every account opened on Kafka) or the gateway's registry answers.
OWNER_OF = """
SELECT owner_id::text FROM accounts WHERE account_id = %s AND owner_id IS NOT NULL
UNION ALL
SELECT owner_id::text FROM gateway_accounts WHERE account_id = %s
LIMIT 1
"""


async def _decide(pool: AsyncConnectionPool, review_id: uuid.UUID, admin_id: str, verdict: str,
                  body: DecisionIn | None) -> dict[str, Any]:
    note = body.note if body else None
    state = "approved" if verdict == "APPROVED" else "rejected"
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_REVIEWS + " WHERE alert_id = %s FOR UPDATE", (review_id,))
        row = await cur.fetchone()
        if row is None:
            raise Problem(404, "review_not_found", "no review with that id")
        if row["state"] != "open":
            raise Problem(409, "review_already_decided",
                          f"this review was already {row['state']}", review=_view(row))
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
    return _view(row)


_DECIDE_DOC = (f"Decide an open review (terminal: a second decision is 409). The decision is "
               f"published to `{DECISIONS}` from a transactional outbox.")


@router.post("/{review_id}/approve", response_model=ReviewOut, description=_DECIDE_DOC,
             responses=responses(401, 403, 404, 409, 422))
async def approve(review_id: ReviewId, p: Admin, gw: GatewayDep,
                  body: DecisionIn | None = None) -> dict[str, Any]:
    return await _decide(gw.pool, review_id, p.user_id, "APPROVED", body)


@router.post("/{review_id}/reject", response_model=ReviewOut, description=_DECIDE_DOC,
             responses=responses(401, 403, 404, 409, 422))
async def reject(review_id: ReviewId, p: Admin, gw: GatewayDep,
                 body: DecisionIn | None = None) -> dict[str, Any]:
    return await _decide(gw.pool, review_id, p.user_id, "REJECTED", body)
