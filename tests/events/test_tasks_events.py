"""The outbox's Celery wiring: a committed event reaches the receiver through a real worker over
Redis (enqueued on commit), the tasks are thin, and the sweep is a schedule."""

from __future__ import annotations

import pytest
from django.db import transaction

from billing.services.schedules import SCHEDULES
from config.celery import app
from events import tasks
from events.models import EventType
from events.services import event_record
from tests.billing.celery_helpers import REQUIRES_REDIS, running, uses_redis_broker, wait_until, worker_start


@pytest.mark.django_db
def test_the_tasks_send_an_event_and_sweep_what_is_due(receiver, endpoint):
    first = event_record(type=EventType.INVOICE_PAID, payload={}, ordering_key="car-1")
    second = event_record(type=EventType.INVOICE_PAID, payload={}, ordering_key="car-2")

    assert tasks.deliver_event.apply(args=[str(first.pk)]).get()["delivered"] == 1
    assert tasks.send_due_deliveries.apply().get()["delivered"] == 1
    assert receiver.accepted_ids() == [str(first.pk), str(second.pk)]
    assert tasks.purge_outbox_events.apply().get() == 0


def test_the_minute_sweep_and_the_daily_purge_are_scheduled():
    tasks_scheduled = {task: (every, period) for task, every, period in SCHEDULES.values()}

    assert tasks_scheduled["events.tasks.send_due_deliveries"] == (1, "minutes")
    assert tasks_scheduled["events.tasks.purge_outbox_events"] == (1, "days")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_redis_broker(), reason=REQUIRES_REDIS)
def test_a_real_worker_delivers_an_event_right_after_its_commit(receiver, endpoint):
    app.control.purge()
    with running(worker_start()):
        with transaction.atomic():
            event = event_record(
                type=EventType.ENTITLEMENT_GRANTED, payload={"features": ["x"]}, ordering_key="car"
            )

        assert wait_until(lambda: receiver.accepted_ids() == [str(event.pk)], timeout=45)
    assert all(r.verified for r in receiver.received)
