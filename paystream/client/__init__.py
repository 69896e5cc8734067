"""The paystream HTTP API from Python: `Client` (sync) and `AsyncClient` (asyncio).

    from decimal import Decimal
    from paystream.client import Client, PaymentRefused

    with Client("http://127.0.0.1:8080", email="ada@example.com", password="...") as client:
        try:
            payment = client.create_payment("PS0780311395", "PS4455430399", Decimal("12.50"), "EUR")
        except PaymentRefused as refused:
            print(refused.code)          # "insufficient_funds"
        for p in client.list_payments():  # every page
            print(p.id, p.status, p.amount)

docs/SDK.md describes it; webhook signatures are checked with `paystream.webhooks`.
"""

from paystream.client.aio import AsyncClient
from paystream.client.calls import Amount, Call
from paystream.client.errors import (
    ApiConnectionError,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    PaymentRefused,
    RateLimited,
    RequestInProgress,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)
from paystream.client.models import (
    Account,
    AccountStatus,
    Balance,
    Payment,
    Registration,
    Review,
    RuleHit,
    Statement,
    StatementLine,
    Transaction,
    User,
    WebhookEndpoint,
)
from paystream.client.retry import NO_RETRIES, RetryPolicy
from paystream.client.sync import Client

__all__ = [
    "NO_RETRIES",
    "Account",
    "AccountStatus",
    "Amount",
    "ApiConnectionError",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Balance",
    "Call",
    "Client",
    "Conflict",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "NotFound",
    "Payment",
    "PaymentRefused",
    "RateLimited",
    "Registration",
    "RequestInProgress",
    "RetryPolicy",
    "Review",
    "RuleHit",
    "ServerError",
    "ServiceUnavailable",
    "Statement",
    "StatementLine",
    "Transaction",
    "Unauthorized",
    "User",
    "WebhookEndpoint",
]
