"""Entitlements: which vehicle may use which feature during `[starts_at, ends_at)`, and why."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from billing.models.catalog import Feature, Offer
from billing.models.subscriptions import Purchase, Subscription
from core.db import half_open_constraint
from vehicles.models import Vehicle


class EntitlementSource(models.TextChoices):
    PURCHASE = "purchase", "One-time purchase"
    SUBSCRIPTION = "subscription", "Subscription period"
    INCLUDED = "included", "Included with the car"
    GRANT = "grant", "Admin grant"
    GRACE = "grace", "Grace period (payment being retried)"


class Entitlement(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="entitlements")
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="entitlements")
    source = models.CharField(max_length=16, choices=EntitlementSource.choices)
    purchase = models.ForeignKey(
        Purchase, null=True, blank=True, on_delete=models.PROTECT, related_name="entitlements"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.PROTECT, related_name="entitlements"
    )
    offer = models.ForeignKey(
        Offer,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The included offer, for entitlements that came with the car.",
    )
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.CharField(max_length=255, blank=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Empty: perpetual.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vehicle", "feature", "starts_at"]
        constraints = [
            # [t, t) is allowed: a row ended before it began (revoked, refunded) is kept, never
            # deleted, and covers no instant.
            half_open_constraint("starts_at", "ends_at", "entitlement_period_not_negative", allow_empty=True),
            models.CheckConstraint(
                condition=(
                    models.Q(source="purchase", purchase__isnull=False, subscription__isnull=True)
                    | models.Q(
                        source__in=["subscription", "grace"],
                        subscription__isnull=False,
                        purchase__isnull=True,
                    )
                    | models.Q(
                        source="included",
                        offer__isnull=False,
                        purchase__isnull=True,
                        subscription__isnull=True,
                    )
                    | models.Q(
                        source="grant",
                        granted_by__isnull=False,
                        purchase__isnull=True,
                        subscription__isnull=True,
                    )
                ),
                name="entitlement_source_matches_reference",
            ),
            models.UniqueConstraint(
                fields=["subscription", "feature", "starts_at"],
                condition=models.Q(subscription__isnull=False),
                name="one_entitlement_per_subscription_period_feature",
            ),
            models.UniqueConstraint(
                fields=["purchase", "feature"],
                condition=models.Q(purchase__isnull=False),
                name="one_entitlement_per_purchase_feature",
            ),
        ]
        indexes = [models.Index(fields=["vehicle", "starts_at", "ends_at"])]

    def __str__(self) -> str:
        return f"{self.feature.code} on {self.vehicle.vin} ({self.source})"
