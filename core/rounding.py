"""The one rounding policy: every conversion of an exact amount to minor units goes through here.

Policy: compute exactly (`Fraction` on integer minor units and whole seconds), then round ONCE per
line with `ROUNDING_MODE` = ROUND_HALF_UP, which in Python's `decimal` means half AWAY FROM ZERO
(0.5 -> 1, -0.5 -> -1, 2.5 -> 3): the commercial rounding of EN 16931 / most EU tax authorities,
and symmetric, so a credit line is exactly the negation of the matching debit line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from core.errors import ErrorCode, ValidationError
from core.money import CURRENCY_EXPONENTS, Money, validate_currency

ROUNDING_MODE = ROUND_HALF_UP  # half away from zero; see the module docstring

_ONE_SECOND = timedelta(seconds=1)


def _exact(value: Fraction | Decimal | int) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Fraction | Decimal | int):
        raise TypeError(f"Expected Fraction, Decimal or int, not {type(value).__name__}.")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValidationError(f"{value} is not a finite amount.", code=ErrorCode.INVALID_AMOUNT)
    return Fraction(value)


def round_minor(value: Fraction | Decimal | int) -> int:
    """Round an exact amount of minor units to an integer, half away from zero (`ROUNDING_MODE`)."""
    exact = _exact(value)
    whole, remainder = divmod(abs(exact.numerator), exact.denominator)  # denominator > 0
    if 2 * remainder >= exact.denominator:
        whole += 1
    return -whole if exact < 0 else whole


def prorate(amount_minor: int, *, part_seconds: int, whole_seconds: int, step: int = 1) -> int:
    """`amount_minor * part_seconds / whole_seconds`, exact, rounded once to a multiple of `step`.

    `step` is the smallest amount the payment provider can move in the currency
    (`chargeable_step`: 10 for three-decimal currencies), so a prorated line can always be
    charged or refunded; with an amount that is a multiple of `step` the result stays in range.

    For a non-negative amount the result lies in [0, amount] and never decreases as
    `part_seconds` grows; `part_seconds == 0` (or a zero-length period) gives 0 and the
    full period gives the full amount. Negative amounts are symmetric: prorate(-a) == -prorate(a).
    """
    for name, value in (("amount_minor", amount_minor), ("part_seconds", part_seconds)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}.")
    if isinstance(whole_seconds, bool) or not isinstance(whole_seconds, int):
        raise TypeError(f"whole_seconds must be an int, not {type(whole_seconds).__name__}.")
    if whole_seconds < 0 or not 0 <= part_seconds <= whole_seconds:
        raise ValueError(f"Need 0 <= part_seconds ({part_seconds}) <= whole_seconds ({whole_seconds}).")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int, not {step!r}.")
    if part_seconds == 0:
        return 0
    return round_minor(Fraction(amount_minor * part_seconds, whole_seconds * step)) * step


def _whole_seconds(delta: timedelta) -> int:
    return delta // _ONE_SECOND


def _require_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime.")


def prorate_between(
    amount_minor: int, *, period_start: datetime, period_end: datetime, at: datetime, step: int = 1
) -> int:
    """The share of `amount_minor` for the time REMAINING from `at` to the end of `[start, end)`.

    `at` before the start counts the whole period, at/after the end nothing. Time is counted in
    whole seconds (Stripe prorates to the second); sub-second parts are dropped.
    """
    for name, value in (("period_start", period_start), ("period_end", period_end), ("at", at)):
        _require_aware(name, value)
    if period_end <= period_start:
        raise ValueError("period_end must be after period_start.")
    clamped = min(max(at, period_start), period_end)
    return prorate(
        amount_minor,
        part_seconds=_whole_seconds(period_end - clamped),
        whole_seconds=_whole_seconds(period_end - period_start),
        step=step,
    )


def upgrade_proration(
    old_amount_minor: int, new_amount_minor: int, *, part_seconds: int, whole_seconds: int, step: int = 1
) -> tuple[int, int]:
    """(credit, debit) lines for switching price for the remaining `part_seconds`.

    credit = -prorate(old), debit = prorate(new); each line is rounded once, so
    credit + debit is within 1 minor unit of the exact difference (1/2 per line).
    """
    credit = -prorate(old_amount_minor, part_seconds=part_seconds, whole_seconds=whole_seconds, step=step)
    debit = prorate(new_amount_minor, part_seconds=part_seconds, whole_seconds=whole_seconds, step=step)
    return credit, debit


def vat_amount(net_minor: int, rate: Decimal) -> int:
    """VAT on `net_minor` at `rate` (a fraction: Decimal("0.19") for 19%), rounded once.

    Apply it to the sum of the nets of one rate (EN 16931 BR-CO-17 style), not per line.
    A rate outside [0, 1) is refused: "19" instead of "0.19" is a configuration mistake.
    """
    if isinstance(net_minor, bool) or not isinstance(net_minor, int):
        raise TypeError(f"net_minor must be an int, not {type(net_minor).__name__}.")
    if not isinstance(rate, Decimal):
        raise TypeError(f"rate must be a Decimal, not {type(rate).__name__}.")
    exact_rate = _exact(rate)
    if not 0 <= exact_rate < 1:
        raise ValueError(f"VAT rate {rate} must be a fraction in [0, 1), e.g. Decimal('0.19').")
    return round_minor(net_minor * exact_rate)


# -- Stripe amounts -----------------------------------------------------------------------------
# Stripe's `amount` is in the currency's smallest unit as STRIPE defines it, which is the ISO 4217
# minor unit except for these (https://docs.stripe.com/currencies, "special cases"):
#   - ISK: ISO exponent 0, but Stripe keeps it two-decimal ("100" = 1 krona, whole kronur only);
#   - MGA: ISO exponent 2, but Stripe treats it as zero-decimal.
# Zero-decimal currencies (JPY, KRW, ...) are therefore sent as-is, never x100.
STRIPE_EXPONENT_OVERRIDES = {"ISK": 2, "MGA": 0}
# Three-decimal currencies (BHD, JOD, KWD, OMR, TND, ...): Stripe accepts the 3-decimal amount but
# its payment partners need the least-significant digit to be 0. We refuse instead of rounding:
# silently charging 1 fils more or less than the invoice says would break reconciliation
# (Stripe amount == our invoice total). Price three-decimal amounts in multiples of 10.
THREE_DECIMAL_STEP = 10


def _stripe_exponent(currency: str) -> int:
    iso = CURRENCY_EXPONENTS[currency]
    stripe = STRIPE_EXPONENT_OVERRIDES.get(currency, iso)
    if stripe > 3:
        raise ValidationError(
            f"{currency} cannot be charged through Stripe.", code=ErrorCode.INVALID_CURRENCY
        )
    return stripe


def chargeable_step(currency: str) -> int:
    """The smallest number of minor units Stripe can move in `currency`: 10 for three-decimal
    currencies (BHD, JOD, KWD, OMR, TND), 100 for MGA, 1 otherwise. Prorations round to it."""
    iso = CURRENCY_EXPONENTS[validate_currency(currency)]
    stripe = _stripe_exponent(currency)
    if stripe == 3:
        return THREE_DECIMAL_STEP
    return 10 ** (iso - stripe) if stripe < iso else 1


def to_stripe_amount(money: Money) -> int:
    """The integer `amount` Stripe expects for `money` (exact, or `invalid_amount`)."""
    if not isinstance(money, Money):
        raise TypeError(f"Expected Money, not {type(money).__name__}.")
    iso = CURRENCY_EXPONENTS[money.currency]
    stripe = _stripe_exponent(money.currency)
    if stripe == 3 and money.amount_minor % THREE_DECIMAL_STEP:
        raise ValidationError(
            f"{money} cannot be charged: Stripe needs {money.currency} amounts ending in 0.",
            code=ErrorCode.INVALID_AMOUNT,
            details={"amount_minor": money.amount_minor, "currency": money.currency},
        )
    if stripe >= iso:
        return money.amount_minor * 10 ** (stripe - iso)
    step = 10 ** (iso - stripe)
    if money.amount_minor % step:
        raise ValidationError(
            f"{money} has a fraction Stripe cannot charge in {money.currency}.",
            code=ErrorCode.INVALID_AMOUNT,
            details={"amount_minor": money.amount_minor, "currency": money.currency},
        )
    return money.amount_minor // step


def from_stripe_amount(amount: int, currency: str) -> Money:
    """Inverse of `to_stripe_amount`: Stripe's integer `amount` (any case currency) as `Money`."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int, not {type(amount).__name__}.")
    currency = validate_currency(currency)
    iso = CURRENCY_EXPONENTS[currency]
    stripe = _stripe_exponent(currency)
    if stripe <= iso:
        return Money(amount * 10 ** (iso - stripe), currency)
    step = 10 ** (stripe - iso)
    if amount % step:
        raise ValidationError(
            f"Stripe amount {amount} {currency} has a fraction below our minor unit.",
            code=ErrorCode.INVALID_AMOUNT,
        )
    return Money(amount // step, currency)
