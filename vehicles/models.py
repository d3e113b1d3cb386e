"""Owners, vehicles, their hardware and markets, and ownership history."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from core.db import currency_field, half_open_constraint, valid_currency_constraint

VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"
vin_validator = RegexValidator(
    VIN_PATTERN, "A VIN has 17 characters: digits and capital letters except I, O and Q."
)


class Market(models.Model):
    """A sales market: decides the currency of prices and consumer rules such as withdrawal."""

    code = models.CharField(max_length=8, unique=True, help_text="e.g. DE, US, JP")
    name = models.CharField(max_length=64)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    currency = currency_field()
    withdrawal_period_days = models.PositiveSmallIntegerField(
        default=0, help_text="Days in which a consumer may withdraw with a full refund (EU: 14)."
    )
    dunning_grace_days = models.PositiveSmallIntegerField(
        default=7,
        help_text="Days a car keeps a plan's features after a declined renewal, while payment is retried "
        "(a plan may set its own).",
    )

    class Meta:
        ordering = ["code"]
        constraints = [valid_currency_constraint("currency", "market_currency_valid")]

    def __str__(self) -> str:
        return f"{self.code} ({self.currency})"


class Capability(models.Model):
    """A hardware capability a feature may need (heated-seat hardware, ADAS sensors...)."""

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=128)

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "capabilities"

    def __str__(self) -> str:
        return self.code


class Owner(models.Model):
    class Kind(models.TextChoices):
        PERSON = "person", "Person"
        FLEET = "fleet", "Fleet company"

    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.PERSON)
    display_name = models.CharField(max_length=200)
    email = models.EmailField()
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owner",
        help_text="The login of this owner for the mobile app.",
    )
    billing_country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    currency = currency_field()
    is_consumer = models.BooleanField(
        default=True, help_text="Consumers get the market's withdrawal period; fleets do not."
    )
    stripe_customer_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_name"]
        constraints = [valid_currency_constraint("currency", "owner_currency_valid")]

    def __str__(self) -> str:
        return self.display_name


class Vehicle(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vin = models.CharField(max_length=17, unique=True, validators=[vin_validator])
    brand = models.CharField(max_length=64)
    model = models.CharField(max_length=64)
    model_year = models.PositiveSmallIntegerField()
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="vehicles")
    software_version = models.CharField(max_length=32, help_text="e.g. 2026.40.1")
    capabilities = models.ManyToManyField(Capability, blank=True, related_name="vehicles")
    battery_capacity_wh = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(
        null=True, blank=True, help_text="First delivery to a customer; starts included offers."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vin"]
        constraints = [
            models.CheckConstraint(condition=models.Q(vin__regex=VIN_PATTERN), name="vehicle_vin_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.brand} {self.model} {self.vin}"


class Ownership(models.Model):
    """Who owned a vehicle during `[starts_at, ends_at)`; `ends_at` NULL is the current owner."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="ownerships")
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="ownerships")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["vehicle", "starts_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"],
                condition=models.Q(ends_at__isnull=True),
                name="one_current_owner_per_vehicle",
            ),
            half_open_constraint("starts_at", "ends_at", "ownership_period_not_empty"),
        ]
        indexes = [models.Index(fields=["owner", "ends_at"])]

    def __str__(self) -> str:
        return f"{self.owner} owns {self.vehicle.vin} from {self.starts_at:%Y-%m-%d}"


class VehicleCredential(models.Model):
    """A per-vehicle API secret, stored hashed. Rotating issues a new one and revokes the old."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="credentials")
    key_id = models.CharField(max_length=32, unique=True, help_text="Public part, sent by the car.")
    secret_hash = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    # not a column: the vehicle's state stamp, set in memory by the credential lookup
    # (vehicles.services.credentials) for the ETag of the poll
    state_version: str

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_active_credential_per_vehicle",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_id} ({'revoked' if self.revoked_at else 'active'})"


class VehicleTransfer(models.Model):
    """A resale in progress: the current owner starts it, the new owner claims with a one-time code."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        CANCELED = "canceled", "Canceled"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="transfers")
    from_owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="transfers_out")
    to_owner = models.ForeignKey(
        Owner, null=True, blank=True, on_delete=models.PROTECT, related_name="transfers_in"
    )
    code_hash = models.CharField(max_length=128)
    failed_attempts = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"],
                condition=models.Q(status="pending"),
                name="one_pending_transfer_per_vehicle",
            ),
        ]

    def __str__(self) -> str:
        return f"Transfer {str(self.id)[:8]} ({self.status})"


# The one place that says which transfer status may follow which.
TRANSFER_TRANSITIONS: dict[str, frozenset[str]] = {
    VehicleTransfer.Status.PENDING: frozenset({"completed", "canceled", "expired"}),
    VehicleTransfer.Status.COMPLETED: frozenset(),
    VehicleTransfer.Status.CANCELED: frozenset(),
    VehicleTransfer.Status.EXPIRED: frozenset(),
}
