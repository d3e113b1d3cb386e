"""Writing entitlements: the only place rows of `Entitlement` are created or ended.

Entitlements derive from committed money state only: callers grant after a payment succeeded,
a trial started, a car was delivered with an included offer, or an admin comped a feature.
Every grant is idempotent (database constraints + get_or_create), so a retried task grants once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F, Q

from billing.models import Entitlement, EntitlementSource, Feature, Offer, Purchase, Subscription
from billing.services import outbound_events
from core.errors import ErrorCode, ValidationError
from vehicles.models import Vehicle
from vehicles.state_cache import vehicle_state_changed, vehicles_state_changed


def _check_period(starts_at: datetime, ends_at: datetime | None) -> None:
    if starts_at.tzinfo is None or (ends_at is not None and ends_at.tzinfo is None):
        raise ValidationError("Entitlement periods must be timezone-aware (UTC).")
    if ends_at is not None and ends_at <= starts_at:
        raise ValidationError(
            "An entitlement period [start, end) must end after it starts.",
            code=ErrorCode.VALIDATION_ERROR,
            details={"starts_at": starts_at.isoformat(), "ends_at": ends_at.isoformat()},
        )


@transaction.atomic
def entitlements_grant_for_subscription_period(
    *, subscription: Subscription, period_start: datetime, period_end: datetime
) -> list[Entitlement]:
    """One row per feature of the subscribed offer for `[period_start, period_end)`. A grace row
    of the same period (the renewal was declined, then paid) becomes the paid period."""
    return _grant_subscription_rows(
        subscription=subscription,
        period_start=period_start,
        ends_at=period_end,
        source=EntitlementSource.SUBSCRIPTION,
    )


@transaction.atomic
def entitlements_grant_grace(
    *, subscription: Subscription, period_start: datetime, until: datetime
) -> list[Entitlement]:
    """While a declined renewal is retried, the car keeps the plan's features until `until`."""
    return _grant_subscription_rows(
        subscription=subscription, period_start=period_start, ends_at=until, source=EntitlementSource.GRACE
    )


def _grant_subscription_rows(
    *, subscription: Subscription, period_start: datetime, ends_at: datetime, source: str
) -> list[Entitlement]:
    """One row per feature of the plan for `[period_start, ends_at)` (unique per subscription,
    feature and start). A grace row of that period becomes the paid one when the period is paid."""
    _check_period(period_start, ends_at)
    granted = []
    for feature in subscription.offer.features.all():
        entitlement, created = Entitlement.objects.get_or_create(
            subscription=subscription,
            feature=feature,
            starts_at=period_start,
            defaults={"vehicle_id": subscription.vehicle_id, "source": source, "ends_at": ends_at},
        )
        paid_after_grace = (
            source == EntitlementSource.SUBSCRIPTION and entitlement.source == EntitlementSource.GRACE
        )
        if not created and paid_after_grace:
            entitlement.source, entitlement.ends_at = EntitlementSource.SUBSCRIPTION, ends_at
            entitlement.save(update_fields=["source", "ends_at"])
        granted.append(entitlement)
    outbound_events.entitlements_granted(granted)  # outbox
    vehicle_state_changed(subscription.vehicle_id)
    return granted


def entitlements_grant_for_renewals(
    periods: Sequence[tuple[Subscription, datetime, datetime]],
) -> list[Entitlement]:
    """`entitlements_grant_for_subscription_period` for a batch of renewals paid at once, in a
    constant number of statements; records no event (the caller records the batch's, with the
    invoices'). Each (subscription, start, end) must be a new period: the batch holds its
    subscriptions locked and opened their invoices itself, so no row of it exists yet (the
    unique constraint would refuse the whole batch otherwise, and the caller renews one by one)."""
    if not periods:
        return []
    for _, start, end in periods:
        _check_period(start, end)
    features: dict[int, list[int]] = {}
    for offer_id, feature_id in Offer.features.through.objects.filter(
        offer_id__in={subscription.offer_id for subscription, _, _ in periods}
    ).values_list("offer_id", "feature_id"):
        features.setdefault(offer_id, []).append(feature_id)
    rows = Entitlement.objects.bulk_create(
        Entitlement(
            subscription=subscription,
            feature_id=feature_id,
            vehicle_id=subscription.vehicle_id,
            source=EntitlementSource.SUBSCRIPTION,
            starts_at=start,
            ends_at=end,
        )
        for subscription, start, end in periods
        for feature_id in features.get(subscription.offer_id, [])
    )
    vehicles_state_changed([subscription.vehicle_id for subscription, _, _ in periods])
    return rows


@transaction.atomic
def entitlements_grant_for_purchase(*, purchase: Purchase, starts_at: datetime) -> list[Entitlement]:
    """A one-time unlock: perpetual, bound to the vehicle."""
    _check_period(starts_at, None)
    granted = []
    for feature in purchase.offer.features.all():
        entitlement, _ = Entitlement.objects.get_or_create(
            purchase=purchase,
            feature=feature,
            defaults={
                "vehicle_id": purchase.vehicle_id,
                "source": EntitlementSource.PURCHASE,
                "starts_at": starts_at,
                "ends_at": None,
            },
        )
        granted.append(entitlement)
    outbound_events.entitlements_granted(granted)  # outbox
    vehicle_state_changed(purchase.vehicle_id)
    return granted


@transaction.atomic
def entitlements_grant_included(
    *, vehicle: Vehicle, offer: Offer, starts_at: datetime, ends_at: datetime
) -> list[Entitlement]:
    """Features included with a new car, e.g. three years of connectivity from delivery."""
    _check_period(starts_at, ends_at)
    granted = []
    for feature in offer.features.all():
        entitlement, _ = Entitlement.objects.get_or_create(
            vehicle=vehicle,
            feature=feature,
            offer=offer,
            source=EntitlementSource.INCLUDED,
            starts_at=starts_at,
            defaults={"ends_at": ends_at},
        )
        granted.append(entitlement)
    outbound_events.entitlements_granted(granted)  # outbox
    vehicle_state_changed(vehicle.pk)
    return granted


@transaction.atomic
def entitlement_grant_admin(
    *,
    vehicle: Vehicle,
    feature: Feature,
    granted_by: Any,
    starts_at: datetime,
    ends_at: datetime | None,
    reason: str,
) -> Entitlement:
    """A comp grant by an operator; the reason is kept for audit."""
    _check_period(starts_at, ends_at)
    if not reason.strip():
        raise ValidationError("A comp grant needs a reason (it is kept for audit).")
    vehicle_state_changed(vehicle.pk)
    entitlement = Entitlement.objects.create(
        vehicle=vehicle,
        feature=feature,
        source=EntitlementSource.GRANT,
        granted_by=granted_by,
        reason=reason.strip(),
        starts_at=starts_at,
        ends_at=ends_at,
    )
    outbound_events.entitlements_granted([entitlement])  # outbox
    return entitlement


def entitlements_end(
    *,
    at: datetime,
    subscription: Subscription | None = None,
    purchase: Purchase | None = None,
    periods_from: datetime | None = None,
) -> int:
    """End the entitlements of a subscription or a purchase at `at` (withdrawal, resale,
    cancellation now, a refund). Rows covering `at` are cut at `at`; rows starting at or after `at`
    are ended at their start, never deleted (the audit history keeps every row): their period
    becomes the empty `[start, start)`, which covers no instant.
    `periods_from`: only a subscription's rows starting at or after it (one refunded period)."""
    if (subscription is None) == (purchase is None):
        raise ValueError("pass exactly one of subscription or purchase")
    rows = (
        Entitlement.objects.filter(subscription=subscription)
        if subscription
        else (Entitlement.objects.filter(purchase=purchase))
    )
    if periods_from is not None:
        rows = rows.filter(starts_at__gte=periods_from)
    with transaction.atomic():
        source = subscription or purchase
        assert source is not None  # checked above
        vehicle_state_changed(source.vehicle_id)
        # ended, never deleted: a row that had not started becomes the empty period [start, start)
        removed = (
            rows.filter(starts_at__gte=at)
            .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=F("starts_at")))
            .update(ends_at=F("starts_at"))
        )
        cut = rows.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at), starts_at__lt=at).update(ends_at=at)
        if removed + cut:  # outbox
            outbound_events.entitlements_revoked(at=at, subscription=subscription, purchase=purchase)
    return removed + cut


# -- disputes (billing/services/disputes.py decides which rows; the writes are here) -------------
def entitlements_suspend(*, entitlement_ids: list, at: datetime) -> list[tuple[Entitlement, datetime | None]]:
    """End these entitlements at `at` while a dispute is open; returns each suspended row with
    its original end (None: perpetual), to put back if the dispute is won. Rows already over
    at `at` are left alone; a row that has not started yet gets the empty period [start, start)."""
    suspended = []
    with transaction.atomic():
        rows = Entitlement.objects.select_for_update().filter(pk__in=entitlement_ids).order_by("pk")
        for entitlement in rows:
            if entitlement.ends_at is not None and entitlement.ends_at <= at:
                continue
            original = entitlement.ends_at
            entitlement.ends_at = max(at, entitlement.starts_at)  # not started yet: [start, start)
            entitlement.save(update_fields=["ends_at"])
            suspended.append((entitlement, original))
            vehicle_state_changed(entitlement.vehicle_id)
        outbound_events.entitlements_suspended([row for row, _ in suspended])  # outbox
    return suspended


def entitlement_restore(
    *, entitlement_id: UUID | str, suspended_ends_at: datetime, ends_at: datetime | None
) -> bool:
    """Put back the end a dispute suspension took away, unless something else has ended the row
    since (then its current end stands). Returns whether it was restored."""
    with transaction.atomic():
        entitlement = Entitlement.objects.select_for_update().filter(pk=entitlement_id).first()
        if entitlement is None or entitlement.ends_at != suspended_ends_at:
            return False
        if ends_at is not None and ends_at <= entitlement.starts_at:
            return False
        entitlement.ends_at = ends_at
        entitlement.save(update_fields=["ends_at"])
        vehicle_state_changed(entitlement.vehicle_id)
        outbound_events.entitlements_granted([entitlement])  # outbox
    return True
