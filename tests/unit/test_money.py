import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.errors import CurrencyMismatchError, MoneyError, UnknownCurrencyError
from paystream.money import CURRENCY_EXPONENTS, Money


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [("100.50", "USD", 10050), ("0", "USD", 0), ("7", "JPY", 7), ("1.234", "KWD", 1234),
     ("0.5", "EUR", 50), ("-2.00", "USD", -200), ("12", "USD", 1200)],
)
def test_parse_exact(text, currency, minor):
    assert Money.parse(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("value", "code"),
    [("1.001", "too_many_decimals"), ("1.5", "too_many_decimals"), ("1e3", "invalid_amount"),
     ("01.00", "invalid_amount"), ("1,00", "invalid_amount"), ("", "invalid_amount"),
     (1.5, "amount_not_a_string"), (100, "amount_not_a_string"), (True, "amount_not_a_string"),
     ("NaN", "invalid_amount"), (".5", "invalid_amount")],
)
def test_parse_refuses(value, code):
    currency = "JPY" if value == "1.5" else "USD"
    with pytest.raises(MoneyError) as err:
        Money.parse(value, currency)
    assert err.value.code == code


@pytest.mark.parametrize(
    "value", [" 10.00", "10.00 ", "10.00\n", "\t10.00", "\n10.00", "10.00\r\n", " ", "1 0.00",
              "\u00a010.00", "10.00\u2003", "\u0661\u0660.00"],
)
def test_parse_refuses_whitespace_and_non_ascii_digits(value):
    # strict parsing: the OpenAPI pattern has no whitespace, so neither may the parser
    with pytest.raises(MoneyError) as err:
        Money.parse(value, "USD")
    assert err.value.code == "invalid_amount"


def test_unknown_currency_and_mismatch():
    with pytest.raises(UnknownCurrencyError):
        Money.parse("1.00", "XXX")
    with pytest.raises(CurrencyMismatchError):
        Money(1, "USD") + Money(1, "EUR")
    with pytest.raises(MoneyError):
        Money(1.0, "USD")  # type: ignore[arg-type]


@given(st.integers(min_value=-(10**18), max_value=10**18), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_format_parse_round_trip(minor, currency):
    money = Money(minor, currency)
    assert Money.parse(money.format(), currency) == money


@given(st.integers(-(10**12), 10**12), st.integers(-(10**12), 10**12))
def test_arithmetic_is_integer_exact(a, b):
    assert (Money(a, "USD") + Money(b, "USD")).minor == a + b
    assert (Money(a, "USD") - Money(b, "USD")).minor == a - b


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [("12.50", "USD", 1250), ("12.500", "USD", 1250), ("1E+2", "USD", 10000), ("-0.01", "USD", -1),
     ("7", "JPY", 7), ("1.234", "KWD", 1234), ("0.000", "EUR", 0)],
)
def test_from_decimal_is_exact(value, currency, minor):
    from decimal import Decimal

    assert Money.from_decimal(Decimal(value), currency) == Money(minor, currency)


@pytest.mark.parametrize(("value", "code"), [("1.001", "too_many_decimals"), ("NaN", "invalid_amount"),
                                             ("Infinity", "invalid_amount"), (1.5, "invalid_amount")])
def test_from_decimal_refuses(value, code):
    from decimal import Decimal

    with pytest.raises(MoneyError) as err:
        Money.from_decimal(Decimal(value) if isinstance(value, str) else value, "USD")
    assert err.value.code == code


@given(st.sampled_from(sorted(CURRENCY_EXPONENTS)), st.integers(-(10**15), 10**15))
def test_decimal_round_trip(currency, minor):
    money = Money(minor, currency)
    dec = money.to_decimal()
    assert Money.from_decimal(dec, currency) == money
    assert str(dec) == money.format()  # the API's string, digit for digit
