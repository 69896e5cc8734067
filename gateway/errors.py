"""What the gateway's service layer refuses, as domain errors.

The service never speaks HTTP: it raises these (part of the one hierarchy,
`paystream.errors.PaystreamError`, so each carries its stable code and status), and
the edge (`gateway.problems`) maps every PaystreamError to problem+json, adding
`Retry-After` when the error says when to come back.
"""

from __future__ import annotations

from paystream.errors import PaystreamError


class GatewayError(PaystreamError):
    def __init__(self, detail: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RateLimited(GatewayError):
    code = "rate_limited"
    status = 429


class IdempotencyKeyReused(GatewayError):
    """The key names another request (another body) than this one."""

    code = "idempotency_key_reused"
    status = 422


class RequestInProgress(GatewayError):
    """Another request holds the key and its outcome is not known yet."""

    code = "request_in_progress"
    status = 409


class TooManyAccounts(GatewayError):
    """The user holds `gateway_max_accounts_per_user` accounts already."""

    code = "too_many_accounts"
    status = 409


class LedgerUnavailable(GatewayError):
    """Kafka did not take the command: nothing was sent, a retry is safe."""

    code = "ledger_unavailable"
    status = 503


KEY_REUSED_DETAIL = "this Idempotency-Key was used with a different request body"
