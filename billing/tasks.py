"""Thin Celery tasks: each calls one service and owns only its retry policy.

Schedules live in the database (django-celery-beat); `billing.services.schedules` installs them.
Every task:
- is enqueued on commit (`delay_on_commit`; `tests/billing/test_tasks_on_commit.py` forbids a bare
  `.delay()`/`.apply_async()` inside an `atomic()` block in billing);
- is acknowledged late and given back to the broker when its worker dies (config/settings.py);
- has a hard `time_limit` (and a soft one a little before it), all below the broker's
  visibility timeout together with the longest retry countdown;
- retries on error a few times, then lands in the dead letter (`core.task_failures`).
Due times live in PostgreSQL (`current_period_end`, `next_retry_at`, `next_reconcile_at`), never
as broker ETAs. The sweeps are safe to run concurrently and twice (row locks with SKIP LOCKED,
idempotency keys): two beats started by mistake still charge each period once.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from billing.services.dunning import dunning_sweep
from billing.services.payments import payment_attempts_reconcile
from billing.services.refunds import refunds_reconcile
from billing.services.renewals import (
    renewal_chunks_hand_out,
    stranded_renewal_invoices_charge,
    subscriptions_renew_due,
)
from billing.services.stripe_reconciliation import ReconciliationAlreadyRunning, stripe_reconcile
from billing.services.webhooks import stripe_event_process_isolated, stripe_events_process_pending
from core.idempotency import idempotency_records_purge
from core.task_failures import DeadLetterTask

RENEWAL_CHUNK_SIZE = 50  # subscriptions per chunk task: a few seconds of work within the budget

# Hard limits in seconds (the soft limit raises inside the task 20 s before). The broker's
# visibility timeout must exceed the longest plus the longest retry countdown (R14 test).
TIME_LIMITS = {
    "reconcile_payments": 240,
    "reconcile_refunds": 240,
    "reconcile_with_stripe": 280,  # a long backlog is worked over several runs (see the service)
    "purge_idempotency_records": 120,
    "flush_expired_tokens": 120,
    "renew_due_subscriptions": 120,
    "renew_subscriptions_chunk": 180,
    "run_dunning": 280,
    "process_stripe_event": 60,
    "process_pending_stripe_events": 240,
}


def _limits(name: str) -> dict:
    return {"time_limit": TIME_LIMITS[name], "soft_time_limit": TIME_LIMITS[name] - 20}


@shared_task(base=DeadLetterTask, **_limits("reconcile_payments"))
def reconcile_payments() -> dict:
    """Settle payment attempts left pending (crash) or unknown (timeout)."""
    return payment_attempts_reconcile()


@shared_task(base=DeadLetterTask, **_limits("reconcile_refunds"))
def reconcile_refunds() -> int:
    return refunds_reconcile()


@shared_task(base=DeadLetterTask, **_limits("reconcile_with_stripe"))
def reconcile_with_stripe(trigger: str = "schedule") -> dict:
    """Daily: page Stripe's events and objects since the cursor, repair what was never delivered,
    report each difference in a `ReconciliationRun`. One run at a time: a second one returns."""
    try:
        run = stripe_reconcile(trigger=trigger)
    except ReconciliationAlreadyRunning:
        return {"already_running": True}
    return {
        "run": run.pk,
        "status": run.status,
        "found": run.differences_found,
        "repaired": run.differences_repaired,
    }


@shared_task(base=DeadLetterTask, **_limits("purge_idempotency_records"))
def purge_idempotency_records() -> int:
    return idempotency_records_purge()


@shared_task(base=DeadLetterTask, **_limits("flush_expired_tokens"))
def flush_expired_tokens() -> None:
    """Keep simplejwt's outstanding/blacklisted token tables small."""
    from django.core.management import call_command

    call_command("flushexpiredtokens")


@shared_task(base=DeadLetterTask, **_limits("renew_due_subscriptions"))
def renew_due_subscriptions() -> dict:
    """Every minute: hand the due subscriptions out to the workers in chunks (ids, on commit),
    and charge renewal invoices a dead worker left uncharged."""
    now = timezone.now()
    chunks = renewal_chunks_hand_out(at=now, chunk_size=RENEWAL_CHUNK_SIZE)
    for chunk in chunks:
        renew_subscriptions_chunk.delay_on_commit(chunk)
    stranded = stranded_renewal_invoices_charge(at=now)
    return {"chunks": len(chunks), "subscriptions": sum(map(len, chunks)), "stranded": asdict(stranded)}


@shared_task(base=DeadLetterTask, **_limits("renew_subscriptions_chunk"))
def renew_subscriptions_chunk(subscription_ids: list[str]) -> dict:
    """Renew and charge those of these subscriptions that are still due and not claimed by
    another worker (SKIP LOCKED): a chunk handed out twice renews each one once."""
    report = subscriptions_renew_due(
        at=timezone.now(), limit=len(subscription_ids), subscription_ids=subscription_ids
    )
    return asdict(report)


@shared_task(base=DeadLetterTask, **_limits("run_dunning"))
def run_dunning() -> dict:
    """Retry declined renewals that are due, cancel unpaid subscriptions, remind ending trials."""
    return asdict(dunning_sweep(at=timezone.now()))


@shared_task(base=DeadLetterTask, **_limits("process_stripe_event"))
def process_stripe_event(event_pk: int) -> str | None:
    """Process one Stripe webhook from the inbox (idempotent; errors are recorded on the row)."""
    row = stripe_event_process_isolated(event_pk=event_pk)
    return row.status if row is not None else None


@shared_task(base=DeadLetterTask, **_limits("process_pending_stripe_events"))
def process_pending_stripe_events(older_than_seconds: int = 30) -> int:
    """Process the inbox: woken right after deliveries (`older_than_seconds=0`), and every minute
    for rows a lost message left behind or backed off after an error."""
    return stripe_events_process_pending(older_than=timedelta(seconds=older_than_seconds))
