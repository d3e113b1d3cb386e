"""Celery wiring: settings invariants (R14), schedules in the database, a real worker over Redis."""

import datetime as dt
import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from billing import tasks
from billing.models import AttemptStatus, PaymentAttempt
from billing.services import payments
from billing.services.schedules import SCHEDULES, periodic_tasks_install
from config.celery import app
from tests.billing.test_services_payments import open_purchase_invoice


def test_billing_task_settings_survive_worker_loss():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    limits = [
        getattr(tasks, name).time_limit or conf.task_time_limit
        for name in ("reconcile_payments", "reconcile_refunds", "purge_idempotency_records")
    ]
    assert all(limit and limit <= conf.task_time_limit for limit in limits)
    if settings.CELERY_BROKER_URL.startswith("redis"):
        assert conf.broker_transport_options["visibility_timeout"] > max(limits) * 2


@pytest.mark.django_db
def test_schedules_are_installed_once():
    periodic_tasks_install()
    periodic_tasks_install()

    assert PeriodicTask.objects.filter(name__in=SCHEDULES).count() == len(SCHEDULES)
    assert set(PeriodicTask.objects.values_list("task", flat=True)) >= {t for t, _, _ in SCHEDULES.values()}


@pytest.mark.django_db
@pytest.mark.stripe
def test_reconcile_task_settles_a_stuck_attempt(stripe_proxy):
    invoice, method = open_purchase_invoice()
    attempt = payments.payment_attempt_create(invoice=invoice, payment_method=method)
    PaymentAttempt.objects.filter(pk=attempt.pk).update(
        updated_at=attempt.updated_at - dt.timedelta(minutes=10)
    )

    assert tasks.reconcile_payments.apply().get() == {"succeeded": 1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.stripe
@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis"), reason="needs REDIS_URL (make test sets it)"
)
def test_a_real_worker_over_redis_runs_the_reconciler(stripe_proxy):
    invoice, method = open_purchase_invoice()
    attempt = payments.payment_attempt_create(invoice=invoice, payment_method=method)
    PaymentAttempt.objects.filter(pk=attempt.pk).update(
        updated_at=attempt.updated_at - dt.timedelta(minutes=10)
    )
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
    }
    app.control.purge()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-Q",
            "celery",
        ],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tasks.reconcile_payments.delay()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            attempt.refresh_from_db()
            if attempt.status == AttemptStatus.SUCCEEDED:
                break
            time.sleep(0.3)
    finally:
        worker.terminate()
        worker.wait(timeout=20)

    assert attempt.status == AttemptStatus.SUCCEEDED
    assert (
        len([c for c in stripe_proxy.calls(method="POST", path="/v1/payment_intents") if c.reached_upstream])
        == 1
    )
