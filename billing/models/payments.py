"""Payment methods, payment attempts and refunds: our committed record of every Stripe call."""

from __future__ import annotations

import uuid

from django.db import models

from billing.models.invoices import Invoice
from core.db import currency_field, valid_currency_constraint
from core.money import format_money
from vehicles.models import Owner


class PaymentMethod(models.Model):
    owner = models.ForeignKey(Owner, on_delete=models.CASCADE, related_name="payment_methods")
    stripe_payment_method_id = models.CharField(max_length=64, unique=True)
    brand = models.CharField(max_length=32, blank=True)
    last4 = models.CharField(max_length=4, blank=True)
    exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-is_default", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner"], condition=models.Q(is_default=True), name="one_default_payment_method"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.brand} •••• {self.last4}"


class AttemptStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    DECLINED = "declined", "Declined"
    REQUIRES_ACTION = "requires_action", "Requires customer action"
    UNKNOWN = "unknown", "Unknown outcome"
    CANCELED = "canceled", "Canceled"


LIVE_ATTEMPT_STATUSES = (
    AttemptStatus.PENDING,
    AttemptStatus.SUCCEEDED,
    AttemptStatus.REQUIRES_ACTION,
    AttemptStatus.UNKNOWN,
)

ATTEMPT_TRANSITIONS: dict[str, frozenset[str]] = {
    AttemptStatus.PENDING: frozenset({"succeeded", "declined", "requires_action", "unknown"}),
    AttemptStatus.REQUIRES_ACTION: frozenset({"succeeded", "declined", "canceled"}),
    AttemptStatus.UNKNOWN: frozenset({"succeeded", "declined", "requires_action"}),
    AttemptStatus.SUCCEEDED: frozenset(),
    AttemptStatus.DECLINED: frozenset(),
    AttemptStatus.CANCELED: frozenset(),
}


class ReconcileState(models.Model):
    """What the reconciler knows of a row it could not settle: failures, back-off, dead letter.

    A row that raised is recorded here and backed off; the others go on. After
    `settings.RECONCILE_MAX_FAILURES` failures it is dead-lettered: listed in admin with its
    last error, skipped by the reconciler until an operator retries it.
    """

    reconcile_failures = models.PositiveSmallIntegerField(default=0)
    reconcile_error = models.CharField(max_length=500, blank=True)
    next_reconcile_at = models.DateTimeField(null=True, blank=True)
    dead_lettered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class PaymentAttempt(ReconcileState):
    """Committed before Stripe is called; its id is the Stripe idempotency key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="attempts")
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="payment_attempts")
    payment_method = models.ForeignKey(
        PaymentMethod, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    amount_minor = models.BigIntegerField()
    currency = currency_field()
    status = models.CharField(max_length=16, choices=AttemptStatus.choices, default=AttemptStatus.PENDING)
    stripe_payment_intent_id = models.CharField(max_length=64, blank=True, db_index=True)
    client_secret = models.CharField(max_length=255, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice"],
                condition=models.Q(status__in=LIVE_ATTEMPT_STATUSES),
                name="one_live_attempt_per_invoice",
            ),
            models.CheckConstraint(condition=models.Q(amount_minor__gt=0), name="attempt_amount_positive"),
            valid_currency_constraint("currency", "attempt_currency_valid"),
        ]
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return f"Payment {format_money(self.amount_minor, self.currency)} ({self.status}) {str(self.id)[:8]}"

    @property
    def idempotency_key(self) -> str:
        return f"charge-attempt-{self.id}"


class RefundStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    UNKNOWN = "unknown", "Unknown outcome"


REFUND_TRANSITIONS: dict[str, frozenset[str]] = {
    RefundStatus.PENDING: frozenset({"succeeded", "failed", "unknown"}),
    RefundStatus.UNKNOWN: frozenset({"succeeded", "failed", "pending"}),
    RefundStatus.SUCCEEDED: frozenset({"failed"}),  # Stripe may report a refund failed later
    RefundStatus.FAILED: frozenset(),
}


class Refund(ReconcileState):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    payment_attempt = models.ForeignKey(PaymentAttempt, on_delete=models.PROTECT, related_name="refunds")
    amount_minor = models.BigIntegerField()
    currency = currency_field()
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    reason = models.CharField(max_length=255, blank=True)
    stripe_refund_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_minor__gt=0), name="refund_amount_positive"),
            valid_currency_constraint("currency", "refund_currency_valid"),
        ]

    def __str__(self) -> str:
        return f"Refund {format_money(self.amount_minor, self.currency)} ({self.status}) {str(self.id)[:8]}"

    @property
    def idempotency_key(self) -> str:
        return f"refund-{self.id}"
