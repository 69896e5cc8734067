"""The one error hierarchy.

Each error carries a stable machine-readable ``code`` (the contract with clients
and with dead-letter readers) and the HTTP status the gateway answers with.
"""

from __future__ import annotations


class PaystreamError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        if code:
            self.code = code


class ValidationError(PaystreamError):
    code = "validation_error"
    status = 422


class MoneyError(ValidationError):
    code = "invalid_amount"


class UnknownCurrencyError(MoneyError):
    code = "unknown_currency"


class CurrencyMismatchError(MoneyError):
    code = "currency_mismatch"


class DecodeError(PaystreamError):
    """A Kafka message that is not valid Avro for its topic."""

    code = "undecodable"
    status = 400


class UnknownSchemaError(DecodeError):
    code = "unknown_schema"
