"""Runs of the reconciliation with Stripe: what was compared, each difference, what was done."""

from __future__ import annotations

from django.db import models


class ReconciliationRunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


RECONCILIATION_RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    ReconciliationRunStatus.RUNNING: frozenset({"succeeded", "failed"}),
    ReconciliationRunStatus.SUCCEEDED: frozenset(),
    ReconciliationRunStatus.FAILED: frozenset(),
}


class ReconciliationRun(models.Model):
    """One pass over Stripe's events and objects since the cursor of the last successful run.

    `differences` lists each difference found: `{"kind", "object", "found", "action", "repaired"}`
    (`repaired` False: reported for an operator, nothing could be done automatically).
    """

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Daily schedule"
        ADMIN = "admin", "Admin (on demand)"
        MANUAL = "manual", "Manual (shell, tests)"

    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    status = models.CharField(
        max_length=16, choices=ReconciliationRunStatus.choices, default=ReconciliationRunStatus.RUNNING
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    cursor_before = models.DateTimeField(help_text="Stripe events created from here were paged.")
    cursor_after = models.DateTimeField(
        null=True, blank=True, help_text="Where the next run starts (the newest event seen)."
    )
    events_seen = models.PositiveIntegerField(default=0)
    events_missing = models.PositiveIntegerField(default=0, help_text="Never delivered: put in the inbox.")
    payments_checked = models.PositiveIntegerField(default=0)
    refunds_checked = models.PositiveIntegerField(default=0)
    differences_found = models.PositiveIntegerField(default=0)
    differences_repaired = models.PositiveIntegerField(default=0)
    differences = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=models.Q(status="running"), name="one_running_reconciliation"
            ),
        ]

    def __str__(self) -> str:
        return f"reconciliation {self.started_at:%Y-%m-%d %H:%M} ({self.status})"
