"""The rounding policy, proration (R30), VAT rounding and Stripe amounts (R28)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.errors import ErrorCode, ValidationError
from core.money import CURRENCY_CODES, CURRENCY_EXPONENTS, Money, allocate
from core.periods import Interval, period_at
from core.rounding import (
    ROUNDING_MODE,
    chargeable_step,
    from_stripe_amount,
    prorate,
    prorate_between,
    round_minor,
    to_stripe_amount,
    upgrade_proration,
    vat_amount,
)

prices = st.integers(min_value=0, max_value=10**12)
YEAR_SECONDS = 366 * 24 * 3600


@st.composite
def part_and_whole(draw, max_whole=YEAR_SECONDS):
    whole = draw(st.integers(min_value=1, max_value=max_whole))
    return draw(st.integers(min_value=0, max_value=whole)), whole


# -- round_minor --------------------------------------------------------------------------------
def test_rounding_mode_is_half_up():
    assert ROUNDING_MODE == ROUND_HALF_UP


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("0.5"), 1),
        (Decimal("-0.5"), -1),
        (Decimal("2.5"), 3),
        (Decimal("-2.5"), -3),
        (Decimal("1.5"), 2),
        (Decimal("0.49999"), 0),
        (Decimal("-0.49999"), 0),
        (Decimal("2.4"), 2),
        (Decimal("2.6"), 3),
        (Fraction(1, 2), 1),
        (Fraction(-1, 2), -1),
        (Fraction(5, 2), 3),
        (Fraction(1, 3), 0),
        (Fraction(2, 3), 1),
        (Fraction(-2, 3), -1),
        (7, 7),
        (-7, -7),
        (0, 0),
    ],
)
def test_round_minor_examples(value, expected):
    assert round_minor(value) == expected


@given(st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**9), max_value=10**9))
def test_round_minor_matches_decimal_half_up(value):
    assert round_minor(value) == int(value.to_integral_value(rounding=ROUND_HALF_UP))
    assert round_minor(-value) == -round_minor(value)
    assert abs(round_minor(value) - Fraction(value)) <= Fraction(1, 2)


@pytest.mark.parametrize("value", [0.5, True, "1", None])
def test_round_minor_refuses_floats_and_non_numbers(value):
    with pytest.raises(TypeError):
        round_minor(value)


def test_round_minor_refuses_nan():
    with pytest.raises(ValidationError):
        round_minor(Decimal("NaN"))


# -- prorate --------------------------------------------------------------------------------------
@given(amount=prices, pw=part_and_whole())
def test_prorate_is_within_zero_and_the_amount_and_near_exact(amount, pw):
    part, whole = pw
    result = prorate(amount, part_seconds=part, whole_seconds=whole)
    assert 0 <= result <= amount
    assert abs(result - Fraction(amount * part, whole)) <= Fraction(1, 2)
    assert prorate(-amount, part_seconds=part, whole_seconds=whole) == -result


@given(amount=prices, pw=part_and_whole(), extra=st.integers(min_value=0, max_value=YEAR_SECONDS))
def test_prorate_is_monotonic_in_remaining_time(amount, pw, extra):
    part, whole = pw
    longer = min(whole, part + extra)
    assert prorate(amount, part_seconds=part, whole_seconds=whole) <= prorate(
        amount, part_seconds=longer, whole_seconds=whole
    )


@given(amount=prices, whole=st.integers(min_value=0, max_value=YEAR_SECONDS))
def test_prorate_zero_length_is_zero_and_full_is_the_amount(amount, whole):
    assert prorate(amount, part_seconds=0, whole_seconds=whole) == 0
    if whole:
        assert prorate(amount, part_seconds=whole, whole_seconds=whole) == amount


def test_prorate_examples():
    month = 30 * 24 * 3600
    assert prorate(999, part_seconds=month // 2, whole_seconds=month) == 500  # 499.5 -> 500
    assert prorate(1000, part_seconds=1, whole_seconds=3) == 333
    assert prorate(1000, part_seconds=2, whole_seconds=3) == 667


@pytest.mark.parametrize(("part", "whole"), [(-1, 10), (11, 10), (1, 0), (0, -1)])
def test_prorate_refuses_impossible_lengths(part, whole):
    with pytest.raises(ValueError):
        prorate(100, part_seconds=part, whole_seconds=whole)


def test_prorate_refuses_float_amounts():
    with pytest.raises(TypeError):
        prorate(9.99, part_seconds=1, whole_seconds=2)


@given(
    amount=prices,
    whole=st.integers(min_value=1, max_value=YEAR_SECONDS),
    cuts=st.lists(st.integers(min_value=0, max_value=YEAR_SECONDS), max_size=20),
)
def test_splitting_a_period_into_contiguous_parts_allocates_exactly_the_full_price(amount, whole, cuts):
    """R30: k contiguous parts of [0, whole) allocated by seconds sum exactly to the price."""
    boundaries = sorted({0, whole, *(c % whole for c in cuts)})
    lengths = [b - a for a, b in pairwise(boundaries)]
    assert sum(lengths) == whole
    parts = allocate(amount, lengths)
    assert sum(parts) == amount
    for part, length in zip(parts, lengths, strict=True):
        # each allocated part is within 1 of what prorating that part alone gives
        assert abs(part - prorate(amount, part_seconds=length, whole_seconds=whole)) <= 1


@given(old=prices, new=prices, pw=part_and_whole())
def test_upgrade_credit_plus_debit_is_the_prorated_difference(old, new, pw):
    """R30: credit + debit == difference of the two prices for the remaining time, +-1 per line."""
    part, whole = pw
    credit, debit = upgrade_proration(old, new, part_seconds=part, whole_seconds=whole)
    assert credit <= 0 <= debit
    assert credit == -prorate(old, part_seconds=part, whole_seconds=whole)
    assert debit == prorate(new, part_seconds=part, whole_seconds=whole)
    exact = Fraction((new - old) * part, whole)
    assert abs(credit + debit - exact) <= 1  # 1/2 per line, two lines
    diff = prorate(new - old, part_seconds=part, whole_seconds=whole)
    assert abs(credit + debit - diff) <= 1


# -- prorate_between ------------------------------------------------------------------------------
def test_prorate_between_counts_the_remaining_time():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2024, 1, 31, tzinfo=UTC)  # 30 days
    assert prorate_between(3000, period_start=start, period_end=end, at=start) == 3000
    assert prorate_between(3000, period_start=start, period_end=end, at=start + timedelta(days=10)) == 2000
    assert prorate_between(3000, period_start=start, period_end=end, at=end) == 0
    assert prorate_between(3000, period_start=start, period_end=end, at=end + timedelta(days=1)) == 0
    assert prorate_between(3000, period_start=start, period_end=end, at=start - timedelta(days=1)) == 3000


@given(
    amount=prices,
    anchor=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    offset=st.integers(min_value=0, max_value=40 * 24 * 3600),
    step=st.integers(min_value=1, max_value=40 * 24 * 3600),
)
def test_prorate_between_is_monotonic_over_a_real_period(amount, anchor, offset, step):
    period = period_at(anchor, Interval.MONTH, anchor)
    earlier = anchor + timedelta(seconds=offset)
    later = earlier + timedelta(seconds=step)
    kwargs = {"period_start": period.start, "period_end": period.end}
    before = prorate_between(amount, at=earlier, **kwargs)
    after = prorate_between(amount, at=later, **kwargs)
    assert 0 <= after <= before <= amount


def test_prorate_between_refuses_naive_and_empty_periods():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        prorate_between(
            100, period_start=start, period_end=start + timedelta(days=1), at=datetime(2024, 1, 1)
        )
    with pytest.raises(ValueError):
        prorate_between(100, period_start=start, period_end=start, at=start)


# -- VAT --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("net", "rate", "vat"),
    [
        (1000, Decimal("0.19"), 190),
        (999, Decimal("0.19"), 190),  # 189.81
        (50, Decimal("0.19"), 10),  # 9.5 -> 10 (half up)
        (-50, Decimal("0.19"), -10),  # credit note mirrors
        (1, Decimal("0.5"), 1),
        (12345, Decimal("0"), 0),
        (1000, Decimal("0.077"), 77),
    ],
)
def test_vat_amount_examples(net, rate, vat):
    assert vat_amount(net, rate) == vat


@given(
    net=st.integers(min_value=-(10**12), max_value=10**12),
    rate=st.decimals(min_value=0, max_value=Decimal("0.99"), places=4),
)
def test_vat_amount_is_the_exact_product_rounded_once(net, rate):
    vat = vat_amount(net, rate)
    assert abs(vat - Fraction(net) * Fraction(rate)) <= Fraction(1, 2)
    assert vat_amount(-net, rate) == -vat


@pytest.mark.parametrize("rate", [Decimal("19"), Decimal("1"), Decimal("-0.1")])
def test_vat_rate_must_be_a_fraction(rate):
    with pytest.raises(ValueError):
        vat_amount(100, rate)


def test_vat_rate_must_be_decimal():
    with pytest.raises(TypeError):
        vat_amount(100, 0.19)


# -- Stripe amounts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("money", "stripe"),
    [
        (Money(1200, "JPY"), 1200),  # zero-decimal: not x100
        (Money(999, "EUR"), 999),
        (Money(1250, "BHD"), 1250),  # three-decimal, last digit 0
        (Money(-1250, "KWD"), -1250),
        (Money(0, "OMR"), 0),
        (Money(5, "ISK"), 500),  # Stripe keeps ISK two-decimal
        (Money(500, "MGA"), 5),  # Stripe treats MGA as zero-decimal
    ],
)
def test_to_stripe_amount_examples(money, stripe):
    assert to_stripe_amount(money) == stripe
    assert from_stripe_amount(stripe, money.currency.lower()) == money


@pytest.mark.parametrize("money", [Money(1255, "BHD"), Money(1, "KWD"), Money(1259, "JOD"), Money(5, "TND")])
def test_to_stripe_amount_refuses_three_decimal_amounts_not_ending_in_zero(money):
    with pytest.raises(ValidationError) as err:
        to_stripe_amount(money)
    assert err.value.code == ErrorCode.INVALID_AMOUNT


def test_to_stripe_amount_refuses_fractions_stripe_cannot_express():
    with pytest.raises(ValidationError) as err:
        to_stripe_amount(Money(555, "MGA"))
    assert err.value.code == ErrorCode.INVALID_AMOUNT
    with pytest.raises(ValidationError):
        from_stripe_amount(550, "ISK")


@given(currency=st.sampled_from(CURRENCY_CODES), amount=st.integers(min_value=0, max_value=10**12))
def test_stripe_amounts_for_every_currency(currency, amount):
    """R28: never scaled by accident; three-decimal amounts end in 0; exact inverse."""
    if CURRENCY_EXPONENTS[currency] > 3:
        with pytest.raises(ValidationError):
            to_stripe_amount(Money(amount, currency))
        return
    if CURRENCY_EXPONENTS[currency] == 3:
        amount -= amount % 10
    if currency == "MGA":
        amount -= amount % 100
    money = Money(amount, currency)
    stripe = to_stripe_amount(money)
    if currency not in ("ISK", "MGA"):
        assert stripe == amount
    if CURRENCY_EXPONENTS[currency] == 3:
        assert stripe % 10 == 0
    assert from_stripe_amount(stripe, currency) == money


@given(amount=st.integers(min_value=1, max_value=10**9))
def test_to_stripe_amount_never_rounds_three_decimal_amounts(amount):
    assume(amount % 10)
    with pytest.raises(ValidationError):
        to_stripe_amount(Money(amount, "BHD"))


# -- prorations Stripe can move: three-decimal currencies -----------------------------------------
THREE_DECIMAL = ["BHD", "JOD", "KWD", "OMR", "TND"]


@pytest.mark.parametrize(
    ("currency", "step"), [("EUR", 1), ("JPY", 1), ("USD", 1), *((c, 10) for c in THREE_DECIMAL)]
)
def test_chargeable_step_per_currency(currency, step):
    assert chargeable_step(currency) == step


@given(
    currency=st.sampled_from(THREE_DECIMAL),
    tens=st.integers(min_value=0, max_value=10**8),
    pw=part_and_whole(),
)
def test_three_decimal_prorations_are_chargeable_and_within_the_amount(currency, tens, pw):
    """A price Stripe can charge (a multiple of 10 fils) prorates to an amount it can charge too."""
    part, whole = pw
    amount, step = tens * 10, chargeable_step(currency)
    prorated = prorate(amount, part_seconds=part, whole_seconds=whole, step=step)
    assert 0 <= prorated <= amount
    assert to_stripe_amount(Money(prorated, currency)) == prorated  # never refused
    assert abs(Fraction(prorated) - Fraction(amount * part, whole)) <= Fraction(step, 2)


@given(
    currency=st.sampled_from(THREE_DECIMAL),
    old=st.integers(min_value=0, max_value=10**7),
    new=st.integers(min_value=0, max_value=10**7),
    pw=part_and_whole(),
)
def test_three_decimal_upgrade_lines_are_chargeable_and_near_the_exact_difference(currency, old, new, pw):
    part, whole = pw
    step = chargeable_step(currency)
    credit, debit = upgrade_proration(old * 10, new * 10, part_seconds=part, whole_seconds=whole, step=step)
    assert credit % step == 0 and debit % step == 0
    exact = Fraction((new - old) * 10 * part, whole)
    assert abs(Fraction(credit + debit) - exact) <= step  # half a step per line
