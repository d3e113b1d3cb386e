"""Renewals at fleet scale, on PostgreSQL with Redis and real Celery processes: claims held while
renewing divide the work among concurrent sweeps, a worker killed mid-charge converges after the
reconciler, two beats charge once, a 429 is never a failure, queries per renewal stay constant.

The proxy answers the PaymentIntents itself here (`set_answer_payment_intents`): what is under
test is our side; `tests/billing/test_services_renewals.py` renews against localstripe."""

from __future__ import annotations

import datetime as dt
import os
import signal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from billing import tasks
from billing.models import AttemptStatus, PaymentAttempt, Subscription
from billing.services.payments import payment_attempts_reconcile
from billing.services.renewals import renewal_chunks_hand_out, subscriptions_renew_due
from config.celery import app
from tests.billing.celery_helpers import (
    REQUIRES_REDIS,
    beat_start,
    running,
    uses_redis_broker,
    wait_until,
    worker_start,
)
from tests.billing.renewal_helpers import due_fleet, renewal_invoices
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.stripe]
PI_CREATE = "/v1/payment_intents"
needs_redis = pytest.mark.skipif(not uses_redis_broker(), reason=REQUIRES_REDIS)


def succeeded_charges(fleet) -> int:
    return PaymentAttempt.objects.filter(
        invoice__in=renewal_invoices(fleet), status=AttemptStatus.SUCCEEDED
    ).count()


def assert_each_period_charged_once(fleet, proxy) -> None:
    count = len(fleet.subscription_ids)
    assert renewal_invoices(fleet).count() == count
    assert renewal_invoices(fleet).filter(status="paid").count() == count
    assert succeeded_charges(fleet) == count
    creates = [c for c in proxy.calls(method="POST", path=PI_CREATE) if c.reached_upstream]
    assert len(creates) == len({c.idempotency_key for c in creates}) == count
    assert len({c.form["metadata[invoice_id]"] for c in creates}) == count
    assert not Subscription.objects.filter(
        pk__in=fleet.subscription_ids, current_period_end__lte=fleet.period_end
    ).exists()


# -- claims ----------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_divide_the_work_without_duplicates_or_gaps(local_stripe):
    fleet = due_fleet(120)

    reports = run_concurrently(
        lambda _: subscriptions_renew_due(at=timezone.now(), limit=1000), threads=6, timeout=180
    )

    assert sum(r.renewed for r in reports) == 120
    assert sum(r.skipped for r in reports) == 0  # no sweep worked on a row another one held
    assert [r.errors for r in reports] == [[]] * 6
    assert_each_period_charged_once(fleet, local_stripe)


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_eight_concurrent_sweeps_in_real_workers_renew_500_subscriptions_once(local_stripe):
    fleet = due_fleet(500)
    everything = [str(pk) for pk in fleet.subscription_ids]
    app.control.purge()

    with running(worker_start(pool="prefork", concurrency=8)):
        for _ in range(8):  # eight sweeps over the same 500, in eight worker processes at once
            tasks.renew_subscriptions_chunk.apply_async(args=[everything])
        assert wait_until(lambda: succeeded_charges(fleet) == 500, timeout=240)

    assert_each_period_charged_once(fleet, local_stripe)


@pytest.mark.django_db
def test_due_subscriptions_are_handed_out_once_per_window(local_stripe):
    fleet = due_fleet(7)
    now = timezone.now()

    first = renewal_chunks_hand_out(at=now, chunk_size=3)
    second = renewal_chunks_hand_out(at=now, chunk_size=3)  # a second beat, or the next minute

    assert [len(chunk) for chunk in first] == [3, 3, 1]
    assert {pk for chunk in first for pk in chunk} == {str(pk) for pk in fleet.subscription_ids}
    assert second == []


# -- two beats -------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@needs_redis
def test_two_beats_started_by_mistake_charge_each_period_once(local_stripe, tmp_path):
    fleet = due_fleet(60)
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="renew due subscriptions", task="billing.tasks.renew_due_subscriptions", interval=every_2s
    )
    app.control.purge()

    with running(
        worker_start(pool="prefork", concurrency=2),
        beat_start(str(tmp_path / "beat-1")),
        beat_start(str(tmp_path / "beat-2")),
    ):
        assert wait_until(lambda: succeeded_charges(fleet) == 60, timeout=120)
        wait_until(lambda: False, timeout=6)  # three more intervals of both beats

    assert_each_period_charged_once(fleet, local_stripe)


# -- worker death ----------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@needs_redis
def test_worker_killed_mid_charge_converges_after_the_reconciler_to_one_charge(local_stripe):
    fleet = due_fleet(1)
    # Stripe charges (the answer is stored under the key), then the answer never comes back...
    local_stripe.inject("hang", path=PI_CREATE, forward=True, hang_seconds=60)
    app.control.purge()
    worker = worker_start(pool="solo")
    with running(worker):
        tasks.renew_subscriptions_chunk.apply_async(args=[[str(fleet.subscription_ids[0])]])
        assert wait_until(lambda: local_stripe.calls(outcome="fault:hang"), timeout=60)
        os.killpg(worker.pid, signal.SIGKILL)  # ...and the worker dies mid-charge
        worker.wait(timeout=10)

    attempt = PaymentAttempt.objects.get(invoice__in=renewal_invoices(fleet))
    assert attempt.status == AttemptStatus.PENDING  # committed before the call: nothing is lost

    settled = payment_attempts_reconcile(older_than=dt.timedelta(0))

    assert settled == {"succeeded": 1}
    assert_each_period_charged_once(fleet, local_stripe)  # the replay was answered from the key
    assert [c.outcome for c in local_stripe.calls(method="POST", path=PI_CREATE)] == [
        "fault:hang",
        "replayed",
    ]


@pytest.mark.django_db(transaction=True)
@needs_redis
def test_warm_shutdown_mid_charge_finishes_the_task_and_the_reconciler_settles_it(local_stripe):
    fleet = due_fleet(1)
    # Stripe charges, then the answer is lost after 3 s: the outcome is unknown to the worker.
    local_stripe.inject("hang", path=PI_CREATE, forward=True, hang_seconds=3)
    app.control.purge()
    worker = worker_start(pool="solo")
    with running(worker):
        tasks.renew_subscriptions_chunk.apply_async(args=[[str(fleet.subscription_ids[0])]])
        assert wait_until(lambda: local_stripe.calls(outcome="fault:hang"), timeout=60)
        worker.send_signal(signal.SIGTERM)  # a deploy: warm shutdown while the charge is in flight
        assert worker.wait(timeout=30) == 0

    attempt = PaymentAttempt.objects.get(invoice__in=renewal_invoices(fleet))
    assert attempt.status == AttemptStatus.UNKNOWN  # the task ran to its end before the worker left
    assert payment_attempts_reconcile(older_than=dt.timedelta(0)) == {"succeeded": 1}
    assert_each_period_charged_once(fleet, local_stripe)


# -- 429 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_429_is_never_a_failure_the_renewal_is_settled_later(local_stripe):
    fleet = due_fleet(1)
    local_stripe.inject("status_429", path=PI_CREATE)

    report = subscriptions_renew_due(at=timezone.now())

    assert (report.renewed, report.pending, report.declined, report.errors) == (0, 1, 0, [])
    attempt = PaymentAttempt.objects.get(invoice__in=renewal_invoices(fleet))
    assert attempt.status == AttemptStatus.UNKNOWN
    assert payment_attempts_reconcile(older_than=dt.timedelta(0)) == {"succeeded": 1}
    assert_each_period_charged_once(fleet, local_stripe)


# -- queries ---------------------------------------------------------------------------------------
def _queries_to_renew(count: int) -> tuple[int, int]:
    due_fleet(count)
    with CaptureQueriesContext(connection) as queries:
        report = subscriptions_renew_due(at=timezone.now(), limit=1000)
    return report.renewed, len(queries)


@pytest.mark.django_db
def test_queries_per_renewal_stay_constant(local_stripe):
    renewed_10, queries_10 = _queries_to_renew(10)
    renewed_40, queries_40 = _queries_to_renew(40)

    assert (renewed_10, renewed_40) == (10, 40)
    assert queries_40 / 40 <= queries_10 / 10  # constant per renewal; batches amortize their claim
