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


# -- Kafka-direct clients: paystream.producer, paystream.consumer ------------------------


class InvalidCommand(ValidationError):
    """A command the ledger would dead-letter (not a Command record, or `INVALID` by
    `paystream.commands.command_problem`): refused before anything is sent."""

    code = "invalid_command"


class PrivilegedCommand(PaystreamError):
    """A command only a privileged principal may send (`paystream.commands.is_privileged`):
    a direct producer's would be dead-lettered `UNPRIVILEGED`, or refused by the broker."""

    code = "privileged_command"
    status = 403


class NotDelivered(PaystreamError):
    """Kafka did not take the command (or did not say so in time); resending it with the
    same command id is safe, the ledger applies an id once."""

    code = "not_delivered"
    status = 503


class OutcomeTimeout(PaystreamError):
    """The command's outcome was not seen in time. It may still be applied: wait longer,
    or resend it with the same command id (the ledger answers a duplicate)."""

    code = "outcome_timeout"
    status = 504


class OutcomesUnavailable(PaystreamError):
    """`ledger.events` cannot be read with these credentials (or at all), so an outcome
    cannot be waited for."""

    code = "outcomes_unavailable"
    status = 503


class UnknownRecordType(DecodeError):
    """A record on `ledger.events` that is no ledger event this version knows."""

    code = "unknown_record_type"


class AccountNotFound(PaystreamError):
    code = "account_not_found"
    status = 404
