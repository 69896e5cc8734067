"""The one money type: an integer count of minor units plus an ISO 4217 currency.

At the edges money is a decimal string ("100.50"). Parsing is strict: a value
with more decimals than the currency allows is an error, never rounded, and a
float is refused outright, because a binary float cannot carry a decimal amount
exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from paystream.errors import CurrencyMismatchError, MoneyError, UnknownCurrencyError

# ISO 4217 minor-unit exponents for the currencies paystream accepts.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2, "CZK": 2,
    "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2,
    "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "NOK": 2, "NZD": 2,
    "OMR": 3, "PLN": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "USD": 2,
    "VND": 0, "ZAR": 2,
}  # fmt: skip

# Largest amount in minor units a single movement may carry: far below 2**63 so
# that sums of many maximal amounts still fit an Avro long / Postgres bigint.
MAX_AMOUNT_MINOR = 10**15

# Largest balance a deposit or a credit may leave on an account (a clear refusal,
# BALANCE_LIMIT / RECEIVER_BALANCE_LIMIT, instead of an Avro long overflowing in the
# ledger's encoder). Refunds and reversal credits only restore money an account had,
# so they are not refused; 2**63 is still 92x away even so.
MAX_BALANCE_MINOR = 10**17

# fullmatch, never ``$``: ``$`` also matches before a trailing newline, so
# "10.00\n" would pass. Surrounding whitespace is refused, not stripped: the API's
# pattern has none, and a lenient parser here would accept what the contract refuses.
_DECIMAL = re.compile(r"(-)?(0|[1-9][0-9]*)(?:\.([0-9]+))?")


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrencyError(f"unknown currency {currency!r}") from None


def is_currency(currency: str) -> bool:
    return currency in CURRENCY_EXPONENTS


@dataclass(frozen=True, slots=True, order=False)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.minor) is not int:  # bool and float are both refused
            raise MoneyError(f"minor units must be an int, not {type(self.minor).__name__}")
        exponent(self.currency)

    @classmethod
    def parse(cls, text: Any, currency: str) -> Money:
        """Parse a decimal string such as ``"100.50"`` exactly.

        Refuses floats, exponents, separators, surrounding whitespace and more
        decimals than the currency has, with an error naming the problem.
        """
        exp = exponent(currency)
        if not isinstance(text, str):
            raise MoneyError(
                f"amount must be a decimal string, not {type(text).__name__}",
                code="amount_not_a_string",
            )
        match = _DECIMAL.fullmatch(text)
        if match is None:
            raise MoneyError(f"{text!r} is not a decimal amount", code="invalid_amount")
        sign, whole, frac = match.groups()
        frac = frac or ""
        if len(frac) > exp:
            raise MoneyError(
                f"{text!r} has {len(frac)} decimals; {currency} allows {exp}",
                code="too_many_decimals",
            )
        minor = int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)
        return cls(-minor if sign else minor, currency)

    @classmethod
    def from_decimal(cls, value: Decimal, currency: str) -> Money:
        """An exact ``Decimal`` in the currency's units, as strictly as `parse`: more
        significant decimals than the currency allows is an error, never rounded.
        Trailing zeros are not significant (``Decimal("12.500")`` is 12.50 USD)."""
        if not isinstance(value, Decimal):
            raise MoneyError(f"amount must be a Decimal, not {type(value).__name__}", code="invalid_amount")
        if not value.is_finite():
            raise MoneyError(f"{value} is not an amount", code="invalid_amount")
        return cls.parse(format(value.normalize(), "f"), currency)

    def to_decimal(self) -> Decimal:
        """The amount as an exact ``Decimal`` in the currency's units, with as many
        decimals as the currency has (``Decimal("12.50")`` for 1250 USD cents)."""
        return Decimal(self.minor).scaleb(-exponent(self.currency))

    def format(self) -> str:
        exp = exponent(self.currency)
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**exp)
        return f"{sign}{whole}.{frac:0{exp}d}" if exp else f"{sign}{whole}"

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatchError(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"


def format_minor(minor: int, currency: str) -> str:
    return Money(minor, currency).format()
