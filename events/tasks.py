"""Thin Celery tasks of the outbox: each calls one service and owns only its retry policy.

`deliver_event` is enqueued after the commit that recorded an event (fast path);
`send_due_deliveries` runs every minute (installed with the billing schedules) and sends what is
due: retries, deliveries whose worker died (expired leases), messages the broker lost;
`purge_outbox_events` keeps the outbox to 30 days.
Due times live in the database (`next_attempt_at`), never as broker ETAs.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from core.task_failures import DeadLetterTask
from events.services.delivery import deliveries_send_due
from events.services.outbox import outbox_events_purge

TIME_LIMIT_SECONDS = 120  # below the broker's visibility timeout with the longest retry countdown
SEND_BUDGET = timedelta(seconds=80)  # stop claiming new deliveries after this; each send takes <= 14 s


@shared_task(base=DeadLetterTask, time_limit=TIME_LIMIT_SECONDS, soft_time_limit=TIME_LIMIT_SECONDS - 20)
def deliver_event(event_id: str) -> dict:
    """Send one event's deliveries now (and those of its key that waited behind them)."""
    report = deliveries_send_due(event_id=event_id, budget=SEND_BUDGET)
    return {**asdict(report), "sent": report.sent}


@shared_task(base=DeadLetterTask, time_limit=TIME_LIMIT_SECONDS, soft_time_limit=TIME_LIMIT_SECONDS - 20)
def send_due_deliveries() -> dict:
    """Every minute: send every due delivery (SKIP LOCKED: concurrent sweeps share the work)."""
    report = deliveries_send_due(budget=SEND_BUDGET)
    return {**asdict(report), "sent": report.sent}


@shared_task(base=DeadLetterTask, time_limit=TIME_LIMIT_SECONDS, soft_time_limit=TIME_LIMIT_SECONDS - 20)
def purge_outbox_events() -> int:
    """Daily: drop events older than 30 days that have nothing left to send."""
    return outbox_events_purge(at=timezone.now())
