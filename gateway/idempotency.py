"""Idempotency keys and rate limits in Redis.

Stripe's conventions: a key is scoped to user and endpoint and remembers a
fingerprint of the request. A finished request is replayed byte for byte; a
request still running (sending, or waiting for the ledger's answer) answers 409;
after it answered 202 a retry waits for the outcome again; a different body
under the same key is 422.

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

from gateway.resp import RespClient, Script

# Sliding-window rate limit (the two-counter approximation): the previous fixed
# window's count, weighted by how much of it still lies inside the last `window`,
# plus the current window's count. Unlike a plain fixed window it allows no double
# burst across a boundary. Refused requests are not counted.
_SLIDING = """
local function rate_wait(cur_key, prev_key, limit, window_ms, elapsed_ms)
  local cur = tonumber(redis.call('GET', cur_key) or '0')
  local prev = tonumber(redis.call('GET', prev_key) or '0')
  if cur + prev * (window_ms - elapsed_ms) / window_ms + 1 > limit then
    return window_ms - elapsed_ms
  end
  redis.call('INCR', cur_key)
  redis.call('PEXPIRE', cur_key, window_ms * 2)
  return 0
end
"""

_CLAIM = (
    _SLIDING
    + """
local now = tonumber(ARGV[3])
if ARGV[6] ~= '0' then
  local wait = rate_wait(KEYS[2], KEYS[3], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
  if wait > 0 then return {'rate', tostring(wait)} end
end
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
if (rec[2] == 'in_flight' or rec[2] == 'accepted') and tonumber(rec[3] or '0') > now then
  return {'busy', tostring(math.ceil((tonumber(rec[3]) - now) / 1000))}
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[2],
           'lock_until', now + tonumber(ARGV[4]))
return {'resume', rec[6] or '0'}
"""
)

# Only the holder of the claim may release it or mark it sent.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'state') == 'in_flight' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Both scripts also store the payment record (KEYS[2]) so a request costs one
# round trip per step, not two.
_ACCEPTED = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3])) end
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'accepted', 'sent', '1')
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'sent', '1') end
return 0
"""

# The holder stops answering for the key (it answered 202 or 503): a retry may take
# over at once instead of getting 409 until the lock deadline.
_UNLOCK = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lock_until', '0')
  return 1
end
return 0
"""

# A final outcome is the same whoever learns it, so anyone may record it.
_DONE = """
if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5], 'EX', tonumber(ARGV[6])) end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'done', 'sent', '1', 'status', ARGV[1], 'body', ARGV[2],
             'headers', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return 1
"""

# Fixed-window counter: INCR, set the expiry on the first hit, report the TTL.
_RATE = (
    _SLIDING
    + """
return rate_wait(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
"""
)


# Failed logins per account. Every attempt is counted *before* the password is
# checked (a success deletes the count), so parallel guesses cannot all slip in
# before the first failure is recorded. From the `threshold`-th attempt on, the
# account is locked for base * 2^(n - threshold), capped; a locked account is
# refused without counting. Failures are forgotten `reset_ms` after the last one.
_LOGIN_ATTEMPT = """
local now = tonumber(ARGV[1])
local locked_until = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
if locked_until > now then return locked_until - now end
local n = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local threshold = tonumber(ARGV[2])
local lock = 0
if n >= threshold then
  lock = math.floor(math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (n - threshold)))
  redis.call('HSET', KEYS[1], 'locked_until', now + lock)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + lock)
return 0
"""

# (current window key, previous window key, limit, window ms, ms elapsed in window)
RateWindow = tuple[str, str, int, int, int]


_CLAIM_SCRIPT, _RELEASE_SCRIPT, _ACCEPTED_SCRIPT, _DONE_SCRIPT, _RATE_SCRIPT, _LOGIN_SCRIPT, _UNLOCK_SCRIPT = (
    Script(t) for t in (_CLAIM, _RELEASE, _ACCEPTED, _DONE, _RATE, _LOGIN_ATTEMPT, _UNLOCK)
)


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
    def __init__(self, redis: RespClient, prefix: str, ttl_seconds: int, lock_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.lock_ms = lock_seconds * 1000

    def key(self, user_id: str, endpoint: str, idem_key: str) -> str:
        digest = hashlib.blake2b(idem_key.encode(), digest_size=16).hexdigest()
        return f"{self.prefix}idem:{user_id}:{endpoint}:{digest}"

    async def claim(self, key: str, fp: str, token: str, rate: RateWindow | None = None) -> Claim:
        """Claim `key` for this request. `rate` (from `RateLimiter.window`) is
        checked first in the same script, saving a round trip on the hot path; a
        rate-limited request does not touch the key."""
        now = int(time.time() * 1000)
        cur, prev, limit, window_ms, elapsed = rate or (key + ":r0", key + ":r1", 0, 0, 0)
        res = await self.redis.evalsha(
            _CLAIM_SCRIPT, [key, cur, prev], [fp, token, now, self.lock_ms, self.ttl, limit, window_ms, elapsed]
        )
        kind = _s(res[0])
        if kind == "rate":
            return Claim(kind, retry_after=max(1, -(-int(_s(res[1])) // 1000)))
        if kind in ("new", "resume"):
            return Claim(kind, sent=_s(res[1]) == "1")
        if kind == "busy":
            return Claim(kind, retry_after=max(1, int(_s(res[1]))))
        if kind == "done":
            hdrs = orjson.loads(res[3]) if res[3] else {}
            return Claim(kind, status=int(res[1]), body=bytes(res[2]), headers=hdrs)
        return Claim(kind)

    async def release(self, key: str, token: str) -> None:
        await self.redis.evalsha(_RELEASE_SCRIPT, [key], [token])

    async def accepted(
        self, key: str, token: str, record_key: str = "", record: bytes = b"", record_ttl: int = 0
    ) -> None:
        """Mark the command as sent (and, if given, store the payment record). The
        claim stays locked while its holder waits for the outcome: a duplicate meanwhile
        answers 409 `request_in_progress`, as for a claim not yet sent."""
        await self.redis.evalsha(
            _ACCEPTED_SCRIPT, [key, record_key or key + ":r"], [token, record, record_ttl or self.ttl]
        )

    async def unlock(self, key: str, token: str) -> None:
        """The holder no longer waits on the key (it answered 202 or 503): the next
        retry resumes it (waits for the outcome) instead of answering 409."""
        await self.redis.evalsha(_UNLOCK_SCRIPT, [key], [token])

    async def done(
        self,
        key: str,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        record_key: str = "",
        record: bytes = b"",
        record_ttl: int = 0,
    ) -> None:
        """Record the final answer (and, if given, the payment record)."""
        await self.redis.evalsha(
            _DONE_SCRIPT,
            [key, record_key or key + ":r"],
            [status, body, orjson.dumps(headers or {}), self.ttl, record, record_ttl or self.ttl],
        )


class RateLimiter:
    def __init__(self, redis: RespClient, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def window(self, bucket: str, ident: str, limit: int, window_seconds: int = 60) -> RateWindow:
        """Keys and position of the current window, for `rate_wait` in a script."""
        now_ms = int(time.time() * 1000)
        window_ms = window_seconds * 1000
        n, elapsed = divmod(now_ms, window_ms)
        base = f"{self.prefix}rl:{bucket}:{ident}:"
        return (f"{base}{n}", f"{base}{n - 1}", limit, window_ms, elapsed)

    async def hit(self, bucket: str, ident: str, limit: int, window_seconds: int = 60) -> int | None:
        """Count one request; return None if allowed, else seconds to wait."""
        cur, prev, limit, window_ms, elapsed = self.window(bucket, ident, limit, window_seconds)
        wait = int(await self.redis.evalsha(_RATE_SCRIPT, [cur, prev], [limit, window_ms, elapsed]))
        return None if wait <= 0 else max(1, -(-wait // 1000))


class LoginGuard:
    """Per-account login throttling with exponential lockout.

    The per-IP limit alone lets a botnet try one account's password from many
    addresses; this limit follows the account instead. It keys on a hash of the
    normalised email whether or not the account exists, so a lockout tells an
    attacker nothing about which emails are registered.
    """

    def __init__(self, redis: RespClient, prefix: str, *, threshold: int, base_seconds: float,
                 max_seconds: float, reset_seconds: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.threshold = threshold
        self.base_ms = int(base_seconds * 1000)
        self.max_ms = int(max_seconds * 1000)
        self.reset_ms = int(reset_seconds * 1000)

    def key(self, email: str) -> str:
        return f"{self.prefix}login:{hashlib.sha256(email.encode()).hexdigest()[:32]}"

    async def attempt(self, email: str) -> int | None:
        """Count a login attempt for `email`: None if it may proceed, else seconds to wait."""
        if self.threshold <= 0:
            return None
        wait = int(await self.redis.evalsha(
            _LOGIN_SCRIPT, [self.key(email)],
            [int(time.time() * 1000), self.threshold, self.base_ms, self.max_ms, self.reset_ms]))
        return None if wait <= 0 else max(1, -(-wait // 1000))

    async def succeeded(self, email: str) -> None:
        """A correct password clears the account's failures (and a lock it set itself)."""
        if self.threshold > 0:
            await self.redis.execute("DEL", self.key(email))


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
