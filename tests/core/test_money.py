"""Money value type, parsing/formatting round trip and largest-remainder allocation (R28, R30)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ErrorCode, ValidationError
from core.money import (
    CURRENCY_CODES,
    CURRENCY_EXPONENTS,
    Money,
    allocate,
    exponent,
    format_money,
    money_sum,
    parse_money,
    split_evenly,
    validate_currency,
)

currencies = st.sampled_from(CURRENCY_CODES)
amounts = st.integers(min_value=-(10**15), max_value=10**15)


def test_exponent_table_has_the_iso_exponents():
    assert exponent("JPY") == 0
    assert exponent("EUR") == 2
    assert exponent("BHD") == 3
    assert exponent("eur") == 2
    assert CURRENCY_EXPONENTS["KWD"] == 3


def test_validate_currency_normalizes_and_refuses_unknown_codes():
    assert validate_currency(" eur ") == "EUR"
    for bad in ("", "EU", "XXX", "EURO"):
        with pytest.raises(ValidationError) as err:
            validate_currency(bad)
        assert err.value.code == ErrorCode.INVALID_CURRENCY


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (999, "EUR", "EUR 9.99"),
        (1200, "JPY", "JPY 1,200"),
        (1250, "BHD", "BHD 1.250"),
        (-1250, "BHD", "BHD -1.250"),
        (-5, "EUR", "EUR -0.05"),
        (0, "EUR", "EUR 0.00"),
        (123456789, "USD", "USD 1,234,567.89"),
    ],
)
def test_format_examples(amount, currency, text):
    assert format_money(amount, currency) == text
    assert str(Money(amount, currency)) == text
    assert parse_money(text, currency) == Money(amount, currency)


@pytest.mark.parametrize(
    ("text", "currency", "amount"),
    [
        ("9.99", "EUR", 999),
        ("9.9", "EUR", 990),
        ("9", "EUR", 900),
        ("1,200", "JPY", 1200),
        ("-1.250", "BHD", -1250),
        ("1.25", "BHD", 1250),
        ("  +12.30 ", "EUR", 1230),
        ("eur 1,000.01", "EUR", 100001),
        ("-0", "EUR", 0),
    ],
)
def test_parse_examples(text, currency, amount):
    assert parse_money(text, currency) == Money(amount, currency)


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("9.999", "EUR"),
        ("1200.5", "JPY"),
        ("1.2500", "BHD"),
        ("1.0", "JPY"),
    ],
)
def test_parse_refuses_more_decimals_than_the_exponent(text, currency):
    with pytest.raises(ValidationError) as err:
        parse_money(text, currency)
    assert err.value.code == ErrorCode.INVALID_AMOUNT


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "1.2.3",
        "1,20",
        "12,00.00",
        ",100",
        "1.",
        ".5",
        "--1",
        "1e3",
        "9,99",
        "NaN",
        "Infinity",
        "1 000",
        "١٢",
        "0x10",
        "1" * 100,
        "EUR",
        "-EUR 1",
    ],
)
def test_parse_refuses_junk(text):
    with pytest.raises(ValidationError) as err:
        parse_money(text, "EUR")
    assert err.value.code == ErrorCode.INVALID_AMOUNT


def test_parse_refuses_another_currencys_text():
    with pytest.raises(ValidationError) as err:
        parse_money("USD 9.99", "EUR")
    assert err.value.code == ErrorCode.CURRENCY_MISMATCH


@given(amount=amounts, currency=currencies)
def test_format_parse_round_trip_for_every_currency(amount, currency):
    text = format_money(amount, currency)
    assert parse_money(text, currency) == Money(amount, currency)
    bare = text.split(" ", 1)[1]
    assert parse_money(bare, currency).amount_minor == amount
    assert parse_money(bare.replace(",", ""), currency).amount_minor == amount
    assert format_money(parse_money(text, currency).amount_minor, currency) == text


@given(amount=amounts, currency=currencies)
def test_decimal_round_trip_for_every_currency(amount, currency):
    money = Money(amount, currency)
    value = money.to_decimal()
    assert Fraction(value) == Fraction(amount, 10 ** exponent(currency))
    assert value.as_tuple().exponent == -exponent(currency)
    assert Money.from_decimal(value, currency) == money
    assert parse_money(str(value), currency) == money


def test_from_decimal_only_when_exact():
    assert Money.from_decimal(Decimal("9.99"), "EUR") == Money(999, "EUR")
    assert Money.from_decimal(Decimal("9.9900"), "EUR") == Money(999, "EUR")
    assert Money.from_decimal(Decimal("1200"), "JPY") == Money(1200, "JPY")
    assert Money.from_decimal(Decimal("1E+3"), "JPY") == Money(1000, "JPY")
    for value, currency in [(Decimal("9.995"), "EUR"), (Decimal("0.5"), "JPY"), (Decimal("1.2345"), "BHD")]:
        with pytest.raises(ValidationError) as err:
            Money.from_decimal(value, currency)
        assert err.value.code == ErrorCode.INVALID_AMOUNT
    for value in (Decimal("NaN"), Decimal("Infinity"), 9.99, "9.99", 999):
        with pytest.raises(ValidationError):
            Money.from_decimal(value, "EUR")


@pytest.mark.parametrize("amount", [True, False, 9.99, 1.0, Decimal("1"), "100", None, Fraction(1)])
def test_money_refuses_non_int_amounts(amount):
    with pytest.raises(ValidationError) as err:
        Money(amount, "EUR")
    assert err.value.code == ErrorCode.INVALID_AMOUNT


def test_money_validates_and_normalizes_currency():
    assert Money(1, "eur").currency == "EUR"
    for bad in ("XYZ", "", None, 978):
        with pytest.raises(ValidationError) as err:
            Money(1, bad)
        assert err.value.code == ErrorCode.INVALID_CURRENCY


def test_money_is_frozen_and_hashable():
    money = Money(100, "EUR")
    with pytest.raises(AttributeError):
        money.amount_minor = 5
    assert {money, Money(100, "eur")} == {money}


@given(a=amounts, b=amounts, currency=currencies)
def test_arithmetic_in_one_currency(a, b, currency):
    x, y = Money(a, currency), Money(b, currency)
    assert (x + y).amount_minor == a + b
    assert (x - y).amount_minor == a - b
    assert (-x).amount_minor == -a
    assert abs(x).amount_minor == abs(a)
    assert (x < y) == (a < b)
    assert (x <= y) == (a <= b)
    assert (x > y) == (a > b)
    assert (x >= y) == (a >= b)
    assert (x + y).currency == currency


@pytest.mark.parametrize(
    "op",
    [
        lambda x, y: x + y,
        lambda x, y: x - y,
        lambda x, y: x < y,
        lambda x, y: x <= y,
        lambda x, y: x > y,
        lambda x, y: x >= y,
    ],
)
def test_mixing_currencies_raises_currency_mismatch(op):
    with pytest.raises(ValidationError) as err:
        op(Money(100, "EUR"), Money(100, "USD"))
    assert err.value.code == ErrorCode.CURRENCY_MISMATCH
    with pytest.raises(ValidationError) as err:
        op(Money(100, "EUR"), 100)
    assert err.value.code == ErrorCode.CURRENCY_MISMATCH


def test_equality_across_currencies_is_false_not_an_error():
    assert Money(100, "EUR") != Money(100, "USD")
    assert Money(100, "EUR") == Money(100, "EUR")


def test_money_sum():
    assert money_sum([Money(1, "EUR"), Money(2, "EUR")], currency="EUR") == Money(3, "EUR")
    assert money_sum([], currency="JPY") == Money(0, "JPY")
    with pytest.raises(ValidationError):
        money_sum([Money(1, "EUR"), Money(2, "USD")], currency="EUR")


# -- allocation ---------------------------------------------------------------------------------
weights_lists = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30).filter(any)


@given(total=amounts, weights=weights_lists)
def test_allocate_sums_exactly_and_stays_within_one_of_the_exact_share(total, weights):
    parts = allocate(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - Fraction(total * weight, weight_sum)) < 1
        if weight == 0:
            assert part == 0
    assert allocate(total, weights) == parts  # deterministic
    assert allocate(-total, weights) == [-p for p in parts]  # a credit mirrors its debit


@given(total=amounts, weights=weights_lists)
def test_allocate_gives_leftover_units_to_the_largest_remainders(total, weights):
    parts = allocate(total, weights)
    weight_sum = sum(weights)
    magnitude = abs(total)
    rounded_up = [abs(p) * weight_sum > magnitude * w for p, w in zip(parts, weights, strict=True)]
    remainders = [(magnitude * w) % weight_sum for w in weights]
    for i, up in enumerate(rounded_up):
        for j, other_up in enumerate(rounded_up):
            if up and not other_up:
                # i got an extra unit, j did not: i's remainder is larger, or equal with i earlier
                assert remainders[i] > remainders[j] or (remainders[i] == remainders[j] and i < j)


def test_allocate_examples():
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(-100, [1, 1, 1]) == [-34, -33, -33]
    assert allocate(5, [0, 1, 0, 1]) == [0, 3, 0, 2]
    assert allocate(10, [3, 7]) == [3, 7]
    assert allocate(1, [1, 1]) == [1, 0]  # tie: earlier index first
    assert allocate(2, [1, 2, 2]) == [0, 1, 1]
    assert allocate(0, [5, 5]) == [0, 0]


@pytest.mark.parametrize(
    ("total", "weights"),
    [(100, []), (100, [0, 0]), (100, [1, -1]), (100, [1.5]), (100, [True]), (1.0, [1]), (True, [1])],
)
def test_allocate_refuses_bad_input(total, weights):
    with pytest.raises(ValidationError):
        allocate(total, weights)


@given(total=amounts, n=st.integers(min_value=1, max_value=50))
def test_split_evenly(total, n):
    parts = split_evenly(total, n)
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1
    assert sorted(parts, key=abs, reverse=True) == parts  # earlier parts take the extra units


def test_split_evenly_refuses_zero_parts():
    with pytest.raises(ValidationError):
        split_evenly(100, 0)


def test_money_allocate_and_split_keep_the_currency():
    assert Money(1000, "JPY").split_evenly(3) == [Money(334, "JPY"), Money(333, "JPY"), Money(333, "JPY")]
    assert Money(1000, "EUR").allocate([1, 3]) == [Money(250, "EUR"), Money(750, "EUR")]
