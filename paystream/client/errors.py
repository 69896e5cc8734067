"""The API's refusals as exceptions, in the one hierarchy (`paystream.errors`).

Every error answer of the gateway is an RFC 9457 problem document with a stable
`code` (gateway/README.md lists them). `error_from` turns one into the `ApiError`
subclass for its code or status, so callers catch what they mean
(`except PaymentRefused as e: e.code == "insufficient_funds"`) and every error still
is a `PaystreamError` with `code` and `status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from paystream.client.models import Payment
from paystream.errors import PaystreamError


class ApiError(PaystreamError):
    """An error answer of the API. `status` and `code` as the gateway sent them;
    `problem` is the whole problem document (extension members included, such as a
    validation error's `errors`)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        title: str = "",
        problem: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or code, code=code)
        self.status = status
        self.title = title
        self.problem: Mapping[str, Any] = problem or {}
        self.headers: Mapping[str, str] = headers or {}

    @property
    def retry_after(self) -> float | None:
        """Seconds the gateway asked to wait before trying again (429, 503, 409)."""
        return retry_after_seconds(self.headers.get("retry-after"))

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"


class BadRequest(ApiError):
    """400: malformed JSON, a bad cursor or timestamp."""

    status = 400


class Unauthorized(ApiError):
    """401: no token, an invalid or expired one (`token_expired`), or wrong credentials."""

    status = 401


class PaymentRefused(ApiError):
    """402: the ledger refused or failed the payment; `code` is its reason
    (`insufficient_funds`, `account_frozen`, `hold_expired`, ...) and `payment` the
    payment as it ended."""

    status = 402

    def __init__(self, *args: Any, payment: Payment | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payment = payment


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    """404: `account_not_found`, `payment_not_found`, `webhook_not_found` (also for
    what exists but is someone else's)."""

    status = 404


class Conflict(ApiError):
    """409: `email_taken`, `too_many_accounts`, `already_frozen`, ..."""

    status = 409


class RequestInProgress(Conflict):
    """409 `request_in_progress`: another request with this Idempotency-Key is still
    running. The client retries these itself; this is raised when its budget ran out."""

    code = "request_in_progress"


class InvalidRequest(ApiError):
    """422: a field the gateway refused (`invalid_amount`, `currency_mismatch`, ...)."""

    status = 422


class IdempotencyKeyReused(InvalidRequest):
    """422 `idempotency_key_reused`: the key was used with another request body."""

    code = "idempotency_key_reused"


class RateLimited(ApiError):
    """429: too many requests; `retry_after` says when to come back."""

    status = 429


class ServerError(ApiError):
    """5xx: the gateway or a service behind it failed."""

    status = 500


class ServiceUnavailable(ServerError):
    """503: `ledger_unavailable`, `read_model_behind`, `service_unavailable`. Retried
    by the client (with the same Idempotency-Key); raised when its budget ran out."""

    status = 503


class ApiConnectionError(PaystreamError):
    """No answer from the API (connection refused or reset, timeout) after every
    retry. A payment sent with a key may or may not have been made: call again with
    the same `idempotency_key` to find out, never with a new one."""

    code = "connection_error"
    status = 0  # no HTTP answer


_BY_CODE: dict[str, type[ApiError]] = {
    "request_in_progress": RequestInProgress,
    "idempotency_key_reused": IdempotencyKeyReused,
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 402: PaymentRefused, 403: Forbidden, 404: NotFound, 409: Conflict,
    422: InvalidRequest, 429: RateLimited, 503: ServiceUnavailable,
}  # fmt: skip


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) as seconds from now; None
    when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The response's problem document, or {} when it has none (a proxy's HTML page)."""
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def error_from(response: httpx.Response) -> ApiError:
    """The typed error for an error answer."""
    doc = problem_of(response)
    status = response.status_code
    code = str(doc.get("code") or f"http_{status}")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    detail = str(doc.get("detail") or response.reason_phrase or code)
    common: dict[str, Any] = {"title": str(doc.get("title", "")), "problem": doc, "headers": response.headers}
    if cls is PaymentRefused:
        payment = doc.get("payment")
        return PaymentRefused(status, code, detail, payment=Payment.from_api(payment) if payment else None, **common)
    return cls(status, code, detail, **common)
