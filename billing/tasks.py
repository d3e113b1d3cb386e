"""Thin Celery tasks: each calls one service and owns only its retry policy.

Schedules live in the database (django-celery-beat); `billing.services.schedules` installs them.
The sweeps are safe to run concurrently and twice (row locks with SKIP LOCKED, idempotency keys).
"""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task
from django.utils import timezone

from billing.services.dunning import dunning_sweep
from billing.services.payments import payment_attempts_reconcile
from billing.services.refunds import refunds_reconcile
from billing.services.renewals import subscriptions_renew_due
from core.idempotency import idempotency_records_purge


@shared_task(acks_late=True, time_limit=240, soft_time_limit=200)
def reconcile_payments() -> dict:
    """Settle payment attempts left pending (crash) or unknown (timeout)."""
    return payment_attempts_reconcile()


@shared_task(acks_late=True, time_limit=240, soft_time_limit=200)
def reconcile_refunds() -> int:
    return refunds_reconcile()


@shared_task(acks_late=True, time_limit=120)
def purge_idempotency_records() -> int:
    return idempotency_records_purge()


@shared_task(acks_late=True, time_limit=120)
def flush_expired_tokens() -> None:
    """Keep simplejwt's outstanding/blacklisted token tables small."""
    from django.core.management import call_command

    call_command("flushexpiredtokens")


@shared_task(acks_late=True, time_limit=280, soft_time_limit=240)
def renew_due_subscriptions() -> dict:
    """Start the next period of every subscription due now (charge, or end if canceled)."""
    return asdict(subscriptions_renew_due(at=timezone.now()))


@shared_task(acks_late=True, time_limit=280, soft_time_limit=240)
def run_dunning() -> dict:
    """Retry declined renewals that are due, cancel unpaid subscriptions, remind ending trials."""
    return asdict(dunning_sweep(at=timezone.now()))
