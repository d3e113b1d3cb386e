"""Cross-cutting records: API idempotency keys, the signing keys of offline tokens, and the dead
letter of background tasks."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """One row per (client, Idempotency-Key): the request fingerprint and the stored response."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=512)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user"),
        ]
        indexes = [models.Index(fields=["created_at"])]


class SigningKey(models.Model):
    """An Ed25519 key for offline entitlement tokens.

    Published in the JWKS from `published_at`, used to sign from `active_from`
    (after publication), still published until `retires_at` so older tokens verify.
    """

    kid = models.CharField(max_length=64, unique=True)
    private_jwk = models.JSONField(help_text="Private key (JWK). Keep the database secret.")
    public_jwk = models.JSONField()
    published_at = models.DateTimeField()
    active_from = models.DateTimeField()
    retires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-active_from"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(active_from__gte=models.F("published_at")),
                name="signing_key_published_before_use",
            ),
        ]

    def __str__(self) -> str:
        return self.kid


class TaskFailure(models.Model):
    """The dead letter of background tasks: a task that failed its last allowed try (or whose
    worker died under it again and again) with what it was called with, for an operator to
    look at and retry (admin action "Retry now"). One open row per task and arguments."""

    task_name = models.CharField(max_length=200)
    task_id = models.CharField(max_length=64, blank=True, help_text="The Celery id of the last failure.")
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the task name and arguments.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1, help_text="Tries that failed, over all deliveries.")
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    retried_at = models.DateTimeField(null=True, blank=True, help_text="Sent again by an operator.")

    class Meta:
        ordering = ["-last_failed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=models.Q(retried_at__isnull=True),
                name="one_open_task_failure_per_call",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} ({self.attempts} failed tries)"
