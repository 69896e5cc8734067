"""Read-your-writes: a client told how a payment ended sees it in what it reads next.

The gateway answers from the ledger's own outcome event, while balances and lists
come from the read model, which the sink fills a little later (24-136 ms measured
on this machine). Without this, `GET /v1/accounts/...` right after `201 completed`
showed the old balance. So each outcome the gateway reports is remembered for the
caller (in Redis, shared by every gateway process) as what the read model must
show first; the caller's next reads of balances, history and payment lists wait,
briefly, until the sink has written it. The check is the read model itself:

- the payment's row has the reported status (or a later one: completed, then reversed);
- the event on the account that sent the command is there too (a transfer's debit
  sits on the sender's partition, its completion on the receiver's, and the sink
  may apply them in either order; the sender's balance comes with the debit).

A read that would still be stale when `gateway_read_wait_seconds` runs out gets 503
`read_model_behind` with Retry-After rather than an answer that contradicts one the
client already has. Remembered outcomes expire after `REMEMBER_SECONDS`: by then
the sink either has them or is down, and reads stop waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from psycopg_pool import AsyncConnectionPool

from gateway.problems import Problem
from gateway.resp import RespClient, Script

log = logging.getLogger("paystream.gateway.reads")

REMEMBER_SECONDS = 60
REMEMBER_MAX = 32  # per user; the oldest go first
POLL_SECONDS = 0.01

# The read-model statuses that show a reported outcome (upper case, as the sink writes them).
SHOWN_AS = {
    "completed": ["COMPLETED", "REVERSED"],
    "reversed": ["REVERSED"],
    "failed": ["FAILED"],
    "rejected": ["REJECTED"],
    # a placed hold shows as it is, or as anything that may follow it
    "requires_capture": ["REQUIRES_CAPTURE", "PENDING", "COMPLETED", "FAILED", "REVERSED", "CANCELED", "EXPIRED"],
    "canceled": ["CANCELED"],
}

_REMEMBER = Script("""
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
""")

_SHOWN = """
SELECT EXISTS (SELECT 1 FROM payments WHERE payment_id = %(p)s AND status = ANY(%(st)s))
   AND EXISTS (SELECT 1 FROM ledger_events WHERE payment_id = %(p)s AND account_id = %(a)s)
"""


class ReadYourWrites:
    def __init__(self, redis: RespClient, pool: AsyncConnectionPool, prefix: str, wait_seconds: float) -> None:
        self.redis = redis
        self.pool = pool
        self.prefix = prefix
        self.wait_seconds = wait_seconds

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}ryw:{user_id}"

    async def told(self, user_id: str, payment_id: str, account_id: str, status: str) -> None:
        """`user_id` was just told `payment_id` ended `status`."""
        if self.wait_seconds <= 0 or status not in SHOWN_AS:
            return
        entry = orjson.dumps({"p": payment_id, "a": account_id, "s": status})
        try:
            await self.redis.evalsha(_REMEMBER, [self._key(user_id)], [entry, REMEMBER_MAX, REMEMBER_SECONDS])
        except Exception as exc:  # the answer is already decided; this only shapes later reads
            log.warning("could not remember an outcome for read-your-writes: %s", exc)

    async def settle(self, user_id: str) -> None:
        """Return once the read model shows every outcome `user_id` was told; 503 if
        it does not within the wait budget."""
        if self.wait_seconds <= 0:
            return
        key = self._key(user_id)
        try:
            raw = await self.redis.execute("LRANGE", key, 0, -1)
        except Exception as exc:
            log.warning("read-your-writes check skipped, Redis unavailable: %s", exc)
            return
        if not raw:
            return
        pending = list(dict.fromkeys(raw))  # a retried payment is remembered twice
        deadline = time.monotonic() + self.wait_seconds
        while True:
            still = [e for e in pending if not await self._shown(orjson.loads(e))]
            for e in pending:
                if e not in still:
                    await self.redis.execute("LREM", key, 0, e)
            if not still:
                return
            if time.monotonic() >= deadline:
                raise Problem(503, "read_model_behind",
                              "the read model has not caught up with a payment you were just told about; retry",
                              headers={"Retry-After": "1"})  # fmt: skip
            pending = still
            await asyncio.sleep(POLL_SECONDS)

    async def _shown(self, entry: dict[str, str]) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_SHOWN, {"p": entry["p"], "a": entry["a"], "st": SHOWN_AS[entry["s"]]})
            row = await cur.fetchone()
        return bool(row and row[0])
