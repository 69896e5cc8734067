"""Postgres access for the gateway: its own tables (users, account registry,
outbox) and read-only queries against the sink's read model.

The read model (`accounts`, `payments`, `ledger_events`, from migration 0001) is
written by another component; until it exists every read-model query returns
"unknown" rather than failing, so registration and payments keep working.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.security import new_account_number
from paystream import commands as C

OPEN_NAMESPACE = uuid.UUID("3f6c8a52-2f1e-4a0e-b7c4-9d51e0a7c3b1")
OUTBOX_CHANNEL = "gateway_outbox"


def open_command_id(account_id: str) -> str:
    """Deterministic, so a relay that publishes twice causes a ledger duplicate, not
    a second account."""
    return str(uuid.uuid5(OPEN_NAMESPACE, f"open:{account_id}"))


def requested_account_id(owner_id: str, idem_key: str) -> str:
    """The id of the account `POST /v1/accounts` opens for (owner, Idempotency-Key):
    deterministic, as payment ids are, so that a retry Redis no longer remembers
    finds the account it opened instead of opening another."""
    return str(uuid.uuid5(OPEN_NAMESPACE, f"account:{owner_id}:{idem_key}"))


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    email: str
    name: str
    role: str
    password_hash: str
    created_at: Any


@dataclass(frozen=True, slots=True)
class AccountRef:
    account_number: str
    account_id: str
    owner_id: str
    currency: str
    created_at: Any = None


class EmailTaken(Exception):
    pass


def _user(row: dict[str, Any]) -> User:
    return User(
        str(row["user_id"]),
        row["email"],
        row["name"],
        row["role"],
        row["password_hash"],
        row["created_at"],
    )


def _ref(row: dict[str, Any]) -> AccountRef:
    return AccountRef(
        row["account_number"],
        str(row["account_id"]),
        str(row["owner_id"]),
        row["currency"],
        row.get("created_at"),
    )


# --------------------------------------------------------------- users & accounts


INSERT_USER = (
    "INSERT INTO users (user_id, email, password_hash, name, role) VALUES (%s, %s, %s, %s, %s) RETURNING created_at"
)


async def create_user(
    pool: AsyncConnectionPool,
    *,
    email: str,
    password_hash: str,
    name: str,
    role: str,
    currency: str | None,
) -> tuple[User, AccountRef | None]:
    """User, registry row and OpenAccount outbox row in one transaction: either the
    account will be opened by the relay, or the user does not exist."""
    user_id = str(uuid.uuid4())
    async with pool.connection() as conn, conn.transaction():
        try:
            cur = await conn.execute(INSERT_USER, (user_id, email, password_hash, name, role))
        except psycopg.errors.UniqueViolation:
            raise EmailTaken(email) from None
        row = await cur.fetchone()
        assert row is not None
        user = User(user_id, email, name, role, password_hash, row[0])
        ref = None
        if currency is not None:
            ref = await _open_account(conn, user_id, currency)
    return user, ref


async def _open_account(
    conn: psycopg.AsyncConnection[Any], owner_id: str, currency: str, account_id: str | None = None
) -> AccountRef:
    account_id = account_id or str(uuid.uuid4())
    for _ in range(10):
        number = new_account_number()
        try:
            async with conn.transaction():  # a savepoint: a number collision retries
                cur = await conn.execute(
                    "INSERT INTO gateway_accounts (account_number, account_id, owner_id, currency)"
                    " VALUES (%s, %s, %s, %s) RETURNING created_at",
                    (number, account_id, owner_id, currency),
                )
                row = await cur.fetchone()
            break
        except psycopg.errors.UniqueViolation:
            continue
    else:
        raise RuntimeError("could not allocate an account number")
    cmd = C.open_account(
        account_id,
        external_number=number,
        owner_id=owner_id,
        currency=currency,
        command_id=open_command_id(account_id),
        requested_by=owner_id,
    )
    await conn.execute(
        "INSERT INTO gateway_outbox (topic, message_key, payload) VALUES (%s, %s, %s)",
        (C.topic_for(cmd), account_id, Jsonb(cmd)),
    )
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return AccountRef(number, account_id, owner_id, currency, row[0] if row else None)


class AccountLimitReached(Exception):
    """The owner holds the most accounts allowed already."""


async def open_another_account(
    pool: AsyncConnectionPool, owner_id: str, currency: str, account_id: str, limit: int
) -> AccountRef:
    """Open `account_id` for `owner_id` (registry row and OpenAccount outbox row, as at
    registration), or find it opened already: the id is derived from the request's
    Idempotency-Key, so a retry finds its account even when Redis forgot the key.
    One owner's openings are serialised, so the `limit` holds under concurrent
    requests; a retry of an account already open is never refused by it."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"accounts:{owner_id}",))
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM gateway_accounts WHERE account_id = %s", (account_id,))
        row = await cur.fetchone()
        if row is not None:
            return _ref(row)
        await cur.execute("SELECT count(*) AS n FROM gateway_accounts WHERE owner_id = %s", (owner_id,))
        counted = await cur.fetchone()
        if counted is not None and int(counted["n"]) >= limit:
            raise AccountLimitReached(limit)
        return await _open_account(conn, owner_id, currency, account_id)


def create_user_sync(dsn: str, *, email: str, password_hash: str, name: str, role: str) -> User:
    """For `paystream admin create-user`: no event loop, no account."""
    user_id = str(uuid.uuid4())
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(INSERT_USER, (user_id, email, password_hash, name, role)).fetchone()
        except psycopg.errors.UniqueViolation:
            raise EmailTaken(email) from None
    assert row is not None
    return User(user_id, email, name, role, password_hash, row[0])


async def _one(pool: AsyncConnectionPool, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    """One row of the gateway's own tables (which always exist), or None."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        return await cur.fetchone()


async def user_by_email(pool: AsyncConnectionPool, email: str) -> User | None:
    row = await _one(pool, "SELECT * FROM users WHERE email = %s", (email,))
    return _user(row) if row else None


async def user_by_id(pool: AsyncConnectionPool, user_id: str) -> User | None:
    row = await _one(pool, "SELECT * FROM users WHERE user_id = %s", (user_id,))
    return _user(row) if row else None


async def account_by_number(pool: AsyncConnectionPool, number: str) -> AccountRef | None:
    row = await _one(pool, "SELECT * FROM gateway_accounts WHERE account_number = %s", (number,))
    return _ref(row) if row else None


async def accounts_by_ids(pool: AsyncConnectionPool, ids: list[str]) -> dict[str, AccountRef]:
    if not ids:
        return {}
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM gateway_accounts WHERE account_id = ANY(%s::uuid[])", (ids,))
        rows = await cur.fetchall()
    return {str(r["account_id"]): _ref(r) for r in rows}


async def accounts_of(pool: AsyncConnectionPool, owner_id: str) -> list[AccountRef]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT * FROM gateway_accounts WHERE owner_id = %s ORDER BY created_at, account_number",
            (owner_id,),
        )
        rows = await cur.fetchall()
    return [_ref(r) for r in rows]


# --------------------------------------------------------------------- read model


async def _read(
    pool: AsyncConnectionPool, sql: str, params: tuple[Any, ...] | dict[str, Any]
) -> list[dict[str, Any]] | None:
    """Rows from the read model, or None while its tables do not exist yet."""
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            return await cur.fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return None


async def account_states(pool: AsyncConnectionPool, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = await _read(
        pool,
        "SELECT account_id, status, balance, held, currency FROM accounts WHERE account_id = ANY(%s::uuid[])",
        (ids,),
    )
    return {str(r["account_id"]): r for r in rows or []}


async def payment_row(pool: AsyncConnectionPool, payment_id: str) -> dict[str, Any] | None:
    rows = await _read(pool, "SELECT * FROM payments WHERE payment_id = %s", (payment_id,))
    return rows[0] if rows else None


async def payment_rows(pool: AsyncConnectionPool, payment_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The read model's rows of these payments, by id (those it holds)."""
    rows = await _read(pool, "SELECT * FROM payments WHERE payment_id = ANY(%s::uuid[])", (payment_ids,))
    return {str(r["payment_id"]): r for r in rows or []}


class PaymentRows:
    """`payment_row` for many concurrent requests at once: every id asked for within
    `linger` seconds is read by one query. The gateway checks each new payment's id
    against the read model (`Gateway._taken`), and one query per payment was a fifth
    of its event loop's CPU at 300 payments/s; the check runs beside the Redis claim,
    so a few milliseconds of linger add nothing a caller waits for.

    A caller that stops waiting (its timeout) leaves the query to finish for the
    others: nothing is cancelled in the middle of a statement."""

    def __init__(self, pool: AsyncConnectionPool, linger: float = 0.002) -> None:
        self.pool = pool
        self.linger = linger
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def get(self, payment_id: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        if not self._waiting:
            loop.call_later(self.linger, self._start)
        self._waiting.setdefault(payment_id, []).append(fut)
        return await fut

    def _start(self) -> None:
        batch, self._waiting = self._waiting, {}
        task = asyncio.get_running_loop().create_task(self._read(batch))
        self._running.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._running.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[dict[str, Any] | None]]]) -> None:
        try:
            found = await payment_rows(self.pool, list(batch))
        except BaseException as exc:
            for futs in batch.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for payment_id, futs in batch.items():
            row = found.get(payment_id)
            for f in futs:
                if not f.done():
                    f.set_result(row)


async def payments_of(
    pool: AsyncConnectionPool, account_ids: list[str], limit: int, before: tuple[Any, str] | None
) -> list[dict[str, Any]] | None:
    """Newest first; `before` is the (created_at, payment_id) of the last row seen."""
    base = "SELECT * FROM payments WHERE (from_account = ANY(%s::uuid[]) OR to_account = ANY(%s::uuid[]))"
    params: tuple[Any, ...] = (account_ids, account_ids)
    if before is not None:
        base += " AND (created_at, payment_id) < (%s, %s::uuid)"
        params += before
    base += " ORDER BY created_at DESC, payment_id DESC LIMIT %s"
    return await _read(pool, base, (*params, limit))


async def open_holds(pool: AsyncConnectionPool, account_id: str, limit: int) -> list[dict[str, Any]] | None:
    """The account's authorized payments nobody captured, canceled or let expire yet,
    soonest to lapse first."""
    return await _read(
        pool,
        "SELECT * FROM payments WHERE from_account = %s AND status = 'REQUIRES_CAPTURE'"
        " ORDER BY hold_expires_at, payment_id LIMIT %s",
        (account_id, limit),
    )


async def events_of(
    pool: AsyncConnectionPool, account_id: str, limit: int, before_sequence: int | None
) -> list[dict[str, Any]] | None:
    """An account's ledger events that moved its money, newest first."""
    sql = (
        "SELECT * FROM ledger_events WHERE account_id = %s AND amount IS NOT NULL"
        " AND balance_after IS NOT NULL AND type <> 'COMMAND_REJECTED'"
        " AND type <> 'COMMAND_DUPLICATE'"
        # holds placed, voided or lapsed move nothing (GET /v1/accounts/{n}/holds lists them)
        " AND type NOT IN ('HOLD_PLACED', 'HOLD_VOIDED', 'HOLD_EXPIRED')"
    )
    params: tuple[Any, ...] = (account_id,)
    if before_sequence is not None:
        sql += " AND sequence < %s"
        params += (before_sequence,)
    sql += " ORDER BY sequence DESC LIMIT %s"
    return await _read(pool, sql, (*params, limit))


async def event_sequence(pool: AsyncConnectionPool, account_id: str, event_id: str) -> int | None:
    rows = await _read(
        pool,
        "SELECT sequence FROM ledger_events WHERE account_id = %s AND event_id = %s",
        (account_id, event_id),
    )
    return int(rows[0]["sequence"]) if rows else None


# ---------------------------------------------------------- balances and statements
# Over the journal (`postings`). A user account's postings all come from its own
# partition, which the sink writes in order, so `sequence <= upto` names a set of
# postings that no later write changes: the pages of one statement, read on
# separate connections, add up to the totals read first (gateway/statements.py).


@dataclass(frozen=True, slots=True)
class StatementTotals:
    opening: int  # postings stamped before the window
    carried: int  # postings of the window up to and including the cursor
    closing: int  # postings stamped before the window's end
    upto: int  # the highest sequence the statement covers (0: none)


async def balance_at(pool: AsyncConnectionPool, account_id: str, at: Any) -> int:
    rows = await _read(
        pool,
        "SELECT coalesce(sum(amount), 0) AS balance FROM postings WHERE account_id = %s AND occurred_at <= %s",
        (account_id, at),
    )
    return int(rows[0]["balance"]) if rows else 0


_TOTALS = """
SELECT coalesce(sum(amount) FILTER (WHERE occurred_at < %(start)s), 0) AS opening,
       coalesce(sum(amount) FILTER (WHERE occurred_at >= %(start)s AND sequence <= %(after)s), 0) AS carried,
       coalesce(sum(amount), 0) AS closing,
       coalesce(max(sequence), 0) AS upto
  FROM postings WHERE account_id = %(a)s AND occurred_at < %(end)s
"""


async def statement_totals(
    pool: AsyncConnectionPool, account_id: str, start: Any, end: Any, after_sequence: int
) -> StatementTotals:
    rows = await _read(pool, _TOTALS, {"a": account_id, "start": start, "end": end, "after": after_sequence})
    if not rows:
        return StatementTotals(0, 0, 0, 0)
    r = rows[0]
    return StatementTotals(int(r["opening"]), int(r["carried"]), int(r["closing"]), int(r["upto"]))


# The posting and what it was: the event that made it (type, counterparty) and the
# payment's description, which only the sender's events carry, so the receiver's
# line takes it from the payment row.
_LINES = """
SELECT p.event_id, p.payment_id, p.amount, p.sequence, p.occurred_at, e.type, e.counterparty_id,
       coalesce(e.metadata ->> 'description', pay.description) AS description
  FROM postings p
  JOIN ledger_events e ON e.event_id = p.event_id
  LEFT JOIN payments pay ON pay.payment_id = p.payment_id
 WHERE p.account_id = %(a)s AND p.occurred_at >= %(start)s AND p.occurred_at < %(end)s
   AND p.sequence > %(after)s AND p.sequence <= %(upto)s
 ORDER BY p.sequence, p.idx
 LIMIT %(limit)s
"""


async def statement_lines(
    pool: AsyncConnectionPool, account_id: str, start: Any, end: Any, after_sequence: int, upto: int, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` postings of [start, end) after `after_sequence`, in order."""
    params = {"a": account_id, "start": start, "end": end, "after": after_sequence, "upto": upto, "limit": limit}
    return await _read(pool, _LINES, params) or []
