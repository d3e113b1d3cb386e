"""Disputes (chargebacks): a case per Stripe dispute, and the entitlements it suspended.

A dispute opens `open` and closes once, `won` or `lost` (a closed dispute never reopens). While
it is open the disputed payment's entitlements are ended, where the offer's `dispute_policy`
says so, and each suspended row remembers its original end (`DisputeSuspension`), so a won
dispute puts them back exactly; a lost one leaves them ended and books the amount as lost.
"""

from __future__ import annotations

from django.db import models

from billing.models.entitlements import Entitlement
from billing.models.payments import PaymentAttempt
from core.db import currency_field, non_negative_constraint, valid_currency_constraint


class DisputeStatus(models.TextChoices):
    OPEN = "open", "Open"
    WON = "won", "Won (money kept, rights restored)"
    LOST = "lost", "Lost (money gone, rights revoked)"


DISPUTE_TRANSITIONS: dict[str, frozenset[str]] = {
    DisputeStatus.OPEN: frozenset({"won", "lost"}),
    DisputeStatus.WON: frozenset(),
    DisputeStatus.LOST: frozenset(),
}


class Dispute(models.Model):
    stripe_dispute_id = models.CharField(max_length=64, unique=True)
    payment_attempt = models.ForeignKey(PaymentAttempt, on_delete=models.PROTECT, related_name="disputes")
    stripe_charge_id = models.CharField(max_length=64, blank=True)
    amount_minor = models.BigIntegerField(help_text="The disputed amount (at most the payment's).")
    currency = currency_field()
    reason = models.CharField(max_length=64, blank=True, help_text="Stripe's reason, e.g. fraudulent.")
    status = models.CharField(max_length=8, choices=DisputeStatus.choices, default=DisputeStatus.OPEN)
    stripe_status = models.CharField(
        max_length=32, blank=True, help_text="Stripe's own status, e.g. needs_response, under_review."
    )
    policy = models.CharField(
        max_length=16, blank=True, help_text="The offer's dispute policy applied when the case opened."
    )
    lost_minor = models.BigIntegerField(default=0, help_text="Booked as lost when the dispute is lost.")
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_minor__gt=0), name="dispute_amount_positive"),
            non_negative_constraint("lost_minor", "dispute_lost_non_negative"),
            models.CheckConstraint(
                condition=models.Q(status="lost") | models.Q(lost_minor=0), name="dispute_lost_only_when_lost"
            ),
            models.CheckConstraint(
                condition=models.Q(status="open", closed_at__isnull=True)
                | models.Q(status__in=["won", "lost"], closed_at__isnull=False),
                name="dispute_closed_at_matches_status",
            ),
            valid_currency_constraint("currency", "dispute_currency_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.stripe_dispute_id} ({self.status})"


class DisputeSuspension(models.Model):
    """An entitlement a dispute ended, with the end it had before (NULL: perpetual)."""

    dispute = models.ForeignKey(Dispute, on_delete=models.CASCADE, related_name="suspensions")
    entitlement = models.ForeignKey(Entitlement, on_delete=models.CASCADE, related_name="+")
    original_ends_at = models.DateTimeField(null=True, blank=True)
    suspended_ends_at = models.DateTimeField(help_text="The end the suspension gave it.")
    restored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["dispute", "entitlement"], name="one_suspension_per_entitlement"),
        ]

    def __str__(self) -> str:
        until = f"{self.suspended_ends_at:%Y-%m-%d %H:%M}"
        return f"Suspension of entitlement {str(self.entitlement_id)[:8]} until {until}"
