"""The classic design paystream replaces, built only to be measured against it.

Balances live in one Postgres table and a transfer is one database transaction
that locks both account rows (in id order, so two transfers between the same
pair can never deadlock), checks the same rules as the ledger
(`pipelines/ledger/domain.py`), moves the money with two UPDATEs and records the
payment with one INSERT whose primary key is the payment id, the idempotency
guard. `synchronous_commit=on`: a COMMIT returns once the WAL is flushed, so an
acknowledged transfer survives a crash, as one acknowledged by Kafka with
acks=all does.

It is written to be a strong baseline, not a straw man. Three variants of the
same transaction exist because the lock hold time is what limits a hot account,
and round trips are most of that time:

* ``classic``  — one statement per round trip, as most application code does;
* ``pipeline`` — the decision needs the SELECT's answer, but the two UPDATEs,
  the INSERT and the COMMIT then go out in one psycopg pipeline (one round trip);
* ``proc``     — the whole transaction in a PL/pgSQL function: one round trip,
  locks held only for the server-side work and the WAL flush.

A duplicate payment id is caught by the primary key: the INSERT fails, the
transaction (and so any money moved) rolls back, and the stored first result is
returned, as the ledger's `COMMAND_DUPLICATE` does (or, with other fields,
`ID_REUSED_WITH_DIFFERENT_FIELDS`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg_pool import ConnectionPool

from paystream.money import MAX_AMOUNT_MINOR
from pipelines.ledger import domain

VARIANTS = ("classic", "pipeline", "proc")

SCHEMA = """
CREATE TABLE accounts (
    id       uuid PRIMARY KEY,
    currency char(3) NOT NULL,
    status   text NOT NULL DEFAULT 'ACTIVE',   -- ACTIVE | FROZEN | CLOSED
    kind     text NOT NULL DEFAULT 'USER',     -- USER accounts are checked for funds
    balance  bigint NOT NULL
);
CREATE TABLE transactions (
    payment_id   uuid PRIMARY KEY,             -- the idempotency guard
    from_account uuid NOT NULL,
    to_account   uuid,
    amount       bigint NOT NULL,
    currency     text NOT NULL,
    status       text NOT NULL,                -- COMPLETED | FAILED | REJECTED
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION transfer(p_id uuid, p_src uuid, p_dst uuid, p_amount bigint, p_currency text,
                         p_static_reason text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r accounts%ROWTYPE;
    s accounts%ROWTYPE;
    d accounts%ROWTYPE;
    st text := 'COMPLETED';
    rs text := p_static_reason;
BEGIN
    IF rs IS NULL THEN
        FOR r IN SELECT * FROM accounts
                 WHERE id IN (p_src, p_dst) ORDER BY id FOR UPDATE LOOP
            IF r.id = p_src THEN s := r; ELSE d := r; END IF;
        END LOOP;
        IF s.id IS NULL THEN rs := 'UNKNOWN_ACCOUNT';
        ELSIF s.status = 'CLOSED' THEN rs := 'ACCOUNT_CLOSED';
        ELSIF s.status = 'FROZEN' THEN rs := 'ACCOUNT_FROZEN';
        ELSIF s.currency <> p_currency THEN rs := 'CURRENCY_MISMATCH';
        ELSIF s.kind = 'USER' AND s.balance < p_amount THEN rs := 'INSUFFICIENT_FUNDS';
        END IF;
        IF rs IS NULL THEN
            IF d.id IS NULL THEN st := 'FAILED'; rs := 'RECEIVER_UNKNOWN';
            ELSIF d.status = 'FROZEN' THEN st := 'FAILED'; rs := 'RECEIVER_FROZEN';
            ELSIF d.status = 'CLOSED' THEN st := 'FAILED'; rs := 'RECEIVER_CLOSED';
            ELSIF d.currency <> p_currency THEN st := 'FAILED'; rs := 'RECEIVER_CURRENCY_MISMATCH';
            END IF;
        END IF;
    END IF;
    IF rs IS NOT NULL AND st = 'COMPLETED' THEN st := 'REJECTED'; END IF;
    IF st = 'COMPLETED' THEN
        UPDATE accounts SET balance = balance - p_amount WHERE id = p_src;
        UPDATE accounts SET balance = balance + p_amount WHERE id = p_dst;
    END IF;
    INSERT INTO transactions (payment_id, from_account, to_account, amount, currency, status, reason)
    VALUES (p_id, p_src, p_dst, p_amount, p_currency, st, rs);
    RETURN st || coalesce(':' || rs, '');
END $$;
"""

LOCK = (
    "SELECT id, currency, status, kind, balance FROM accounts"
    " WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
)
DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
RECORD = (
    "INSERT INTO transactions (payment_id, from_account, to_account, amount, currency, status, reason)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
STORED = "SELECT from_account, to_account, amount, currency, status, reason FROM transactions WHERE payment_id = %s"
PROC = "SELECT transfer(%s, %s, %s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # COMPLETED | FAILED | REJECTED
    reason: str | None = None
    replay: bool = False


def static_reason(cmd: dict[str, Any], max_amount: int = MAX_AMOUNT_MINOR) -> str | None:
    """The checks that need no row: the ledger's amount checks, then the counterparty's."""
    mv = cmd.get("movement")
    reason = domain.amount_problem(mv, max_amount)
    if reason is not None:
        return reason
    assert mv is not None
    if not mv.get("counterparty_id"):
        return "UNKNOWN_ACCOUNT"
    if mv["counterparty_id"] == cmd["account_id"]:
        return "SAME_ACCOUNT"
    return None


def _account(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """An `accounts` row (id, currency, status, kind, balance) as the ledger's state."""
    if row is None:
        return None
    _, currency, status, kind, balance = row
    return {"currency": currency, "status": status, "kind": kind, "balance": balance}


def decide(src: tuple[Any, ...] | None, dst: tuple[Any, ...] | None, amount: int,
           currency: str) -> tuple[str, str | None]:
    """The row checks, with the ledger's own functions and in its order: sender
    (rejected), then receiver (failed, as the ledger's refund)."""
    sender = _account(src)
    reason = domain.sender_problem(sender, currency)
    if reason is not None:
        return "REJECTED", reason
    assert sender is not None
    if not domain.has_funds(sender, amount):
        return "REJECTED", "INSUFFICIENT_FUNDS"
    refusal = domain.receiver_problem(_account(dst), currency)
    if refusal is not None:
        return "FAILED", refusal
    return "COMPLETED", None


def _args(cmd: dict[str, Any]) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID | None, int, str]:
    mv = cmd["movement"]
    dst = mv.get("counterparty_id")
    return (uuid.UUID(cmd["command_id"]), uuid.UUID(cmd["account_id"]),
            uuid.UUID(dst) if dst else None, int(mv["amount"]), mv["currency"])


def transfer(conn: psycopg.Connection[Any], cmd: dict[str, Any], variant: str = "classic") -> Result:
    """Apply one transfer command in one transaction on an autocommit connection."""
    pid, src, dst, amount, currency = _args(cmd)
    reason = static_reason(cmd)
    try:
        if variant == "proc":
            row = conn.execute(PROC, (pid, src, dst, amount, currency, reason)).fetchone()
            assert row is not None
            status, _, why = str(row[0]).partition(":")
            return Result(status, why or None)
        # In a pipeline, BEGIN travels with the SELECT (whose answer we wait for), and
        # UPDATE, UPDATE, INSERT and COMMIT go out together at the pipeline's end.
        with conn.pipeline() if variant == "pipeline" else contextlib.nullcontext(), conn.transaction():
            status = "REJECTED"
            if reason is None:
                rows = conn.execute(LOCK, ([src, dst],)).fetchall()
                by_id = {r[0]: r for r in rows}
                status, reason = decide(by_id.get(src), by_id.get(dst), amount, currency)
            if status == "COMPLETED":
                conn.execute(DEBIT, (amount, src))
                conn.execute(CREDIT, (amount, dst))
            conn.execute(RECORD, (pid, src, dst, amount, currency, status, reason))
        return Result(status, reason)
    except errors.UniqueViolation:
        return _replay(conn, pid, src, dst, amount, currency)


def _replay(conn: psycopg.Connection[Any], pid: uuid.UUID, src: uuid.UUID, dst: uuid.UUID | None,
            amount: int, currency: str) -> Result:
    row = conn.execute(STORED, (pid,)).fetchone()
    assert row is not None, "unique violation without a stored row"
    if (row[0], row[1], row[2], row[3]) != (src, dst, amount, currency):
        return Result("REJECTED", "ID_REUSED_WITH_DIFFERENT_FIELDS", replay=True)
    return Result(row[4], row[5], replay=True)


# ----------------------------------------------------------------------------- database


def admin_dsn(dsn: str, dbname: str) -> str:
    return dsn.rsplit("/", 1)[0] + f"/{dbname}"


class BaselineDB:
    """A scratch database of its own on the given server, created and dropped around a run."""

    def __init__(self, server_dsn: str, name: str = "bench_baseline") -> None:
        self.server_dsn = server_dsn
        self.name = name
        self.dsn = admin_dsn(server_dsn, name)

    def create(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)

    def drop(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def reset(self, accounts: list[str], balance: int, currency: str) -> None:
        """Fresh balances and no transactions: every run starts from the same state."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE transactions, accounts")
            with conn.cursor().copy("COPY accounts (id, currency, balance) FROM STDIN") as cp:
                for a in accounts:
                    cp.write_row((a, currency, balance))
            conn.execute("VACUUM ANALYZE accounts")
            conn.execute("VACUUM ANALYZE transactions")
            conn.execute("CHECKPOINT")  # no run pays for the previous run's dirty pages

    def invariants(self, accounts: int, balance: int) -> dict[str, Any]:
        """The ledger's invariants in this design's terms: money conserved and no negative
        user balance; one row per payment is the primary key's job, the counts per status
        show what was recorded."""
        with psycopg.connect(self.dsn) as conn:
            total, negative, n = conn.execute(
                "SELECT coalesce(sum(balance), 0), count(*) FILTER (WHERE balance < 0), count(*) FROM accounts"
            ).fetchone() or (0, 0, 0)
            rows = conn.execute("SELECT status, count(*) FROM transactions GROUP BY 1").fetchall()
        by_status: dict[str, int] = dict(rows)
        return {
            "accounts": n,
            "sum_conserved": int(total) == accounts * balance,
            "negative_balances": int(negative),
            "transactions": {str(k): int(v) for k, v in by_status.items()},
        }


# ----------------------------------------------------------------------------- load


@dataclass
class BaselineRun:
    variant: str
    pool: int
    mode: str  # max | paced
    sent: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    @property
    def rate(self) -> float:
        done = sum(self.statuses.values())
        return done / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def _pool(dsn: str, size: int) -> Iterator[ConnectionPool]:
    def configure(conn: psycopg.Connection[Any]) -> None:
        # Explicit, whatever the server default: the WAL is flushed before COMMIT returns.
        conn.execute("SET synchronous_commit = on")

    pool = ConnectionPool(dsn, min_size=size, max_size=size, open=False, configure=configure,
                          kwargs={"autocommit": True, "application_name": "bench-baseline"})
    pool.open(wait=True, timeout=60)
    try:
        yield pool
    finally:
        pool.close()


def _warm(pool: ConnectionPool, size: int) -> None:
    """Check every connection out once, so connection set-up is outside the measurement."""
    held = [pool.getconn() for _ in range(size)]
    for conn in held:
        pool.putconn(conn)


def run(dsn: str, cmds: list[dict[str, Any]], *, pool_size: int, variant: str = "classic",
        rate: float = 0.0) -> BaselineRun:
    """Apply `cmds` with `pool_size` worker threads, one pooled connection each.

    rate == 0: closed loop, every worker takes the next command as soon as it is
    done (sustained throughput). rate > 0: open loop, commands are released at
    that rate whatever the workers' progress, and latency is measured from the
    moment a command was due, so queueing behind slow transactions counts
    (no coordinated omission).
    """
    todo: queue.SimpleQueue[tuple[float, dict[str, Any]] | None] = queue.SimpleQueue()
    result = BaselineRun(variant, pool_size, "paced" if rate else "max", len(cmds), 0.0)
    lock = threading.Lock()
    with _pool(dsn, pool_size) as pool:
        _warm(pool, pool_size)

        def worker() -> None:
            lat: list[float] = []
            stats: Counter[str] = Counter()
            errs = 0
            while True:
                item = todo.get()
                if item is None:
                    break
                due, cmd = item
                due = due or time.perf_counter()
                try:
                    with pool.connection() as conn:
                        res = transfer(conn, cmd, variant)
                    stats[res.status] += 1
                    lat.append((time.perf_counter() - due) * 1000)
                except psycopg.Error:
                    errs += 1
            with lock:
                result.latencies_ms.extend(lat)
                result.statuses.update(stats)
                result.errors += errs

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(pool_size)]
        t0 = time.perf_counter()
        if rate:
            for t in threads:
                t.start()
            for i, cmd in enumerate(cmds):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                todo.put((due, cmd))
        else:
            for cmd in cmds:
                todo.put((0.0, cmd))
            for t in threads:
                t.start()
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
        result.seconds = time.perf_counter() - t0
    return result
