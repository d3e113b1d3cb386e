"""The checks every checkout makes under lock, before Stripe is called ("check and reserve").

`vehicle_reserve` locks the car's row and proves the buyer still owns it; the vehicle lock
serializes every checkout, plan change and resale claim of one car, so the clash and coverage
checks below cannot be raced. Nothing here calls Stripe.
"""

from __future__ import annotations

from datetime import datetime

from billing.models import Entitlement, Offer, Subscription, SubscriptionStatus
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from core.errors import BusinessRuleViolation, ErrorCode, NotFound
from vehicles.models import Owner, Ownership, Vehicle


def vehicle_reserve(*, vehicle: Vehicle, owner: Owner) -> Vehicle:
    """Lock the vehicle for the rest of the transaction; refuse if `owner` no longer owns it."""
    locked = Vehicle.objects.select_for_update().get(pk=vehicle.pk)
    if not Ownership.objects.filter(vehicle=locked, owner=owner, ends_at__isnull=True).exists():
        raise NotFound("No such vehicle among yours.")
    return locked


def plan_clash_check(*, vehicle: Vehicle, offer: Offer, excluding: Subscription | None = None) -> None:
    """A car has each plan at most once: refuse a start or change into a plan already live."""
    clash = Subscription.objects.filter(vehicle=vehicle, offer=offer, status__in=LIVE_SUBSCRIPTION_STATUSES)
    if excluding is not None:
        clash = clash.exclude(pk=excluding.pk)
    if clash.exists():
        raise BusinessRuleViolation(
            f"This vehicle already has the plan '{offer.code}'.",
            code=ErrorCode.ALREADY_SUBSCRIBED,
            details={"offer": offer.code},
        )


def features_covered(*, vehicle: Vehicle, at: datetime, excluding: Subscription | None = None) -> set[str]:
    """Feature codes the car keeps without buying anything: perpetual rights (unlocks) and the
    features of its live subscriptions that are not set to end (a trial included, a past-due
    plan not)."""
    perpetual = Entitlement.objects.filter(vehicle=vehicle, starts_at__lte=at, ends_at__isnull=True)
    live = Subscription.objects.filter(  # a past-due plan may end: it does not cover anything
        vehicle=vehicle, status__in=LIVE_SUBSCRIPTION_STATUSES, cancel_at_period_end=False
    ).exclude(status=SubscriptionStatus.PAST_DUE)
    if excluding is not None:
        live = live.exclude(pk=excluding.pk)
    covered = set(perpetual.values_list("feature__code", flat=True))
    covered |= set(
        Offer.features.through.objects.filter(offer__in=live.values("offer")).values_list(
            "feature__code", flat=True
        )
    )
    return covered


def coverage_check(
    *, vehicle: Vehicle, offer: Offer, at: datetime, excluding: Subscription | None = None
) -> None:
    """Refuse to sell what the car already has: every feature of `offer` covered by something
    else (an unlock, a live bundle, another plan) means the owner would pay twice."""
    codes = {f.code for f in offer.features.all()}
    covered = features_covered(vehicle=vehicle, at=at, excluding=excluding)
    if codes and codes <= covered:
        raise BusinessRuleViolation(
            "This vehicle already has every feature of this offer (from an unlock or another plan).",
            code=ErrorCode.ALREADY_ENTITLED,
            details={"offer": offer.code, "features": sorted(codes)},
        )
