"""Celery wiring: settings invariants (R14), schedules in the database, a real worker over Redis."""

import ast
import datetime as dt
import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from billing import tasks
from billing.models import AttemptStatus, PaymentAttempt
from billing.services import payments
from billing.services.schedules import SCHEDULES, periodic_tasks_install
from config.celery import app
from core.models import TaskFailure
from core.task_failures import RETRY_BACKOFF_MAX_SECONDS, DeadLetterTask
from tests.billing.test_services_payments import open_purchase_invoice


def billing_tasks():
    return [task for name, task in app.tasks.items() if name.startswith("billing.tasks.")]


def test_billing_task_settings_survive_worker_loss():
    """R14: late acks, redelivery when a worker dies, prefetch 1, a hard time limit on every
    billing task, and a visibility timeout longer than any time limit plus any retry countdown."""
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert {task.name.rsplit(".", 1)[1] for task in billing_tasks()} == set(tasks.TIME_LIMITS)
    for task in billing_tasks():
        assert isinstance(task, DeadLetterTask), task.name
        assert task.acks_late in (None, True), task.name  # None: the global True applies
        assert task.time_limit and task.time_limit <= conf.task_time_limit, task.name
        assert task.soft_time_limit and task.soft_time_limit < task.time_limit, task.name
        assert task.retry_backoff_max <= settings.CELERY_TASK_MAX_COUNTDOWN_SECONDS, task.name
    longest = max(task.time_limit for task in billing_tasks())
    assert RETRY_BACKOFF_MAX_SECONDS <= settings.CELERY_TASK_MAX_COUNTDOWN_SECONDS
    if settings.CELERY_BROKER_URL.startswith("redis"):
        visibility = conf.broker_transport_options["visibility_timeout"]
        assert visibility > longest + settings.CELERY_TASK_MAX_COUNTDOWN_SECONDS


def test_no_billing_task_is_scheduled_with_an_eta_beyond_the_visibility_timeout():
    """Delays live in the database (due columns), not as broker ETAs: billing code passes no `eta`,
    and any literal `countdown` stays within the longest countdown the timeout allows for."""
    calls = [
        node
        for path in (settings.BASE_DIR / "billing").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
    ]
    keywords = [keyword for call in calls for keyword in call.keywords]
    assert not [k for k in keywords if k.arg == "eta"]
    for keyword in (k for k in keywords if k.arg == "countdown"):
        value = keyword.value
        if isinstance(value, ast.Constant):
            assert value.value <= settings.CELERY_TASK_MAX_COUNTDOWN_SECONDS
    assert all(period in ("seconds", "minutes", "hours", "days") for _, _, period in SCHEDULES.values())


def test_the_deployment_runs_exactly_one_beat():
    """R16: one scheduler by construction (two started by mistake still charge once: the fleet
    tests); no worker embeds a beat of its own (`-B`)."""
    lines = [
        line.split(":", 1)
        for line in (settings.BASE_DIR / "Procfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    commands = {name.strip(): command for name, command in lines}
    assert [name for name, command in commands.items() if " beat" in command] == ["beat"]
    assert not any(" -B" in command or "--beat" in command for command in commands.values())


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


# -- the dead letter (R17) -------------------------------------------------------------------------
@app.task(base=DeadLetterTask, name="tests.always_fails", time_limit=10, soft_time_limit=5)
def always_fails(invoice_id: str) -> None:
    raise RuntimeError(f"cannot settle {invoice_id}")


@pytest.mark.django_db
def test_a_task_failing_every_try_lands_in_the_dead_letter_after_five():
    always_fails.apply(args=["inv-1"])  # eager: the retries run at once, one inside the other

    failure = TaskFailure.objects.get()
    assert (failure.task_name, failure.args, failure.attempts) == ("tests.always_fails", ["inv-1"], 5)
    assert "RuntimeError: cannot settle inv-1" in failure.error
    assert failure.retried_at is None


@pytest.mark.django_db
def test_the_same_call_failing_again_counts_on_its_open_row():
    for _ in range(2):
        always_fails.apply(args=["inv-2"])

    assert TaskFailure.objects.get().attempts == 10


@pytest.mark.django_db
def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_not_run(monkeypatch):
    from core import task_failures

    ran = []
    monkeypatch.setattr(task_failures, "_delivery_count", lambda task: 1 + task_failures.MAX_REDELIVERIES + 1)
    monkeypatch.setattr(tasks, "payment_attempts_reconcile", lambda: ran.append(1) or {})

    tasks.reconcile_payments.apply()

    assert ran == []
    failure = TaskFailure.objects.get()
    assert failure.task_name == "billing.tasks.reconcile_payments"
    assert "worker was lost 4 times" in failure.error


@pytest.mark.django_db
def test_retry_now_in_admin_sends_the_call_again_once(
    admin_client, monkeypatch, django_capture_on_commit_callbacks
):
    from core import task_failures

    always_fails.apply(args=["inv-3"])
    failure = TaskFailure.objects.get()
    sent = []
    monkeypatch.setattr(
        task_failures.current_app, "send_task", lambda name, args, kwargs: sent.append((name, args, kwargs))
    )

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):  # a double click
            response = admin_client.post(
                reverse("admin:core_taskfailure_changelist"),
                {"action": "retry_now", "_selected_action": [failure.pk]},
            )
            assert response.status_code == 302

    assert sent == [("tests.always_fails", ["inv-3"], {})]
    failure.refresh_from_db()
    assert failure.retried_at is not None
