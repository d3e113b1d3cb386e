"""Admin of outgoing events: an endpoint's secret is shown once, a failing endpoint is an alert,
and "resend" sends the same event (same webhook-id) again."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from events.models import Delivery, DeliveryStatus, EventEndpoint, EventType
from events.services import event_record
from events.services.delivery import deliveries_send_due
from events.services.endpoints import endpoint_disable

pytestmark = pytest.mark.django_db


def test_admin_resend_creates_a_new_delivery_of_the_same_event_id(admin_client, receiver, endpoint):
    event = event_record(type=EventType.INVOICE_PAID, payload={"invoice": "1"}, ordering_key="car-1")
    deliveries_send_due()
    first = Delivery.objects.get()
    assert first.status == DeliveryStatus.DELIVERED

    response = admin_client.post(
        reverse("admin:events_delivery_changelist"),
        {"action": "resend", "_selected_action": [first.pk]},
        follow=True,
    )

    assert response.status_code == 200
    resent = Delivery.objects.exclude(pk=first.pk).get()
    assert (resent.event_id, resent.endpoint_id, resent.resend_of_id) == (event.pk, endpoint.pk, first.pk)
    assert resent.status == DeliveryStatus.PENDING
    assert deliveries_send_due().delivered == 1
    assert receiver.accepted_ids() == [str(event.pk), str(event.pk)]
    assert all(r.verified for r in receiver.received)
    log = admin_client.get(reverse("admin:events_delivery_change", args=[resent.pk])).content.decode()
    assert str(event.pk) in log and "200" in log


def test_an_endpoint_added_in_admin_shows_its_secret_once(admin_client):
    response = admin_client.post(
        reverse("admin:events_eventendpoint_add"),
        {"url": "https://crm.carmaker.example/hooks", "description": "CRM", "event_types": ["invoice.paid"]},
        follow=True,
    )

    endpoint = EventEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_") and endpoint.event_types == ["invoice.paid"]
    assert endpoint.secret in response.content.decode()
    change = admin_client.get(reverse("admin:events_eventendpoint_change", args=[endpoint.pk]))
    assert change.status_code == 200 and endpoint.secret not in change.content.decode()


def test_an_endpoint_url_that_is_not_http_is_refused_in_admin(admin_client):
    response = admin_client.post(
        reverse("admin:events_eventendpoint_add"), {"url": "ftp://crm.carmaker.example/", "description": ""}
    )

    assert response.status_code == 200  # the form again, with its error
    assert not EventEndpoint.objects.exists()


def test_an_endpoint_disabled_after_failing_is_an_alert_in_admin(admin_client, endpoint):
    endpoint_disable(
        endpoint=endpoint, at=timezone.now(), reason="Disabled after 30 failed deliveries in a row"
    )

    for page in ("admin:events_eventendpoint_changelist", "admin:events_delivery_changelist"):
        content = admin_client.get(reverse(page)).content.decode()
        assert "disabled after repeated failure" in content and "30 failed deliveries" in content

    admin_client.post(
        reverse("admin:events_eventendpoint_changelist"),
        {"action": "enable_endpoints", "_selected_action": [endpoint.pk]},
    )
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.disabled_reason == ""


def test_rotating_the_secret_shows_the_new_one_once(admin_client, endpoint):
    old = endpoint.secret
    response = admin_client.post(
        reverse("admin:events_eventendpoint_changelist"),
        {"action": "rotate_secret", "_selected_action": [endpoint.pk]},
        follow=True,
    )

    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.secret in response.content.decode()


def test_the_outbox_pages_render(admin_client, endpoint):
    event = event_record(
        type=EventType.TRIAL_ENDING, payload={"trial_end": "2027-01-01T00:00:00Z"}, ordering_key=None
    )
    Delivery.objects.update(next_attempt_at=timezone.now() + dt.timedelta(hours=1))

    assert admin_client.get(reverse("admin:events_outboxevent_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:events_outboxevent_change", args=[event.pk]))
    assert page.status_code == 200 and "trial_end" in page.content.decode()
