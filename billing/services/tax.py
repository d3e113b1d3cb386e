"""Which VAT applies to an invoice, and its per-rate breakdown (the arithmetic is `core.tax`).

- The rate is data (`TaxRate`): the market of the car (or, without a car, of the customer's
  billing country), the feature category of the line's offer (an offer whose features share one
  category; otherwise, and for lines without an offer, the market's "default" rate), valid at the
  invoice date. No rate configured: the line is "not subject to VAT" (category O, 0 %).
- Consumers' prices are gross (VAT included; the amount charged is the catalog price). A fleet
  may be billed net prices (`CustomerTaxProfile.prices_include_tax` off): VAT is added on top.
- Reverse charge: a fleet with a VAT id whose billing country is not the seller's is invoiced
  without VAT (category AE, 0 %): the buyer accounts for it. With gross prices it pays the same
  amount, all of it net.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Q

from billing.models import CustomerTaxProfile, Feature, TaxRate, VatCategory
from billing.models.tax import DEFAULT_CATEGORY
from core.tax import TaxableLine, TaxBreakdown, tax_breakdown
from vehicles.models import Owner, Vehicle

ZERO = Decimal(0)


@dataclass(frozen=True)
class Seller:
    """Us, as printed on every invoice and put in the e-invoice (settings.BILLING_SELLER)."""

    name: str = "Example Motors Digital Services GmbH"
    address_line: str = "Petuelring 130"
    postcode: str = "80809"
    city: str = "München"
    country: str = "DE"
    vat_id: str = "DE136695976"
    email: str = "billing@example.com"


def seller() -> Seller:
    return Seller(**getattr(settings, "BILLING_SELLER", {}))


@dataclass(frozen=True)
class LineTax:
    rate: Decimal
    vat_category: str
    tax_rate: TaxRate | None


@dataclass(frozen=True)
class InvoiceTax:
    """The VAT of an invoice about to be created: per line and per rate."""

    prices_include_tax: bool
    reverse_charge: bool
    buyer_vat_id: str
    lines: tuple[LineTax, ...]
    breakdown: TaxBreakdown

    def tax_rate_of(self, vat_category: str, rate: Decimal) -> TaxRate | None:
        for line in self.lines:
            if (line.vat_category, line.rate.normalize()) == (vat_category, rate.normalize()):
                return line.tax_rate
        return None


def tax_profile_of(owner: Owner) -> CustomerTaxProfile | None:
    return CustomerTaxProfile.objects.filter(owner_id=owner.pk).first()


def is_reverse_charge(*, owner: Owner, profile: CustomerTaxProfile | None) -> bool:
    """A business with a VAT id in another country than ours accounts for the VAT itself."""
    return (
        owner.kind == Owner.Kind.FLEET
        and profile is not None
        and bool(profile.vat_id)
        and owner.billing_country.upper() != seller().country
    )


def tax_rates_at(*, owner: Owner, vehicle: Vehicle | None, at: datetime) -> dict[str, TaxRate]:
    """Category -> the rate valid at `at` in the car's market (or the owner's country's)."""
    if vehicle is not None:
        where = Q(market_id=vehicle.market_id)
    else:
        where = Q(market__country=owner.billing_country)
    valid = TaxRate.objects.filter(where, Q(valid_to__isnull=True) | Q(valid_to__gt=at), valid_from__lte=at)
    rates: dict[str, TaxRate] = {}
    for rate in valid.order_by("-valid_from", "pk"):
        rates.setdefault(rate.category, rate)  # the latest start wins
    return rates


def offer_tax_categories(offer_ids: Sequence[int]) -> dict[int, str]:
    """Offer -> the feature category it is taxed in: its features' one category, else default."""
    if not offer_ids:
        return {}
    categories: dict[int, set[str]] = {}
    pairs = Feature.objects.filter(offers__in=set(offer_ids)).values_list("offers", "category")
    for offer_id, category in pairs:
        categories.setdefault(offer_id, set()).add(category)
    return {offer: next(iter(c)) if len(c) == 1 else DEFAULT_CATEGORY for offer, c in categories.items()}


class TaxLookups:
    """What `invoice_tax_compute` reads from the database, read once for a batch of invoices
    (the renewal sweep): tax profiles of the owners, rates per market and instant, categories
    per offer. Without one, every invoice reads its own."""

    def __init__(self, *, owner_ids: Iterable[int] = ()) -> None:
        self._profiles: dict[int, CustomerTaxProfile | None] = dict.fromkeys(owner_ids)
        for profile in CustomerTaxProfile.objects.filter(owner_id__in=list(self._profiles)):
            self._profiles[profile.owner_id] = profile
        self._rates: dict[tuple, dict[str, TaxRate]] = {}
        self._categories: dict[int, str] = {}

    def profile(self, owner: Owner) -> CustomerTaxProfile | None:
        if owner.pk not in self._profiles:
            self._profiles[owner.pk] = tax_profile_of(owner)
        return self._profiles[owner.pk]

    def rates(self, *, owner: Owner, vehicle: Vehicle | None, at: datetime) -> dict[str, TaxRate]:
        where = ("market", vehicle.market_id) if vehicle is not None else ("country", owner.billing_country)
        if (where, at) not in self._rates:
            self._rates[(where, at)] = tax_rates_at(owner=owner, vehicle=vehicle, at=at)
        return self._rates[(where, at)]

    def categories(self, offer_ids: Sequence[int]) -> dict[int, str]:
        missing = [offer_id for offer_id in offer_ids if offer_id not in self._categories]
        if missing:
            found = offer_tax_categories(missing)
            self._categories.update({offer_id: found.get(offer_id, DEFAULT_CATEGORY) for offer_id in missing})
        return {offer_id: self._categories[offer_id] for offer_id in offer_ids}


def invoice_tax_compute(
    *,
    owner: Owner,
    vehicle: Vehicle | None,
    lines: Sequence[tuple[int, int | None]],
    at: datetime,
    prices_include_tax: bool | None = None,
    lookups: TaxLookups | None = None,
) -> InvoiceTax:
    """The VAT of invoice lines given as (amount_minor, offer_id). `prices_include_tax` None:
    the customer's (gross for consumers; a fleet's tax profile may say net). `lookups`: the
    database reads shared by a batch of invoices."""
    lookups = lookups or TaxLookups()
    profile = lookups.profile(owner)
    if prices_include_tax is None:
        prices_include_tax = not (
            owner.kind == Owner.Kind.FLEET and profile is not None and not profile.prices_include_tax
        )
    reverse_charge = is_reverse_charge(owner=owner, profile=profile)
    if reverse_charge:
        line_taxes = tuple(LineTax(ZERO, VatCategory.REVERSE_CHARGE, None) for _ in lines)
    else:
        rates = lookups.rates(owner=owner, vehicle=vehicle, at=at)
        categories = lookups.categories([offer_id for _, offer_id in lines if offer_id is not None])
        line_taxes = tuple(
            _line_tax(rates, categories.get(offer_id, DEFAULT_CATEGORY) if offer_id else DEFAULT_CATEGORY)
            for _, offer_id in lines
        )
    breakdown = tax_breakdown(
        [
            TaxableLine(amount_minor=amount, rate=t.rate, category=t.vat_category)
            for (amount, _), t in zip(lines, line_taxes, strict=True)
        ],
        prices_include_tax=prices_include_tax,
    )
    return InvoiceTax(
        prices_include_tax=prices_include_tax,
        reverse_charge=reverse_charge,
        buyer_vat_id=profile.vat_id if profile is not None and owner.kind == Owner.Kind.FLEET else "",
        lines=line_taxes,
        breakdown=breakdown,
    )


def _line_tax(rates: dict[str, TaxRate], category: str) -> LineTax:
    rate = rates.get(category) or rates.get(DEFAULT_CATEGORY)
    if rate is None:
        return LineTax(ZERO, VatCategory.OUTSIDE_SCOPE, None)
    return LineTax(Decimal(rate.rate).normalize(), rate.vat_category, rate)
