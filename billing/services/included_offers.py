"""Offers included with a new car, counted from the vehicle's delivery date."""

from __future__ import annotations

from django.db import transaction

from billing.models import Entitlement, Offer
from billing.services.catalog import feature_incompatibilities
from billing.services.entitlements import entitlements_grant_included
from core.periods import Interval, add_interval
from vehicles.models import Vehicle


def vehicle_included_offers_grant(*, vehicle: Vehicle) -> list[Entitlement]:
    """Grant every compatible included offer for `[delivered_at, delivered_at + N months)`.
    Idempotent: run it at delivery, again after a catalog change; existing rows are kept."""
    if vehicle.delivered_at is None:
        return []
    capability_codes = {c.code for c in vehicle.capabilities.all()}
    granted: list[Entitlement] = []
    offers = Offer.objects.filter(is_active=True, included_months_with_new_car__gt=0).prefetch_related(
        "features__required_capabilities", "features__markets"
    )
    with transaction.atomic():
        for offer in offers:
            features = list(offer.features.all())
            if any(
                feature_incompatibilities(feature=f, vehicle=vehicle, capability_codes=capability_codes)
                for f in features
            ):
                continue
            ends_at = add_interval(
                vehicle.delivered_at, interval=Interval.MONTH, count=offer.included_months_with_new_car
            )
            granted += entitlements_grant_included(
                vehicle=vehicle, offer=offer, starts_at=vehicle.delivered_at, ends_at=ends_at
            )
    return granted
