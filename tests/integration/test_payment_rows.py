"""The gateway's id check reads the read model for many requests with one query
(`gateway.store.PaymentRows`), on a database of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway import store
from paystream.settings import Settings
from tests.conftest import scratch_database

pytestmark = pytest.mark.integration

DB = "paystream_payment_rows_test"


@pytest.fixture(scope="module")
def dsn(stack: Settings) -> Iterator[str]:
    with scratch_database(stack, DB) as dsn:
        yield dsn


def test_concurrent_checks_share_one_query_and_each_gets_its_own_row(dsn: str) -> None:
    stored = [str(uuid.uuid4()) for _ in range(3)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, pid in enumerate(stored):
            conn.execute("INSERT INTO payments (payment_id, kind, amount, currency, status, created_at, updated_at)"
                         " VALUES (%s, 'transfer', %s, 'USD', 'completed', now(), now())", (pid, 100 + i))  # fmt: skip
    missing = [str(uuid.uuid4()) for _ in range(17)]

    async def go() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
            rows = store.PaymentRows(pool, linger=0.01)
            before = pool.get_stats().get("requests_num", 0)
            asked = [*stored, *missing, stored[0]]  # one id asked twice
            got = await asyncio.gather(*(rows.get(pid) for pid in asked))
            assert pool.get_stats().get("requests_num", 0) - before == 1
            for pid, row in zip(asked, got, strict=True):
                alone = await store.payment_row(pool, pid)
                assert row == alone and (row is None) == (pid in missing)
            assert [r["amount"] for r in got[:3] if r] == [100, 101, 102]

            # A caller that gives up (its timeout) leaves the query to the others.
            quitter = asyncio.ensure_future(rows.get(stored[1]))
            stayer = asyncio.ensure_future(rows.get(stored[2]))
            await asyncio.sleep(0)
            quitter.cancel()
            assert (await stayer or {}).get("amount") == 102
            with pytest.raises(asyncio.CancelledError):
                await quitter

    asyncio.run(go())
