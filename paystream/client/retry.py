"""When to send a call again, and how long to wait first: the decisions both clients
make, as plain functions over plain data (no I/O, no clock, no sleeping), so the
policy is unit-tested without a network or real time.

What is retried, always with the call's own Idempotency-Key:
* 429 and 502/503/504, after the server's `Retry-After` when it gives one. A
  Retry-After longer than `retry_after_max_seconds` is not waited out: the error is
  raised with its `retry_after` for the caller to decide (a login lockout can ask for
  15 min).
* 409 `request_in_progress`: another send of this key is still running. Its
  Retry-After is when the holder's lock lapses (up to `gateway_inflight_lock_seconds`,
  30 s, for a holder that died), while a live holder is usually done in a few hundred
  ms; asking again early is harmless (the gateway answers 409 again, or the first
  answer), so the client asks again on its backoff, never later than the Retry-After.
* A connection error or a timeout. A call that is not `safe` to send twice (a
  registration, a new webhook endpoint, a freeze) is retried only when the request
  surely never reached the server (connection refused, connect or pool timeout) or
  was refused before any work (429).
* A 401 `token_expired` / `invalid_token` once, after logging in again, when the
  client holds the credentials.
* A 202 Accepted of a call that `follow`s (payments, captures, cancels, deposits and
  withdrawals): sent again with the same key, which the gateway answers with the
  outcome once there is one (gateway/README.md, Idempotency), until the call's `wait`
  budget is spent; then the pending payment is returned.

Failures are bounded by `max_attempts` sends and `max_elapsed_seconds` (plus the
call's wait budget); no retry starts that would end past that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from paystream.client.calls import Call
from paystream.client.errors import ApiConnectionError, error_from, problem_of, retry_after_seconds
from paystream.client.models import Token

T = TypeVar("T")

RETRY_STATUSES = frozenset({502, 503, 504})
# The request never left, or was refused before the server did anything with it.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Our own mistakes: sending again cannot help.
_NEVER = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
_REAUTH_CODES = frozenset({"token_expired", "invalid_token"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard a client tries. The defaults give up after 5 sends or a minute (plus
    the call's wait budget), whichever comes first."""

    max_attempts: int = 5
    max_elapsed_seconds: float = 60.0
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    retry_after_max_seconds: float = 20.0

    def backoff(self, failures: int, jitter: float) -> float:
        """Exponential backoff after the `failures`-th failure, scaled into
        [half, all] of itself by `jitter` in [0, 1] so that clients spread out."""
        full = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0 ** (failures - 1))
        return full * (0.5 + jitter / 2)


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class Again:
    """Send the call again after `delay` seconds (after logging in again if `relogin`)."""

    delay: float
    relogin: bool = False


@dataclass(slots=True)
class Attempts:
    """One call's sends so far: when it started, how many failed, whether it logged
    in again already."""

    policy: RetryPolicy
    started: float
    wait: float | None
    failures: int = 0
    relogged: bool = False

    def remaining_wait(self, now: float) -> float | None:
        """What is left of the call's outcome budget (`Prefer: wait`), if it has one."""
        return None if self.wait is None else max(0.0, self.started + self.wait - now)

    def after_failure(self, now: float, retry_after: float | None, jitter: float, *,
                      bound: bool = False) -> float | None:  # fmt: skip
        """The delay before the next send after a failure, or None to give up. With
        `bound`, `retry_after` is only the latest time worth waiting for (a 409's lock
        deadline), and the backoff is used when it is sooner."""
        self.failures += 1
        policy = self.policy
        if self.failures >= policy.max_attempts:
            return None
        backoff = policy.backoff(self.failures, jitter)
        if retry_after is None:
            delay = backoff
        elif bound:
            delay = min(backoff, retry_after)
        elif retry_after > policy.retry_after_max_seconds:
            return None
        else:
            delay = retry_after
        deadline = self.started + policy.max_elapsed_seconds + (self.wait or 0.0)
        return delay if now + delay <= deadline else None


def judge(call: Call[T], attempts: Attempts, response: httpx.Response, *, now: float, jitter: float,
          can_login: bool) -> T | Again:  # fmt: skip
    """The call's result, or when to send it again; raises the typed error when the
    answer is a refusal or the retries are spent."""
    status = response.status_code
    if status == 202 and call.follow:
        left = attempts.remaining_wait(now) or 0.0
        if left <= 0:
            return call.read(response)  # no outcome within the caller's budget: pending
        hint = retry_after_seconds(response.headers.get("retry-after"))
        return Again(min(hint if hint is not None else 1.0, left, attempts.policy.retry_after_max_seconds))
    if 200 <= status < 300:
        return call.read(response)
    expired = status == 401 and problem_of(response).get("code") in _REAUTH_CODES
    if expired and call.auth and can_login and not attempts.relogged:
        attempts.relogged = True
        return Again(0.0, relogin=True)
    if _retryable(call, response):
        hint = retry_after_seconds(response.headers.get("retry-after"))
        delay = attempts.after_failure(now, hint, jitter, bound=status == 409)
        if delay is not None:
            return Again(delay)
    raise error_from(response)


def _retryable(call: Call[Any], response: httpx.Response) -> bool:
    status = response.status_code
    if status == 429:
        return True
    if status == 409:
        return call.key is not None and problem_of(response).get("code") == "request_in_progress"
    return call.safe and status in RETRY_STATUSES


def judge_error(call: Call[Any], attempts: Attempts, error: httpx.TransportError, *, now: float,
                jitter: float) -> Again:  # fmt: skip
    """When to send again after the request failed on the wire; raises
    `ApiConnectionError` when it may not be sent again or the retries are spent."""
    if not isinstance(error, _NEVER) and (call.safe or isinstance(error, _UNSENT)):
        delay = attempts.after_failure(now, None, jitter)
        if delay is not None:
            return Again(delay)
    raise ApiConnectionError(f"{call.method} {call.path}: {type(error).__name__}: {error}") from error


@dataclass(slots=True)
class Session:
    """Who the client is: a token, and the credentials to get a new one. Tokens are
    JWTs with `expires_in` and there are no refresh tokens, so a token is renewed by
    logging in again `margin` before it expires (or after a 401 `token_expired`)."""

    email: str | None = None
    password: str | None = None
    token: str | None = None
    expires_at: float | None = None  # on the client's clock; None: unknown (a token given ready)

    @property
    def can_login(self) -> bool:
        return self.email is not None and self.password is not None

    def fresh(self, now: float) -> bool:
        """Whether the token can be sent as it is."""
        if self.token is None:
            return False
        return self.expires_at is None or not self.can_login or now < self.expires_at

    def update(self, token: Token, now: float) -> None:
        margin = min(60.0, token.expires_in / 10)
        self.token, self.expires_at = token.access_token, now + token.expires_in - margin

    def forget(self) -> None:
        self.token, self.expires_at = None, None


def request_args(call: Call[Any], attempts: Attempts, token: str | None, *, now: float,
                 timeout: float) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of `httpx.Client.build_request` for the next send."""
    headers = {"Accept": call.accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if call.key is not None:
        headers["Idempotency-Key"] = call.key
    if call.wait is not None:
        left = attempts.remaining_wait(now)
        prefer = call.wait if left is None else left
        headers["Prefer"] = f"wait={prefer:.3f}"
        timeout += prefer  # the gateway holds the answer back that long
    return {"method": call.method, "url": call.path, "params": call.params, "json": call.json, "headers": headers,
            "timeout": timeout}  # fmt: skip
