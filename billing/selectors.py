"""Read-only queries of the billing app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Q, QuerySet

from billing.models import (
    CreditNote,
    Entitlement,
    EntitlementSource,
    Invoice,
    Offer,
    Price,
    Subscription,
    TrialUsage,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from core.errors import NotFound
from vehicles.models import Vehicle
from vehicles.state_cache import LOCAL_MAX_AGE, LocalVersionedCache


@dataclass(frozen=True)
class ActiveFeature:
    """A feature a vehicle may use at an instant, with how long it stays valid (None: perpetual)."""

    code: str
    valid_until: datetime | None
    sources: tuple[str, ...]


def entitlements_active_at(*, vehicle_id, at: datetime) -> QuerySet[Entitlement]:
    """Rows whose half-open `[starts_at, ends_at)` contains `at`."""
    return Entitlement.objects.filter(vehicle_id=vehicle_id, starts_at__lte=at).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=at)
    )


def features_active_at(*, vehicle_id, at: datetime) -> list[ActiveFeature]:
    """Which features may this vehicle use at instant `at` — one query.

    A feature covered by several rows (a purchase and a grant, say) is valid until the latest
    of their ends. Back-to-back subscription periods are merged: a period starting exactly
    at the current period's end extends the validity, so the car sees no gap at renewal.
    """
    return features_snapshot(vehicle_id=vehicle_id, at=at)[0]


def features_snapshot(*, vehicle_id, at: datetime) -> tuple[list[ActiveFeature], datetime | None]:
    """`features_active_at` and the next instant at which the answer can change by itself
    (an entitlement starting or ending); None when no such instant is ahead."""
    rows = list(
        Entitlement.objects.filter(vehicle_id=vehicle_id)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
        .exclude(ends_at=F("starts_at"))  # ended before it began: covers no instant
        .values_list("feature__code", "source", "starts_at", "ends_at")
        .order_by("feature__code", "starts_at")
    )
    boundaries = [
        t for _, _, starts_at, ends_at in rows for t in (starts_at, ends_at) if t is not None and t > at
    ]
    return _merge_spans(rows, at), min(boundaries, default=None)


_hot_features = LocalVersionedCache()


def features_snapshot_cached(
    *, vehicle_id, version: str, at: datetime
) -> tuple[list[ActiveFeature], datetime | None]:
    """`features_snapshot` served from this process's hot copy while the vehicle's state stamp
    (`vehicles.state_cache`) is unchanged and no entitlement boundary has passed."""
    hit = _hot_features.get(vehicle_id, version)
    if hit is not None and (hit[1] is None or at < hit[1]):
        return hit
    snapshot = features_snapshot(vehicle_id=vehicle_id, at=at)
    next_change = snapshot[1]
    ttl = LOCAL_MAX_AGE if next_change is None else max(0, (next_change - at) // timedelta(seconds=1))
    _hot_features.put(vehicle_id, version, snapshot, ttl=ttl)
    return snapshot


def _merge_spans(rows, at: datetime) -> list[ActiveFeature]:
    by_code: dict[str, list[tuple[str, datetime, datetime | None]]] = {}
    for code, source, starts_at, ends_at in rows:
        by_code.setdefault(code, []).append((source, starts_at, ends_at))
    active = []
    for code, spans in by_code.items():
        covering = [s for s in spans if s[1] <= at]
        if not covering:
            continue
        until: datetime | None = at
        perpetual = any(end is None for _, _, end in covering)
        if not perpetual:
            until = max(end for _, _, end in covering if end is not None)  # none is None here
            for _, starts_at, ends_at in spans:  # chain contiguous later spans
                if starts_at <= until and (ends_at is None or ends_at > until):
                    until = ends_at
                    if until is None:
                        break
        active.append(
            ActiveFeature(
                code=code,
                valid_until=None if perpetual else until,
                sources=tuple(sorted({source for source, _, _ in covering})),
            )
        )
    return active


@dataclass(frozen=True)
class OfferForVehicle:
    """An offer this vehicle can use, priced in its market, with what the vehicle already has."""

    offer: Offer
    price: Price
    owned: bool  # every feature is the vehicle's for good
    subscribed: bool  # a live subscription to this offer exists for the vehicle
    included_until: datetime | None  # included with the car until then
    trial_available: bool


def offers_for_vehicle(*, vehicle: Vehicle, at: datetime) -> list[OfferForVehicle]:
    """Compatible, priced offers for one vehicle; a constant number of queries however large
    the catalog or the vehicle's history."""
    from billing.services.catalog import feature_incompatibilities, offers_with_catalog_prefetch

    capability_codes = {c.code for c in vehicle.capabilities.all()}
    active = list(
        entitlements_active_at(vehicle_id=vehicle.pk, at=at).values_list(
            "feature_id", "ends_at", "source", "offer_id"
        )
    )
    perpetual = {feature_id for feature_id, ends_at, _, _ in active if ends_at is None}
    included: dict[int, datetime] = {}
    for _, ends_at, source, offer_id in active:
        if source == EntitlementSource.INCLUDED and offer_id is not None:
            assert ends_at is not None  # an included offer runs for a number of months
            included[offer_id] = max(included.get(offer_id, ends_at), ends_at)
    live = set(
        Subscription.objects.filter(vehicle=vehicle, status__in=LIVE_SUBSCRIPTION_STATUSES).values_list(
            "offer_id", flat=True
        )
    )
    trialed = set(TrialUsage.objects.filter(vehicle=vehicle).values_list("feature_id", flat=True))
    result = []
    for offer in offers_with_catalog_prefetch(market_id=vehicle.market_id, at=at):
        features = list(offer.features.all())
        if not offer.market_prices or any(
            feature_incompatibilities(feature=f, vehicle=vehicle, capability_codes=capability_codes)
            for f in features
        ):
            continue
        feature_ids = {f.pk for f in features}
        result.append(
            OfferForVehicle(
                offer=offer,
                price=offer.market_prices[0],
                owned=feature_ids <= perpetual,
                subscribed=offer.pk in live,
                included_until=included.get(offer.pk),
                trial_available=offer.trial_days > 0 and not (feature_ids & trialed),
            )
        )
    return result


# -- invoice and credit-note documents (PDF, e-invoice) --------------------------------------------
def invoice_of_owner(*, owner, invoice_id) -> Invoice:
    """One of the owner's invoices with what its document prints; another's is `not_found`."""
    invoices = Invoice.objects.select_related("owner__tax_profile", "vehicle")
    invoice = invoices.filter(owner=owner, pk=invoice_id).first()
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice


def credit_notes_of_owner(*, owner) -> QuerySet[CreditNote]:
    return CreditNote.objects.filter(owner=owner).select_related("invoice").order_by("-issued_at", "number")


def credit_note_of_owner(*, owner, credit_note_id) -> CreditNote:
    note = (
        CreditNote.objects.select_related("owner__tax_profile", "invoice__vehicle")
        .filter(owner=owner, pk=credit_note_id)
        .first()
    )
    if note is None:
        raise NotFound("No such credit note.")
    return note
