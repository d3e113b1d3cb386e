"""The periodic billing jobs, stored in the database for Celery beat (django-celery-beat)."""

from __future__ import annotations

from django_celery_beat.models import IntervalSchedule, PeriodicTask

SCHEDULES = {
    "renew due subscriptions": ("billing.tasks.renew_due_subscriptions", 1, IntervalSchedule.MINUTES),
    "send due event deliveries": ("events.tasks.send_due_deliveries", 1, IntervalSchedule.MINUTES),
    "purge old outbox events": ("events.tasks.purge_outbox_events", 1, IntervalSchedule.DAYS),
    "dunning: retries, unpaid cancellations, trial reminders": (
        "billing.tasks.run_dunning",
        15,
        IntervalSchedule.MINUTES,
    ),
    "reconcile payments": ("billing.tasks.reconcile_payments", 5, IntervalSchedule.MINUTES),
    "stripe webhooks left in the inbox": (
        "billing.tasks.process_pending_stripe_events",
        1,
        IntervalSchedule.MINUTES,
    ),
    "reconcile refunds": ("billing.tasks.reconcile_refunds", 5, IntervalSchedule.MINUTES),
    "reconcile with stripe (events never delivered)": (
        "billing.tasks.reconcile_with_stripe",
        1,
        IntervalSchedule.DAYS,
    ),
    "purge idempotency records": ("billing.tasks.purge_idempotency_records", 1, IntervalSchedule.HOURS),
    "flush expired tokens": ("billing.tasks.flush_expired_tokens", 1, IntervalSchedule.DAYS),
}


def periodic_tasks_install() -> int:
    """Create or update the periodic tasks; returns how many exist. Idempotent."""
    for name, (task, every, period) in SCHEDULES.items():
        schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": schedule, "enabled": True}
        )
    return len(SCHEDULES)
