"""Outgoing events: recorded with the change or not at all, delivered at least once with
Standard Webhooks signatures, in commit order per vehicle, through receiver outages and worker
crashes (same webhook-id), with backoff for three days, then dead and the endpoint disabled."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import threading
import time
import uuid

import pytest
import time_machine
from django.db import transaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.errors import ValidationError
from events.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    EventEndpoint,
    EventType,
    OutboxEvent,
)
from events.services import delivery as delivery_module
from events.services import event_record
from events.services.delivery import (
    BACKOFF_CAP,
    LEASE,
    RETRY_WINDOW,
    Outcome,
    deliveries_send_due,
    delivery_backoff,
    delivery_claim_next,
    delivery_record,
    delivery_send,
)
from events.services.endpoints import (
    ROTATION_OVERLAP,
    endpoint_create,
    endpoint_enable,
    endpoint_secret_rotate,
    endpoint_url_validate,
)
from events.services.outbox import KEEP_EVENTS, outbox_events_purge
from tests.concurrency import run_concurrently

UTC = dt.UTC
START = dt.datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
VEHICLE = "6f1c1d7e-0000-4000-8000-000000000001"


def record(n: int = 1, *, key: str | None = VEHICLE, type: str = EventType.ENTITLEMENT_GRANTED) -> list:
    with transaction.atomic():
        return [event_record(type=type, payload={"n": i}, ordering_key=key) for i in range(n)]


def send_until_settled(traveller, *, step: dt.timedelta, max_steps: int = 10_000) -> int:
    """Run the minute sweep, moving the clock by `step` while anything is unsettled."""
    for steps in range(max_steps):
        deliveries_send_due()
        if not Delivery.objects.filter(status__in=["pending", "failed"], endpoint__enabled=True).exists():
            return steps
        traveller.shift(step)
    raise AssertionError("deliveries did not settle")


@pytest.mark.django_db
def test_a_standardwebhooks_receiver_verifies_every_delivery(receiver, endpoint):
    events = []
    with transaction.atomic():
        for i, event_type in enumerate(EventType.values):
            events.append(
                event_record(
                    type=event_type,
                    payload={"n": i, "amount": {"amount_minor": 999, "currency": "EUR"}},
                    ordering_key=VEHICLE,
                )
            )

    report = deliveries_send_due()

    assert report.delivered == len(EventType.values)
    assert [r.msg_id for r in receiver.received] == [str(e.id) for e in events]
    assert all(r.verified and r.answered == 200 for r in receiver.received)
    first = receiver.received[0]
    assert first.event == {
        "type": "entitlement.granted",
        "timestamp": events[0].created_at.isoformat().replace("+00:00", "Z"),
        "data": {"n": 0, "amount": {"amount_minor": 999, "currency": "EUR"}},
    }
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # the check is real: another secret or one changed byte fails
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint_create(url=receiver.url)[1]).verify(first.body, first.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver.secret).verify(first.body.replace(b'"n":0', b'"n":1'), first.headers)
    assert Delivery.objects.filter(status=DeliveryStatus.DELIVERED).count() == len(EventType.values)
    assert DeliveryAttempt.objects.filter(succeeded=True).count() == len(EventType.values)


@pytest.mark.django_db
def test_a_rolled_back_transaction_records_no_event(endpoint, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        event_record(type=EventType.INVOICE_PAID, payload={"invoice": "x"}, ordering_key=VEHICLE)
        raise RuntimeError("the change fails")

    assert OutboxEvent.objects.count() == 0
    assert Delivery.objects.count() == 0
    assert callbacks == []


@pytest.mark.django_db
def test_a_committed_event_enqueues_one_delivery_task_on_commit(endpoint, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        (event,) = record()

    assert len(callbacks) == 1
    assert Delivery.objects.get().event == event


@pytest.mark.django_db
def test_only_enabled_endpoints_of_the_type_get_a_delivery(receiver, endpoint):
    only_invoices, _ = endpoint_create(url=receiver.url, event_types=[EventType.INVOICE_PAID])
    EventEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)

    record(type=EventType.ENTITLEMENT_REVOKED)
    record(type=EventType.INVOICE_PAID)

    assert list(Delivery.objects.values_list("endpoint_id", "event__type")) == [
        (only_invoices.pk, EventType.INVOICE_PAID)
    ]
    with pytest.raises(ValueError):
        record(type="invoice.exploded")


@pytest.mark.django_db(transaction=True)
def test_events_of_one_vehicle_arrive_in_commit_order(receiver, endpoint):
    """Four writers record events of one car in overlapping transactions; three workers send
    them while the receiver refuses some first tries: it accepts them in commit order."""
    committed: list[str] = []
    lock = threading.Lock()

    def writer(_: int) -> None:
        for _ in range(5):
            block = transaction.atomic()
            block.__enter__()
            event_record(type=EventType.INVOICE_PAID, payload={}, ordering_key=str(uuid.uuid4()))
            event = event_record(type=EventType.SUBSCRIPTION_UPDATED, payload={}, ordering_key=VEHICLE)
            time.sleep(random.uniform(0.001, 0.01))
            with lock:  # commit and note the commit order as one step
                block.__exit__(None, None, None)
                committed.append(str(event.id))

    run_concurrently(writer, threads=4)
    assert len(committed) == 20
    sequences = dict(OutboxEvent.objects.filter(ordering_key=VEHICLE).values_list("id", "sequence"))
    assert [sequences[uuid.UUID(i)] for i in committed] == list(range(1, 21))

    refused_first = set(random.Random(7).sample(committed, 5))
    receiver.answer = lambda msg_id, seen: 503 if msg_id in refused_first and seen == 0 else 200

    with time_machine.travel(dt.datetime.now(tz=UTC), tick=False) as traveller:
        for _ in range(60):
            run_concurrently(lambda _: deliveries_send_due(), threads=3)
            if Delivery.objects.filter(ordering_key=VEHICLE, status=DeliveryStatus.DELIVERED).count() == 20:
                break
            traveller.shift(dt.timedelta(minutes=5))

    vehicle_ids = set(committed)
    accepted = [i for i in receiver.accepted_ids() if i in vehicle_ids]
    assert accepted == committed
    # nothing of a later event was even sent while an earlier one was not delivered
    delivered: set[str] = set()
    for request in (r for r in receiver.received if r.msg_id in vehicle_ids):
        assert set(committed[: committed.index(request.msg_id)]) <= delivered
        if request.answered == 200:
            delivered.add(request.msg_id)
    assert all(r.verified for r in receiver.received)


@pytest.mark.django_db
def test_a_receiver_down_for_an_hour_gets_every_event_after_it_returns(receiver, endpoint):
    with time_machine.travel(START, tick=False) as traveller:
        events = record(3) + record(2, key="another-car")
        receiver.answer = lambda msg_id, seen: (
            503 if dt.datetime.now(tz=UTC) < START + dt.timedelta(hours=1) else 200
        )

        send_until_settled(traveller, step=dt.timedelta(minutes=1))
        back_at = dt.datetime.now(tz=UTC)

    ids = [str(e.id) for e in events]
    assert sorted(receiver.accepted_ids()) == sorted(ids)  # each once, by the same id it was refused with
    refused = {r.msg_id for r in receiver.received if r.answered == 503}
    assert refused <= set(ids) and refused
    assert all(r.verified for r in receiver.received)
    assert START + dt.timedelta(hours=1) <= back_at < START + dt.timedelta(hours=3)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.consecutive_failures == 0 and endpoint.last_success_at


@pytest.mark.django_db
def test_a_worker_killed_mid_delivery_delivers_again_with_the_same_webhook_id(receiver, endpoint):
    with time_machine.travel(START, tick=False) as traveller:
        (event,) = record()
        crashed = delivery_claim_next()  # the worker claims ...
        delivery_send(crashed)  # ... sends, and dies before recording

        assert deliveries_send_due().sent == 0  # its lease still holds
        traveller.shift(LEASE + dt.timedelta(seconds=1))
        assert deliveries_send_due().delivered == 1

        assert receiver.accepted_ids() == [str(event.id), str(event.id)]  # the receiver dedupes on it
        # the dead worker's late answer changes nothing
        assert delivery_record(claim=crashed, outcome=Outcome(succeeded=False, error="late")) is None
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 1


@pytest.mark.django_db
def test_a_worker_killed_after_claiming_leaves_it_to_the_sweep_after_the_lease(receiver, endpoint):
    with time_machine.travel(START, tick=False) as traveller:
        (event,) = record()
        assert delivery_claim_next() is not None  # claimed, then the worker is killed

        traveller.shift(LEASE - dt.timedelta(seconds=1))
        assert deliveries_send_due().sent == 0
        traveller.shift(dt.timedelta(seconds=2))
        assert deliveries_send_due().delivered == 1

    assert receiver.accepted_ids() == [str(event.id)]


def test_backoff_doubles_from_thirty_seconds_up_to_four_hours_with_jitter():
    assert [delivery_backoff(n, rand=0.5) for n in (1, 2, 3, 4)] == [
        dt.timedelta(seconds=s) for s in (30, 60, 120, 240)
    ]
    assert delivery_backoff(20, rand=0.5) == BACKOFF_CAP
    assert delivery_backoff(1, rand=0.0) == dt.timedelta(seconds=24)
    assert delivery_backoff(1, rand=1.0) == dt.timedelta(seconds=36)
    draws = {delivery_backoff(5) for _ in range(20)}
    assert len(draws) > 1 and all(dt.timedelta(minutes=6.4) <= d <= dt.timedelta(minutes=9.6) for d in draws)


@pytest.mark.django_db
def test_retries_follow_the_backoff_for_three_days_then_the_delivery_is_dead_and_the_endpoint_disabled(
    receiver, endpoint
):
    receiver.answer = lambda msg_id, seen: 503
    with time_machine.travel(START, tick=False) as traveller:
        (event,) = record()
        while True:
            deliveries_send_due()
            delivery = Delivery.objects.get()
            if delivery.status == DeliveryStatus.DEAD:
                break
            traveller.move_to(delivery.next_attempt_at)

    log = list(DeliveryAttempt.objects.order_by("attempted_at").values_list("attempted_at", flat=True))
    gaps = [b - a for a, b in itertools.pairwise(log)]
    for n, gap in enumerate(gaps, start=1):
        nominal = min(dt.timedelta(seconds=30) * 2 ** (n - 1), BACKOFF_CAP)
        assert nominal * 0.8 <= gap <= nominal * 1.2 + dt.timedelta(seconds=1)
    assert log[0] == START
    assert START + RETRY_WINDOW <= log[-1] < START + RETRY_WINDOW + BACKOFF_CAP * 1.2
    assert delivery.attempts == len(log) == len(receiver.received)
    assert 20 <= delivery.attempts <= 35
    assert {r.msg_id for r in receiver.received} == {str(event.id)}
    assert delivery.last_status_code == 503 and "HTTP 503" in delivery.last_error

    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "failed deliveries in a row" in endpoint.disabled_reason
    # while disabled nothing is sent; new events do not queue for it
    record()
    assert Delivery.objects.count() == 1
    # the operator enables it again: it works from then on
    endpoint_enable(endpoint=endpoint, at=dt.datetime.now(tz=UTC))
    receiver.answer = lambda msg_id, seen: 200
    (later,) = record()
    assert deliveries_send_due().delivered == 1
    assert receiver.accepted_ids() == [str(later.id)]


@pytest.mark.django_db
def test_one_failing_endpoint_does_not_hold_back_another(receiver, endpoint):
    broken, _ = endpoint_create(url="http://127.0.0.1:9/nothing-listens")
    record(3)

    report = deliveries_send_due()

    assert report.delivered == 3 and report.failed == 1  # the broken one's head waits, its followers too
    assert Delivery.objects.filter(endpoint=broken, status=DeliveryStatus.PENDING).count() == 2
    assert "ConnectionError" in Delivery.objects.get(endpoint=broken, status=DeliveryStatus.FAILED).last_error


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "http://127.0.0.1:8000/",
        "http://localhost/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://user:pass@hooks.example.com/",
        "hooks.example.com/no-scheme",
    ],
)
def test_endpoints_refuse_non_http_and_private_addresses_in_production(settings, url):
    settings.EVENTS_ALLOW_PRIVATE_URLS = False

    with pytest.raises(ValidationError):
        endpoint_create(url=url)


@pytest.mark.django_db
def test_a_name_resolving_to_a_private_address_is_not_called_in_production(settings, receiver):
    endpoint, _ = endpoint_create(url=receiver.url.replace("127.0.0.1", "localhost"))
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    assert endpoint_url_validate("https://hooks.example.com/billing")

    record()
    deliveries_send_due()

    delivery = Delivery.objects.get(endpoint=endpoint)
    assert delivery.status == DeliveryStatus.FAILED and "not public" in delivery.last_error
    assert receiver.received == []


@pytest.mark.django_db
def test_payloads_are_plain_json(endpoint):
    event = event_record(
        type=EventType.TRIAL_ENDING,
        payload={"at": START, "id": uuid.UUID(int=1)},
        ordering_key=None,
    )

    assert event.payload == {"at": "2027-03-01T08:00:00Z", "id": str(uuid.UUID(int=1))}
    assert json.loads(json.dumps(event.payload)) == event.payload
    assert event.sequence is None


@pytest.mark.django_db
def test_after_a_secret_rotation_both_secrets_verify_for_a_day_then_only_the_new(receiver, endpoint):
    old = receiver.secret
    with time_machine.travel(START, tick=False) as traveller:
        new = endpoint_secret_rotate(endpoint=endpoint, at=START)
        record()
        deliveries_send_due()
        first = receiver.received[-1]
        Webhook(old).verify(first.body, first.headers)  # a receiver not yet switched still accepts
        Webhook(new).verify(first.body, first.headers)

        traveller.shift(ROTATION_OVERLAP)
        receiver.secret = new
        record()
        deliveries_send_due()
        second = receiver.received[-1]
        Webhook(new).verify(second.body, second.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(second.body, second.headers)
    assert new != old and all(r.verified for r in receiver.received)


@pytest.mark.django_db
def test_old_settled_events_are_purged_and_unsettled_ones_kept(receiver, endpoint):
    with time_machine.travel(START, tick=False) as traveller:
        delivered = record()
        deliveries_send_due()
        waiting = record(key="car-down")  # not sent yet
        no_endpoint = event_record(type=EventType.TRIAL_ENDING, payload={}, ordering_key=None)
        Delivery.objects.filter(event=no_endpoint).delete()

        traveller.shift(KEEP_EVENTS + dt.timedelta(seconds=1))
        assert outbox_events_purge(at=dt.datetime.now(tz=UTC)) == 2

    assert list(OutboxEvent.objects.values_list("pk", flat=True)) == [waiting[0].pk]
    assert not Delivery.objects.filter(event=delivered[0]).exists()


@pytest.mark.django_db
def test_a_name_that_rebinds_to_a_private_address_is_refused_on_the_connected_socket(
    settings, receiver, endpoint, monkeypatch
):
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    # the name looked public when checked, then resolves to loopback when connecting
    monkeypatch.setattr(delivery_module, "endpoint_url_resolves_publicly", lambda url: None)

    record()
    deliveries_send_due()

    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and "not a public address" in delivery.last_error
    assert receiver.received == []
