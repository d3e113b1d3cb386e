"""Catalog rules: can this vehicle use a feature, what does an offer cost in its market."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from django.db.models import Prefetch, QuerySet
from packaging.version import InvalidVersion, Version

from billing.models import Feature, Offer, Price
from core.errors import BusinessRuleViolation, ErrorCode, NotFound
from vehicles.models import Vehicle

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _MarketPrices(TypedDict):
        market_prices: list[Price]  # Prefetch(to_attr=...): the market's prices, newest version first

    OfferWithPrices = WithAnnotations[Offer, _MarketPrices]


@dataclass(frozen=True)
class Incompatibility:
    feature: str
    reason: str


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def feature_incompatibilities(
    *, feature: Feature, vehicle: Vehicle, capability_codes: set[str]
) -> list[Incompatibility]:
    """Why `vehicle` cannot use `feature` (empty: it can). Uses prefetched relations."""
    problems = []
    missing = {c.code for c in feature.required_capabilities.all()} - capability_codes
    if missing:
        problems.append(Incompatibility(feature.code, f"missing hardware: {', '.join(sorted(missing))}"))
    markets = {m.pk for m in feature.markets.all()}
    if markets and vehicle.market_id not in markets:
        problems.append(Incompatibility(feature.code, "not sold in this vehicle's market"))
    if feature.min_software_version:
        needed, have = _version(feature.min_software_version), _version(vehicle.software_version)
        if needed is not None and (have is None or have < needed):
            problems.append(
                Incompatibility(
                    feature.code, f"needs software {feature.min_software_version} or newer (update the car)"
                )
            )
    return problems


def offers_with_catalog_prefetch(*, market_id: int, at: datetime) -> QuerySet[OfferWithPrices]:
    """Active offers with everything the compatibility check and pricing need, in 4 queries."""
    prices = Price.objects.filter(market_id=market_id, valid_from__lte=at).order_by("-version")
    offers: QuerySet[OfferWithPrices] = (
        Offer.objects.filter(is_active=True)
        .prefetch_related(
            Prefetch(
                "features", queryset=Feature.objects.prefetch_related("required_capabilities", "markets")
            ),
            Prefetch("prices", queryset=prices, to_attr="market_prices"),
        )
        .order_by("code")
    )
    return offers


def offer_for_vehicle(*, vehicle: Vehicle, offer_code: str, at: datetime) -> tuple[Offer, Price]:
    """The offer and its current price in the vehicle's market; raises when not sellable."""
    offer = offers_with_catalog_prefetch(market_id=vehicle.market_id, at=at).filter(code=offer_code).first()
    if offer is None:
        raise NotFound(f"No active offer '{offer_code}'.", details={"offer": offer_code})
    capability_codes = {c.code for c in vehicle.capabilities.all()}
    problems = [
        p
        for feature in offer.features.all()
        for p in feature_incompatibilities(
            feature=feature, vehicle=vehicle, capability_codes=capability_codes
        )
    ]
    if problems:
        raise BusinessRuleViolation(
            f"This vehicle cannot use '{offer_code}'.",
            code=ErrorCode.FEATURE_INCOMPATIBLE,
            details={"reasons": [f"{p.feature}: {p.reason}" for p in problems]},
        )
    if not offer.market_prices:
        raise BusinessRuleViolation(
            f"'{offer_code}' has no price in market {vehicle.market.code}.", code=ErrorCode.OFFER_UNAVAILABLE
        )
    return offer, offer.market_prices[0]
