"""Subscriptions and one-time purchases: what an owner bought for a vehicle."""

from __future__ import annotations

import uuid

from django.db import models

from billing.models.catalog import Feature, Offer, Price
from core.db import half_open_constraint
from vehicles.models import Owner, Vehicle


class SubscriptionStatus(models.TextChoices):
    INCOMPLETE = "incomplete", "Incomplete (first payment pending)"
    TRIALING = "trialing", "Trialing"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    UNPAID = "unpaid", "Unpaid"
    CANCELED = "canceled", "Canceled"


LIVE_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.INCOMPLETE,
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
)

# The one place that says which status may follow which.
SUBSCRIPTION_TRANSITIONS: dict[str, frozenset[str]] = {
    SubscriptionStatus.INCOMPLETE: frozenset({"active", "canceled"}),
    SubscriptionStatus.TRIALING: frozenset({"active", "past_due", "canceled"}),
    SubscriptionStatus.ACTIVE: frozenset({"past_due", "canceled"}),
    SubscriptionStatus.PAST_DUE: frozenset({"active", "unpaid", "canceled"}),
    SubscriptionStatus.UNPAID: frozenset({"active", "canceled"}),
    SubscriptionStatus.CANCELED: frozenset(),
}


class Subscription(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="subscriptions")
    vehicle = models.ForeignKey(Vehicle, on_delete=models.PROTECT, related_name="subscriptions")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="subscriptions")
    price = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=SubscriptionStatus.choices)
    billing_anchor = models.DateTimeField(help_text="Periods repeat from this instant (month-end safe).")
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    pending_offer = models.ForeignKey(
        Offer,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="A downgrade applied at the end of the current period.",
    )
    pending_price = models.ForeignKey(
        Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    canceled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Dunning: set when a renewal is declined, cleared when the invoice is paid.
    dunning_invoice = models.ForeignKey(
        "billing.Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    dunning_started_at = models.DateTimeField(null=True, blank=True)
    dunning_retries = models.PositiveSmallIntegerField(default=0, help_text="Retries made so far.")
    next_retry_at = models.DateTimeField(null=True, blank=True)
    grace_until = models.DateTimeField(null=True, blank=True)
    unpaid_since = models.DateTimeField(null=True, blank=True)
    trial_reminder_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle", "offer"],
                condition=models.Q(status__in=LIVE_SUBSCRIPTION_STATUSES),
                name="one_live_subscription_per_vehicle_and_offer",
            ),
            half_open_constraint(
                "current_period_start", "current_period_end", "subscription_period_not_empty"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_retry_at"]),
            models.Index(fields=["status", "current_period_end"]),
            models.Index(fields=["owner", "status"]),
        ]

    def __str__(self) -> str:
        return f"{self.offer.code} for {self.vehicle.vin} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_SUBSCRIPTION_STATUSES


class TrialUsage(models.Model):
    """One trial per vehicle and feature, ever (across owners and offers)."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="trial_usages")
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="+")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["vehicle", "feature"], name="one_trial_per_vehicle_feature"),
        ]

    def __str__(self) -> str:
        vehicle = str(self.vehicle_id)[:8]
        return f"Trial of feature {self.feature_id} on vehicle {vehicle} from {self.started_at:%Y-%m-%d}"


class PurchaseStatus(models.TextChoices):
    PENDING = "pending", "Pending payment"
    PAID = "paid", "Paid"
    FAILED = "failed", "Payment failed"
    REFUNDED = "refunded", "Refunded"


PURCHASE_TRANSITIONS: dict[str, frozenset[str]] = {
    PurchaseStatus.PENDING: frozenset({"paid", "failed"}),
    PurchaseStatus.PAID: frozenset({"refunded"}),
    PurchaseStatus.FAILED: frozenset(),
    PurchaseStatus.REFUNDED: frozenset(),
}


class Purchase(models.Model):
    """A one-time unlock, bound to the vehicle (perpetual)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="purchases")
    vehicle = models.ForeignKey(Vehicle, on_delete=models.PROTECT, related_name="purchases")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="purchases")
    price = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="purchases")
    status = models.CharField(max_length=16, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle", "offer"],
                condition=models.Q(status__in=["pending", "paid"]),
                name="one_open_purchase_per_vehicle_and_offer",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.offer.code} for {self.vehicle.vin} ({self.status})"
