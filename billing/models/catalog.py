"""The catalog: features a car may use, the offers that sell them, versioned prices."""

from __future__ import annotations

from django.db import models

from core.db import currency_field, non_negative_constraint, valid_currency_constraint
from vehicles.models import Capability, Market


class Feature(models.Model):
    class Category(models.TextChoices):
        DRIVER_ASSISTANCE = "driver_assistance", "Driver assistance"
        COMFORT = "comfort", "Comfort"
        CONNECTIVITY = "connectivity", "Connectivity"
        PERFORMANCE = "performance", "Performance"
        CHARGING = "charging", "Charging"
        SERVICE = "service", "After-sales service"

    code = models.SlugField(max_length=64, unique=True, help_text="Stable code, e.g. heated_seats")
    name = models.CharField(max_length=128)
    category = models.CharField(max_length=32, choices=Category.choices)
    description = models.TextField(blank=True)
    required_capabilities = models.ManyToManyField(Capability, blank=True, related_name="features")
    markets = models.ManyToManyField(
        Market, blank=True, related_name="features", help_text="Empty means every market."
    )
    min_software_version = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Offer(models.Model):
    """What an owner buys: a one-time unlock or a subscription plan, of one or more features."""

    class Kind(models.TextChoices):
        ONE_TIME = "one_time", "One-time unlock"
        SUBSCRIPTION = "subscription", "Subscription"

    class Interval(models.TextChoices):
        NONE = "", "—"
        MONTH = "month", "Monthly"
        YEAR = "year", "Yearly"

    class TransferPolicy(models.TextChoices):
        STAYS_WITH_VEHICLE = "stays_with_vehicle", "Stays with the vehicle"
        ENDS_ON_TRANSFER = "ends_on_transfer", "Ends when the vehicle is sold"

    class DisputePolicy(models.TextChoices):
        SUSPEND = "suspend", "Suspend the features while a dispute is open"
        KEEP = "keep", "Keep the features during a dispute"

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=128)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    interval = models.CharField(max_length=8, choices=Interval.choices, blank=True, default="")
    trial_days = models.PositiveSmallIntegerField(default=0)
    features = models.ManyToManyField(Feature, related_name="offers")
    transfer_policy = models.CharField(
        max_length=24, choices=TransferPolicy.choices, default=TransferPolicy.STAYS_WITH_VEHICLE
    )
    dispute_policy = models.CharField(
        max_length=16,
        choices=DisputePolicy.choices,
        default=DisputePolicy.SUSPEND,
        help_text="When a payment for this offer is disputed: suspend its features until the outcome "
        "(won: restored, lost: revoked), or keep them.",
    )
    included_months_with_new_car = models.PositiveSmallIntegerField(
        default=0, help_text="Months included free from the vehicle's delivery date (0: none)."
    )
    tier = models.PositiveSmallIntegerField(
        default=0, help_text="Rank among plans of the same features: a higher tier is an upgrade."
    )
    is_active = models.BooleanField(default=True)
    dunning_retry_days = models.CharField(
        max_length=64,
        default="1,3,5,7",
        help_text="After a declined renewal, retry the payment this many days after the decline "
        "(comma-separated, increasing). After the last retry fails the subscription becomes unpaid.",
    )
    dunning_grace_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Days the car keeps the features while retrying (empty: the market's).",
    )
    unpaid_cancel_days = models.PositiveSmallIntegerField(
        default=14,
        help_text="Days an unpaid subscription waits for its invoice to be paid before it is canceled.",
    )

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="subscription", interval__in=["month", "year"])
                    | models.Q(kind="one_time", interval="", trial_days=0)
                ),
                name="offer_kind_matches_interval",
            ),
        ]

    def __str__(self) -> str:
        return self.code

    @property
    def is_subscription(self) -> bool:
        return self.kind == self.Kind.SUBSCRIPTION

    @property
    def retry_schedule_days(self) -> list[int]:
        """The dunning retry offsets in days, parsed and sorted (bad entries ignored)."""
        days = sorted({int(part) for part in self.dunning_retry_days.split(",") if part.strip().isdigit()})
        return [d for d in days if d > 0]


class Price(models.Model):
    """An immutable price of an offer in one market. A new version applies to new sales only:
    subscriptions keep a reference to the price they were sold at."""

    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="prices")
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="prices")
    currency = currency_field()
    amount_minor = models.BigIntegerField()
    version = models.PositiveIntegerField(default=1)
    valid_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["offer", "market", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["offer", "market", "version"], name="price_version_unique"),
            non_negative_constraint("amount_minor", "price_amount_non_negative"),
            valid_currency_constraint("currency", "price_currency_valid"),
        ]
        indexes = [models.Index(fields=["offer", "market", "valid_from"])]

    def __str__(self) -> str:
        return f"{self.offer.code}@{self.market.code} v{self.version}"
