"""The benchmark's Postgres baseline is a correct payment system in its own right:
racing overdrafts, concurrent duplicates and a hot account under many connections.
(A baseline that cut corners would win the comparison for the wrong reason.)
Runs in a scratch database of its own on the stack's Postgres."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from ops.lab.bench import baseline as B
from paystream import commands as C
from paystream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(stack: Settings) -> Iterator[B.BaselineDB]:
    d = B.BaselineDB(stack.postgres_dsn, f"bench_baseline_test_{uuid.uuid4().hex[:8]}")
    d.create()
    yield d
    d.drop()


def _apply(db: B.BaselineDB, cmds: list[dict], variant: str, workers: int = 20) -> list[B.Result]:
    def one(c: dict) -> B.Result:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            return B.transfer(conn, c, variant)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cmds))


@pytest.mark.parametrize("variant", B.VARIANTS)
def test_overdraft_race_has_one_winner(db: B.BaselineDB, variant: str) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    db.reset([a, b], 100_000, "USD")
    results = _apply(db, [C.transfer(a, b, 80_000, "USD") for _ in range(20)], variant)
    assert Counter(r.status for r in results) == {"COMPLETED": 1, "REJECTED": 19}
    assert {r.reason for r in results if r.status == "REJECTED"} == {"INSUFFICIENT_FUNDS"}
    assert db.invariants(2, 100_000)["sum_conserved"]


@pytest.mark.parametrize("variant", B.VARIANTS)
def test_concurrent_duplicates_apply_once(db: B.BaselineDB, variant: str) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    db.reset([a, b], 100_000, "USD")
    t = C.transfer(a, b, 1_000, "USD")
    results = _apply(db, [t] * 20, variant)
    assert Counter((r.status, r.replay) for r in results) == {("COMPLETED", False): 1, ("COMPLETED", True): 19}
    with psycopg.connect(db.dsn) as conn:
        balances = dict(conn.execute("SELECT id::text, balance FROM accounts").fetchall())
    assert balances == {a: 99_000, b: 101_000}
    other = dict(t, movement=dict(t["movement"], amount=2_000))
    (reused,) = _apply(db, [other], variant)
    assert reused == B.Result("REJECTED", "ID_REUSED_WITH_DIFFERENT_FIELDS", replay=True)


def test_hot_account_storm_in_both_directions_never_deadlocks(db: B.BaselineDB) -> None:
    accounts = [str(uuid.uuid4()) for _ in range(10)]
    db.reset(accounts, 1_000_000, "USD")
    hot = accounts[0]
    cmds = []
    for i in range(600):
        other = accounts[1 + i % 9]
        cmds.append(C.transfer(hot, other, 7, "USD") if i % 2 else C.transfer(other, hot, 5, "USD"))
    run = B.run(db.dsn, cmds, pool_size=16, variant="classic")
    assert run.errors == 0 and sum(run.statuses.values()) == 600
    inv = db.invariants(10, 1_000_000)
    assert inv["sum_conserved"] and inv["negative_balances"] == 0
    assert inv["transactions"] == {"COMPLETED": 600}
