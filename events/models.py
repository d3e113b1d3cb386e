"""The outbox of events for the carmaker's systems, their endpoints and the deliveries.

An `OutboxEvent` is written in the transaction of the change it describes
(`events.services.event_record`), with one pending `Delivery` per enabled endpoint that wants
its type. Workers send deliveries after commit (`events.services.delivery`): at least once, in
commit order per `ordering_key` and endpoint, retried with backoff for three days, then dead.
This app knows no billing: payloads are plain JSON built by the caller.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class EventType(models.TextChoices):
    ENTITLEMENT_GRANTED = "entitlement.granted"
    ENTITLEMENT_REVOKED = "entitlement.revoked"
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_UPDATED = "subscription.updated"
    SUBSCRIPTION_CANCELED = "subscription.canceled"
    INVOICE_PAID = "invoice.paid"
    PAYMENT_FAILED = "payment.failed"
    DUNNING_STARTED = "dunning.started"
    TRIAL_ENDING = "trial.ending"
    VEHICLE_TRANSFERRED = "vehicle.transferred"
    DISPUTE_OPENED = "dispute.opened"
    DISPUTE_CLOSED = "dispute.closed"


class EventEndpoint(models.Model):
    """A URL of the carmaker's systems that receives the events it subscribed to."""

    url = models.URLField(max_length=2000, help_text="http(s) only; private addresses only where allowed.")
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(
        default=list, blank=True, help_text="Event types it receives; empty: all of them."
    )
    secret = models.CharField(
        max_length=100, editable=False, help_text="Standard Webhooks signing secret (whsec_<base64>)."
    )
    previous_secret = models.CharField(
        max_length=100, blank=True, editable=False, help_text="The secret before the last rotation."
    )
    previous_secret_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Deliveries are signed with both secrets until then."
    )
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since the last success."
    )
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First failure since the last success."
    )
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["url"]
        verbose_name = "event endpoint"

    def __str__(self) -> str:
        return self.description or self.url

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    def signing_secrets(self, at) -> tuple[str, ...]:
        """The secrets a delivery at `at` is signed with: the current one, and during the
        overlap after a rotation the previous one too (a receiver accepts either signature)."""
        if self.previous_secret and self.previous_secret_expires_at and at < self.previous_secret_expires_at:
            return (self.secret, self.previous_secret)
        return (self.secret,)


class OrderingKeySequence(models.Model):
    """The last sequence number given to an ordering key (e.g. a vehicle). Incremented by the
    transaction that records an event and locked until it commits, so the numbers of one key
    follow commit order."""

    key = models.CharField(max_length=100, primary_key=True)
    last_value = models.PositiveBigIntegerField(default=0)

    class Meta:
        db_table = "events_orderingkeysequence"


class OutboxEvent(models.Model):
    """One event; its id is the `webhook-id` every delivery of it carries (receivers dedupe on it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=40, choices=EventType.choices)
    payload = models.JSONField(help_text="The event's `data`.")
    ordering_key = models.CharField(
        max_length=100,
        blank=True,
        help_text="Events of one key (a vehicle id) are delivered in commit order.",
    )
    sequence = models.PositiveBigIntegerField(null=True, blank=True, help_text="Commit order within the key.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "outbox event"
        constraints = [
            models.UniqueConstraint(
                fields=["ordering_key", "sequence"],
                condition=~models.Q(ordering_key=""),
                name="outbox_event_sequence_unique_per_key",
            ),
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # not tried yet
    FAILED = "failed", "Failed, will retry"
    DELIVERED = "delivered", "Delivered"
    DEAD = "dead", "Dead (gave up)"


# The one table of allowed moves (core.states). `failed -> failed` is a retry that failed again.
DELIVERY_TRANSITIONS = {
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.FAILED, DeliveryStatus.DELIVERED, DeliveryStatus.DEAD}),
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.DEAD}),
    DeliveryStatus.DELIVERED: frozenset(),
    DeliveryStatus.DEAD: frozenset(),
}
UNSETTLED_DELIVERY_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)


class Delivery(models.Model):
    """An event to send to one endpoint, until delivered or dead. An operator's resend is a new
    row (`resend_of`) of the same event: the receiver sees the same `webhook-id` again."""

    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(EventEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    resend_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # copied from the event so the head-of-line check is one indexed lookup
    ordering_key = models.CharField(max_length=100, blank=True)
    sequence = models.PositiveBigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claim_token = models.UUIDField(null=True, blank=True, help_text="The worker holding the claim.")
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="Its lease: retaken after this.")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_response_ms = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "endpoint"],
                condition=models.Q(resend_of__isnull=True),
                name="one_delivery_per_event_and_endpoint",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status__in=["pending", "failed"]),
                name="delivery_due_idx",
            ),
            models.Index(
                fields=["endpoint", "ordering_key", "sequence"],
                condition=models.Q(status__in=["pending", "failed"]),
                name="delivery_head_of_line_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} -> {self.endpoint_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """The delivery log: one row per HTTP attempt."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    response_ms = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["-attempted_at"]
