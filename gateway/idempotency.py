"""Idempotency keys and rate limits in Redis.

Stripe's conventions: a key is scoped to user and endpoint and remembers a
fingerprint of the request. A finished request is replayed byte for byte; a
request still running answers 409; a different body under the same key is 422.

Each key is one Redis hash changed only by Lua scripts, so the check and the
claim are atomic even with several gateway processes. An in-flight claim carries
a lock deadline: a gateway that dies mid-request leaves a claim that the next
retry takes over once the deadline passes, instead of a key stuck for 24 hours.

Redis is only the first line: the payment id is derived from (user, key), so
even with Redis flushed the ledger refuses to apply a payment twice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

_CLAIM = """
local now = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'in_flight', 'token', ARGV[2],
             'lock_until', now + tonumber(ARGV[4]), 'sent', '0')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  return {'new', '0'}
end
local rec = redis.call('HMGET', KEYS[1], 'fp', 'state', 'lock_until', 'status', 'body', 'sent',
                      'headers')
if rec[1] ~= ARGV[1] then return {'mismatch'} end
if rec[2] == 'done' then return {'done', rec[4], rec[5], rec[7] or ''} end
if rec[2] == 'in_flight' and tonumber(rec[3]) > now then
  return {'busy', tostring(math.ceil((tonumber(rec[3]) - now) / 1000))}
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[2],
           'lock_until', now + tonumber(ARGV[4]))
return {'resume', rec[6] or '0'}
"""

# Only the holder of the claim may release it or mark it sent.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'state') == 'in_flight' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_ACCEPTED = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'accepted', 'sent', '1')
  return 1
end
redis.call('HSET', KEYS[1], 'sent', '1')
return 0
"""

# A final outcome is the same whoever learns it, so anyone may record it.
_DONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'done', 'sent', '1', 'status', ARGV[1], 'body', ARGV[2],
             'headers', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return 1
"""

# Fixed-window counter: INCR, set the expiry on the first hit, report the TTL.
_RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
return {n, redis.call('PTTL', KEYS[1])}
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What the store said about a key: new, resume (retry of an unfinished
    request; `sent` says whether its command reached Kafka), busy, mismatch or done."""

    kind: str
    sent: bool = False
    retry_after: int = 1
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] | None = None


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int, lock_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.lock_ms = lock_seconds * 1000
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._accepted = redis.register_script(_ACCEPTED)
        self._done = redis.register_script(_DONE)

    def key(self, user_id: str, endpoint: str, idem_key: str) -> str:
        digest = hashlib.blake2b(idem_key.encode(), digest_size=16).hexdigest()
        return f"{self.prefix}idem:{user_id}:{endpoint}:{digest}"

    async def claim(self, key: str, fp: str, token: str) -> Claim:
        now = int(time.time() * 1000)
        res = await self._claim(keys=[key], args=[fp, token, now, self.lock_ms, self.ttl])
        kind = _s(res[0])
        if kind in ("new", "resume"):
            return Claim(kind, sent=_s(res[1]) == "1")
        if kind == "busy":
            return Claim(kind, retry_after=max(1, int(_s(res[1]))))
        if kind == "done":
            hdrs = orjson.loads(res[3]) if res[3] else {}
            return Claim(kind, status=int(res[1]), body=bytes(res[2]), headers=hdrs)
        return Claim(kind)

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[key], args=[token])

    async def accepted(self, key: str, token: str) -> None:
        await self._accepted(keys=[key], args=[token])

    async def done(
        self, key: str, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        await self._done(keys=[key], args=[status, body, orjson.dumps(headers or {}), self.ttl])


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._rate = redis.register_script(_RATE)

    async def hit(
        self, bucket: str, ident: str, limit: int, window_seconds: int = 60
    ) -> int | None:
        """Count one request; return None if allowed, else seconds until the window resets."""
        window = int(time.time()) // window_seconds
        key = f"{self.prefix}rl:{bucket}:{ident}:{window}"
        n, pttl = await self._rate(keys=[key], args=[window_seconds * 1000])
        if int(n) <= limit:
            return None
        return max(1, -(-int(pttl) // 1000))


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
