"""The inbox of Stripe webhook events: written and committed before Stripe gets its 2xx."""

from __future__ import annotations

from django.db import models

from billing.models.payments import ReconcileState


class StripeEventStatus(models.TextChoices):
    RECEIVED = "received", "Received (to process)"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored (not ours, or a type we do not handle)"
    REFUSED = "refused", "Refused (does not match our records)"


STRIPE_EVENT_TRANSITIONS: dict[str, frozenset[str]] = {
    StripeEventStatus.RECEIVED: frozenset({"processed", "ignored", "refused"}),
    StripeEventStatus.PROCESSED: frozenset(),
    StripeEventStatus.IGNORED: frozenset(),
    StripeEventStatus.REFUSED: frozenset(),
}


class StripeEvent(ReconcileState):
    """One verified Stripe event, once (its Stripe id is unique): duplicates are acknowledged and
    dropped. Processed asynchronously and idempotently; a processing error is backed off and,
    after repeated failures, dead-lettered (admin lists it with a "reprocess" action)."""

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    livemode = models.BooleanField()
    stripe_created = models.DateTimeField(help_text="When Stripe created the event.")
    object_id = models.CharField(max_length=255, blank=True, db_index=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=StripeEventStatus.choices, default=StripeEventStatus.RECEIVED
    )
    outcome = models.CharField(
        max_length=500, blank=True, help_text="What processing did, or why it refused."
    )
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["status", "received_at"])]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"
