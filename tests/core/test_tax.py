"""VAT per rate, computed once on the sum of the lines of that rate (EN 16931 BR-CO-17): the
invoice and credit-note figures reconcile to the minor unit in EUR, JPY and BHD."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import CURRENCY_EXPONENTS
from core.rounding import round_minor
from core.tax import RateTotal, TaxableLine, credit_breakdown, tax_breakdown, vat_included

CURRENCIES = ("EUR", "JPY", "BHD")
RATES = [Decimal(r) for r in ("0", "0.05", "0.055", "0.07", "0.1", "0.16", "0.19", "0.2", "0.21", "0.255")]
CATEGORIES = ("S", "Z", "AE")


@st.composite
def invoices(draw, *, allow_credits: bool = True):
    """(currency, lines): up to 8 lines, amounts up to 100,000 major units in the currency's
    minor units (BHD fils, JPY yen, EUR cents), some of them negative (proration credits)."""
    currency = draw(st.sampled_from(CURRENCIES))
    top = 100_000 * 10 ** CURRENCY_EXPONENTS[currency]
    low = -top if allow_credits else 0
    lines = draw(
        st.lists(
            st.builds(
                TaxableLine,
                amount_minor=st.integers(min_value=low, max_value=top),
                rate=st.sampled_from(RATES),
                category=st.sampled_from(CATEGORIES),
            ),
            min_size=1,
            max_size=8,
        )
    )
    return currency, lines


def _as_decimal(amount_minor: int, currency: str) -> Decimal:
    return Decimal(amount_minor).scaleb(-CURRENCY_EXPONENTS[currency])


@given(invoices(), st.booleans())
def test_per_rate_and_invoice_totals_reconcile_to_the_minor_unit(invoice, prices_include_tax):
    currency, lines = invoice
    result = tax_breakdown(lines, prices_include_tax=prices_include_tax)

    for rate in result.rates:
        assert rate.net_minor + rate.tax_minor == rate.gross_minor
    assert result.net_minor == sum(r.net_minor for r in result.rates)
    assert result.tax_minor == sum(r.tax_minor for r in result.rates)
    assert result.gross_minor == result.net_minor + result.tax_minor
    # the amounts as printed in the currency add up exactly as well
    assert _as_decimal(result.net_minor, currency) + _as_decimal(result.tax_minor, currency) == _as_decimal(
        result.gross_minor, currency
    )
    entered = sum(line.amount_minor for line in lines)
    if prices_include_tax:
        assert result.gross_minor == entered  # the amount charged does not change because of tax
    else:
        assert result.net_minor == entered


@given(invoices(), st.booleans())
def test_vat_is_computed_once_per_rate_on_the_sum_of_its_lines(invoice, prices_include_tax):
    _, lines = invoice
    result = tax_breakdown(lines, prices_include_tax=prices_include_tax)

    assert len({(r.category, r.rate) for r in result.rates}) == len(result.rates)
    for rate in result.rates:
        of_rate = [
            line.amount_minor
            for line in lines
            if (line.category, line.rate.normalize()) == (rate.category, rate.rate)
        ]
        exact_rate = Fraction(rate.rate)
        if prices_include_tax:
            assert rate.gross_minor == sum(of_rate)
            assert rate.tax_minor == round_minor(sum(of_rate) * exact_rate / (1 + exact_rate))
            # BR-CO-17: the VAT is the rate of the taxable amount, within EN 16931's one-unit tolerance
            assert abs(round_minor(rate.net_minor * exact_rate) - rate.tax_minor) <= 1
        else:
            assert rate.net_minor == sum(of_rate)
            assert rate.tax_minor == round_minor(sum(of_rate) * exact_rate)


@given(invoices(), st.booleans())
def test_line_nets_sum_to_their_rate_net_and_stay_within_a_unit_of_exact(invoice, prices_include_tax):
    _, lines = invoice
    result = tax_breakdown(lines, prices_include_tax=prices_include_tax)

    for rate in result.rates:
        members = [
            i
            for i, line in enumerate(lines)
            if (line.category, line.rate.normalize()) == (rate.category, rate.rate)
        ]
        assert sum(result.line_nets[i] for i in members) == rate.net_minor  # BR-CO-10 on the e-invoice
        for i in members:
            exact = Fraction(lines[i].amount_minor)
            if prices_include_tax:
                exact /= 1 + Fraction(rate.rate)
            assert abs(result.line_nets[i] - exact) < 1


@pytest.mark.parametrize(
    ("currency", "gross", "rate", "tax"),
    [
        ("EUR", 999, "0.19", 160),  # 9.99 incl. 19 %: 1.595 VAT -> 1.60
        ("EUR", 1999, "0.2", 333),
        ("JPY", 1200, "0.1", 109),  # 1,200 yen incl. 10 %: 109.09
        ("BHD", 5250, "0.1", 477),  # 5.250 BHD incl. 10 %: 0.47727
    ],
)
def test_vat_included_in_a_gross_price(currency, gross, rate, tax):
    assert vat_included(gross, Decimal(rate)) == tax


def test_an_invoice_with_two_rates_has_one_breakdown_per_rate():
    lines = [
        TaxableLine(999, Decimal("0.19")),
        TaxableLine(1999, Decimal("0.19")),
        TaxableLine(500, Decimal("0.07")),
    ]
    result = tax_breakdown(lines, prices_include_tax=True)

    assert result.rates == (
        RateTotal("S", Decimal("0.19"), net_minor=2519, tax_minor=479, gross_minor=2998),
        RateTotal("S", Decimal("0.07"), net_minor=467, tax_minor=33, gross_minor=500),
    )
    # per line the VAT would have been 160 + 319 + 33 = 512: rounding once per rate gives 479 + 33
    assert (result.net_minor, result.tax_minor, result.gross_minor) == (2986, 512, 3498)


def test_a_rate_given_as_a_percentage_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        tax_breakdown([TaxableLine(100, Decimal("19"))], prices_include_tax=True)


@st.composite
def credits(draw):
    currency, lines = draw(invoices(allow_credits=False))
    invoice = tax_breakdown(lines, prices_include_tax=draw(st.booleans()))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=max(invoice.gross_minor, 0)), max_size=4))
    return currency, invoice, sorted(set(cuts))


@given(credits())
def test_credit_notes_that_refund_everything_give_back_exactly_each_rate(case):
    """Refunded in any number of pieces, the credit notes add up to the invoice, rate by rate."""
    _, invoice, cuts = case
    remaining = list(invoice.rates)
    total = invoice.gross_minor
    bounds = [0, *cuts, total]
    for start, end in pairwise(bounds):
        if end == start:
            continue
        note = credit_breakdown(end - start, remaining)
        assert sum(r.gross_minor for r in note) == end - start
        for r in note:
            assert r.net_minor + r.tax_minor == r.gross_minor
        credited = {(r.category, r.rate): r for r in note}
        remaining = [
            RateTotal(
                r.category,
                r.rate,
                r.net_minor - credited.get((r.category, r.rate), RateTotal("", r.rate, 0, 0, 0)).net_minor,
                r.tax_minor - credited.get((r.category, r.rate), RateTotal("", r.rate, 0, 0, 0)).tax_minor,
                r.gross_minor
                - credited.get((r.category, r.rate), RateTotal("", r.rate, 0, 0, 0)).gross_minor,
            )
            for r in remaining
        ]
    assert all((r.net_minor, r.tax_minor, r.gross_minor) == (0, 0, 0) for r in remaining)


def test_a_credit_larger_than_what_is_left_is_refused():
    invoice = tax_breakdown([TaxableLine(1000, Decimal("0.19"))], prices_include_tax=True)
    with pytest.raises(ValueError, match="left"):
        credit_breakdown(1001, invoice.rates)
