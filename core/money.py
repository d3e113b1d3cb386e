"""Money: integer minor units plus an ISO 4217 currency.

The one exponent table comes from the maintained `iso4217` package (ISO 4217 data).
No floats anywhere: amounts are `int` minor units; exact arithmetic uses `Fraction`/`Decimal`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType

from iso4217 import Currency

from core.errors import ErrorCode, ValidationError

CURRENCY_EXPONENTS = MappingProxyType({c.code: c.exponent for c in Currency if c.exponent is not None})
CURRENCY_CODES: tuple[str, ...] = tuple(sorted(CURRENCY_EXPONENTS))

# Longest amount text we parse; far beyond any real price, short enough to refuse junk cheaply.
_MAX_AMOUNT_TEXT = 64
_AMOUNT_RE = re.compile(
    r"(?:(?P<code>[A-Za-z]{3})\s+)?"  # optional currency code, as `format_money` writes it
    r"(?P<sign>[-+]?)"
    r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"  # plain digits, or correctly grouped thousands
    r"(?:\.(?P<fraction>[0-9]+))?",
    re.ASCII,
)


def validate_currency(code: str) -> str:
    """Return the upper-case ISO 4217 code, or raise `invalid_currency`."""
    normalized = (code or "").strip().upper()
    if normalized not in CURRENCY_EXPONENTS:
        raise ValidationError(f"'{code}' is not an ISO 4217 currency code.", code=ErrorCode.INVALID_CURRENCY)
    return normalized


def exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS[validate_currency(currency)]


def format_money(amount_minor: int, currency: str) -> str:
    """`EUR 9.99`, `JPY 1,200`, `BHD -1.250`: code, grouped digits, the currency's exponent."""
    places = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**places)
    text = f"{whole:,}"
    if places:
        text += f".{fraction:0{places}d}"
    return f"{currency.upper()} {sign}{text}"


def _require_int(value: object, *, what: str = "amount_minor") -> int:
    """An `int` that is not a `bool` (True + True == 2 is not money)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"{what} must be an integer number of minor units, not {type(value).__name__}.",
            code=ErrorCode.INVALID_AMOUNT,
        )
    return int(value)


def _mismatch(left: Money, right: object) -> ValidationError:
    other = right.currency if isinstance(right, Money) else type(right).__name__
    return ValidationError(
        f"Cannot combine {left.currency} with {other}.",
        code=ErrorCode.CURRENCY_MISMATCH,
        details={"currencies": [left.currency, other]},
    )


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of one ISO 4217 currency (`Money(999, "EUR")` is EUR 9.99).

    `+`, `-` and ordering work only between the same currency (else `currency_mismatch`);
    `==` between different currencies is simply False.
    """

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount_minor", _require_int(self.amount_minor))
        if not isinstance(self.currency, str):
            raise ValidationError("currency must be a string.", code=ErrorCode.INVALID_CURRENCY)
        object.__setattr__(self, "currency", validate_currency(self.currency))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def from_decimal(cls, value: Decimal, currency: str) -> Money:
        """`Decimal("9.99")`, EUR -> 999 minor units; refuses (`invalid_amount`) what is not exact."""
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValidationError("Expected a finite Decimal amount.", code=ErrorCode.INVALID_AMOUNT)
        scaled = Fraction(value) * 10 ** exponent(currency)
        if scaled.denominator != 1:
            raise ValidationError(
                f"{value} has more decimals than {validate_currency(currency)} allows.",
                code=ErrorCode.INVALID_AMOUNT,
            )
        return cls(scaled.numerator, currency)

    def to_decimal(self) -> Decimal:
        """Exact major-unit value: `Money(999, "EUR").to_decimal() == Decimal("9.99")`."""
        digits = tuple(int(d) for d in str(abs(self.amount_minor)))
        return Decimal((int(self.amount_minor < 0), digits, -exponent(self.currency)))

    @property
    def exponent(self) -> int:
        return CURRENCY_EXPONENTS[self.currency]

    # -- arithmetic -----------------------------------------------------------------------------
    def _same(self, other: object) -> Money:
        if not isinstance(other, Money) or other.currency != self.currency:
            raise _mismatch(self, other)
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount_minor + self._same(other).amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount_minor - self._same(other).amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount_minor), self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount_minor < self._same(other).amount_minor

    def __le__(self, other: Money) -> bool:
        return self.amount_minor <= self._same(other).amount_minor

    def __gt__(self, other: Money) -> bool:
        return self.amount_minor > self._same(other).amount_minor

    def __ge__(self, other: Money) -> bool:
        return self.amount_minor >= self._same(other).amount_minor

    def allocate(self, weights: Sequence[int]) -> list[Money]:
        return [Money(part, self.currency) for part in allocate(self.amount_minor, weights)]

    def split_evenly(self, n: int) -> list[Money]:
        return [Money(part, self.currency) for part in split_evenly(self.amount_minor, n)]

    def __str__(self) -> str:
        return format_money(self.amount_minor, self.currency)


def money_sum(items: Iterable[Money], *, currency: str) -> Money:
    """Sum of `items` (all in `currency`); an empty sum is zero in `currency`."""
    total = Money.zero(currency)
    for item in items:
        total = total + item
    return total


def parse_money(text: str, currency: str) -> Money:
    """Parse `"9.99"`, `"1,200"`, `"-1.250"` or `format_money` output (`"EUR 9.99"`) into `Money`.

    Refuses (`invalid_amount`) junk and more decimals than the currency's exponent: "9.999" EUR
    is a typo, not something to round. A leading code other than `currency` is `currency_mismatch`.
    """
    currency = validate_currency(currency)
    if not isinstance(text, str) or len(text) > _MAX_AMOUNT_TEXT:
        raise ValidationError("Not an amount.", code=ErrorCode.INVALID_AMOUNT)
    match = _AMOUNT_RE.fullmatch(text.strip())
    if match is None:
        raise ValidationError(f"'{text}' is not an amount.", code=ErrorCode.INVALID_AMOUNT)
    code = match["code"]
    if code is not None and code.upper() != currency:
        raise ValidationError(
            f"'{text}' is in {code.upper()}, expected {currency}.",
            code=ErrorCode.CURRENCY_MISMATCH,
            details={"currencies": [code.upper(), currency]},
        )
    places = CURRENCY_EXPONENTS[currency]
    fraction = match["fraction"] or ""
    if len(fraction) > places:
        raise ValidationError(
            f"'{text}' has more than {places} decimal(s), the limit for {currency}.",
            code=ErrorCode.INVALID_AMOUNT,
            details={"exponent": places},
        )
    magnitude = int(match["whole"].replace(",", "")) * 10**places + int(fraction.ljust(places, "0") or "0")
    return Money(-magnitude if match["sign"] == "-" else magnitude, currency)


def allocate(total_minor: int, weights: Sequence[int]) -> list[int]:
    """Split `total_minor` in proportion to non-negative integer `weights` (largest remainder).

    The parts sum exactly to the total and each is within 1 of its exact share. Units left after
    taking each share's floor go to the largest remainders; ties go to the earlier index. A
    negative total is allocated as its magnitude and negated, so `allocate(-t, w) == -allocate(t, w)`
    (a credit mirrors its debit). Zero weights get 0; all-zero weights are refused.
    """
    total = _require_int(total_minor, what="total_minor")
    weights = [_require_int(w, what="weight") for w in weights]
    if not weights:
        raise ValidationError("At least one weight is required.", code=ErrorCode.VALIDATION_ERROR)
    if any(w < 0 for w in weights):
        raise ValidationError("Weights must not be negative.", code=ErrorCode.VALIDATION_ERROR)
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValidationError("Weights must not all be zero.", code=ErrorCode.VALIDATION_ERROR)

    magnitude = abs(total)
    shares = [divmod(magnitude * w, weight_sum) for w in weights]
    parts = [floor for floor, _ in shares]
    leftover = magnitude - sum(parts)  # < number of non-zero remainders, so zero weights stay 0
    by_remainder = sorted(range(len(weights)), key=lambda i: (-shares[i][1], i))
    for i in by_remainder[:leftover]:
        parts[i] += 1
    return [-p for p in parts] if total < 0 else parts


def split_evenly(total_minor: int, n: int) -> list[int]:
    """`n` near-equal parts summing to `total_minor`; the earlier parts take the extra units."""
    if _require_int(n, what="n") < 1:
        raise ValidationError("Cannot split into fewer than one part.", code=ErrorCode.VALIDATION_ERROR)
    return allocate(total_minor, [1] * n)
