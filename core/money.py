"""Money: integer minor units plus an ISO 4217 currency.

The one exponent table comes from the maintained `iso4217` package (ISO 4217 data).
"""

from __future__ import annotations

from types import MappingProxyType

from iso4217 import Currency

from core.errors import ErrorCode, ValidationError

CURRENCY_EXPONENTS = MappingProxyType({c.code: c.exponent for c in Currency if c.exponent is not None})
CURRENCY_CODES: tuple[str, ...] = tuple(sorted(CURRENCY_EXPONENTS))


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
