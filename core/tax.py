"""The one VAT computation of invoices and credit notes: per rate, once, reconciling exactly.

EN 16931 (BR-CO-17) wants the VAT of each VAT category and rate computed ONCE on the sum of the
lines of that rate, never per line and then summed. Two pricing modes, both rounding half away
from zero through `core.rounding.round_minor`:

- **gross** (tax-inclusive; what consumers see and pay): the lines of a rate sum to `gross`;
  `vat = round(gross * rate / (1 + rate))`, `net = gross - vat`. The invoice total is exactly the
  sum of the lines, so the amount charged never changes because of tax.
- **net** (tax-exclusive; business price lists): the lines of a rate sum to `net`;
  `vat = round(net * rate)`, `gross = net + vat`.

In both, per rate `net + vat == gross`, and the invoice totals are the sums of the per-rate
figures (subtotal = sum of nets, tax = sum of VAT, total = sum of gross): they reconcile to the
minor unit by construction. Each line also gets its share of its rate's net (`line_nets`,
largest-remainder allocation), so the line nets of a rate sum exactly to that rate's net
(EN 16931 BR-CO-10 / BR-S-8 on the e-invoice). In gross mode `vat` may differ from
`round(net * rate)` by at most one minor unit (some gross amounts cannot be split otherwise);
EN 16931's check of BR-CO-17 tolerates that unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import floor

from core.rounding import round_minor, vat_amount


@dataclass(frozen=True)
class TaxableLine:
    """One invoice line: its amount (gross or net, per the invoice's mode), VAT rate and group.

    `category` is the EN 16931 VAT category code (S standard/reduced, Z zero, AE reverse charge,
    O outside the scope of VAT...). Lines of the same (category, rate) are taxed together.
    """

    amount_minor: int
    rate: Decimal
    category: str = "S"


@dataclass(frozen=True)
class RateTotal:
    category: str
    rate: Decimal
    net_minor: int
    tax_minor: int
    gross_minor: int


@dataclass(frozen=True)
class TaxBreakdown:
    rates: tuple[RateTotal, ...]
    line_nets: tuple[int, ...]  # in the order of the lines given
    net_minor: int
    tax_minor: int
    gross_minor: int


def _check_rate(rate: Decimal) -> None:
    if not isinstance(rate, Decimal):
        raise TypeError(f"rate must be a Decimal, not {type(rate).__name__}.")
    if not 0 <= rate < 1:
        raise ValueError(f"VAT rate {rate} must be a fraction in [0, 1), e.g. Decimal('0.19').")


def vat_included(gross_minor: int, rate: Decimal) -> int:
    """The VAT contained in a tax-inclusive `gross_minor` at `rate`, rounded once."""
    _check_rate(rate)
    exact_rate = Fraction(rate)
    return round_minor(Fraction(gross_minor) * exact_rate / (1 + exact_rate))


def _share_out(total_minor: int, weights: Sequence[int]) -> list[int]:
    """Split `total_minor` in proportion to `weights`: integers that sum exactly to the total.

    Like `core.money.allocate` (largest remainder, the earlier part first on a tie), but the
    weights may be negative (a rate whose credit lines outweigh its debits); they must not sum to
    zero. A weight of zero gets nothing.
    """
    whole = sum(Fraction(w) for w in weights)
    if not weights or whole == 0:
        raise ValueError("Cannot allocate over weights that sum to zero.")
    return _round_to_sum([Fraction(total_minor) * Fraction(w) / whole for w in weights], total_minor)


def _round_to_sum(exact: Sequence[Fraction], target: int) -> list[int]:
    """Round each exact value to an integer so that the integers sum to `target`, moving each
    value by less than one unit (`target` must be within len(exact) units of their floors)."""
    parts = [floor(value) for value in exact]
    left = target - sum(parts)
    if not 0 <= left <= len(parts):
        raise ValueError(f"Target {target} is not reachable from {list(exact)}.")
    by_fraction = sorted(range(len(parts)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_fraction[:left]:
        parts[i] += 1
    return parts


def tax_breakdown(lines: Sequence[TaxableLine], *, prices_include_tax: bool) -> TaxBreakdown:
    """Net, VAT and gross per (category, rate), computed once per rate; totals; line nets."""
    groups: dict[tuple[str, Decimal], list[int]] = {}
    for index, line in enumerate(lines):
        if isinstance(line.amount_minor, bool) or not isinstance(line.amount_minor, int):
            raise TypeError(f"amount_minor must be an int, not {type(line.amount_minor).__name__}.")
        _check_rate(line.rate)
        groups.setdefault((line.category, line.rate.normalize()), []).append(index)
    rates: list[RateTotal] = []
    line_nets = [0] * len(lines)
    for (category, rate), indexes in groups.items():
        amounts = [lines[i].amount_minor for i in indexes]
        total = sum(amounts)
        if prices_include_tax:
            gross, tax = total, vat_included(total, rate)
            net = gross - tax
            # each line's share of the rate's net: exact line net, rounded to sum to `net`
            exact_rate = Fraction(rate)
            for i, share in zip(
                indexes, _round_to_sum([a / (1 + exact_rate) for a in amounts], net), strict=True
            ):
                line_nets[i] = share
        else:
            net, tax = total, vat_amount(total, rate)
            gross = net + tax
            for i, amount in zip(indexes, amounts, strict=True):
                line_nets[i] = amount
        rates.append(RateTotal(category=category, rate=rate, net_minor=net, tax_minor=tax, gross_minor=gross))
    return TaxBreakdown(
        rates=tuple(rates),
        line_nets=tuple(line_nets),
        net_minor=sum(r.net_minor for r in rates),
        tax_minor=sum(r.tax_minor for r in rates),
        gross_minor=sum(r.gross_minor for r in rates),
    )


def credit_breakdown(amount_minor: int, remaining: Sequence[RateTotal]) -> tuple[RateTotal, ...]:
    """A refund of gross `amount_minor` split over the rates of an invoice, for a credit note.

    `remaining` is what is left to credit per rate (the invoice's rates minus earlier credit
    notes). The gross is allocated in proportion to the remaining gross of each rate; the VAT of
    a rate is the same share of its remaining VAT, rounded once, so crediting everything that is
    left gives back exactly the invoice's (remaining) net and VAT of every rate.
    """
    if amount_minor <= 0:
        raise ValueError("A credit note credits a positive amount.")
    left = sum(r.gross_minor for r in remaining)
    if amount_minor > left:
        raise ValueError(f"Cannot credit {amount_minor}: only {left} is left on the invoice.")
    grosses = _share_out(amount_minor, [r.gross_minor for r in remaining])
    credited = []
    for rate_total, gross in zip(remaining, grosses, strict=True):
        if gross == rate_total.gross_minor:
            tax = rate_total.tax_minor
        else:
            tax = round_minor(Fraction(rate_total.tax_minor * gross, rate_total.gross_minor))
        credited.append(
            RateTotal(
                category=rate_total.category,
                rate=rate_total.rate,
                net_minor=gross - tax,
                tax_minor=tax,
                gross_minor=gross,
            )
        )
    return tuple(r for r in credited if r.gross_minor or r.tax_minor)
