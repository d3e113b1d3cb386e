"""Audit history (django-pghistory triggers, PostgreSQL): an operator's admin changes appear
per object in admin with who, when and from which request; bulk updates are seen too; the
entitlements a refund revokes are ended, never deleted; secrets are never copied."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from billing.models import Entitlement, PaymentAttempt, Price, Refund
from billing.services.demo_data import demo_data_seed
from reports.models import EntitlementEvent, PaymentAttemptEvent, PriceEvent, RefundEvent
from tests.billing.api_helpers import add_card, catalog_world, owner_client, post

pytestmark = pytest.mark.django_db
REQUEST_ID = "audit-test-request-0001"

needs_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="triggers: PostgreSQL only")


def context_of(event) -> dict:
    return event.pgh_context.metadata if event.pgh_context_id else {}


@needs_postgres
def test_an_admin_price_change_is_in_the_history_with_its_operator(admin_client, admin_user):
    demo_data_seed()
    price = Price.objects.get(offer__code="heated_seats_monthly", market__code="DE", version=1)
    url = f"/admin/billing/price/{price.pk}/change/"

    response = admin_client.post(
        url, {"valid_from_0": "2025-01-02", "valid_from_1": "00:00:00"}, HTTP_X_REQUEST_ID=REQUEST_ID
    )

    assert response.status_code == 302
    update = PriceEvent.objects.select_related("pgh_context").get(pgh_obj_id=price.pk, pgh_label="update")
    assert context_of(update) == {"user": admin_user.pk, "url": url, "request_id": REQUEST_ID}
    page = admin_client.get(url).content.decode()
    assert "Audit history" in page and REQUEST_ID in page and admin_user.username in page
    assert "valid_from: 2025-01-01 00:00:00+00:00 → 2025-01-02 00:00:00+00:00" in page


@needs_postgres
@pytest.mark.stripe
def test_an_admin_refund_is_in_the_history_with_its_operator_and_ends_rights(
    admin_client, admin_user, stripe_proxy
):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    attempt = PaymentAttempt.objects.get()
    url = f"/admin/billing/paymentattempt/{attempt.pk}/refund/"

    admin_client.post(
        url, {"amount": "199.00", "reason": "faulty", "revoke_rights": "on"}, HTTP_X_REQUEST_ID=REQUEST_ID
    )

    refund = Refund.objects.get()
    assert refund.status == "succeeded"
    events = RefundEvent.objects.filter(pgh_obj_id=refund.pk).select_related("pgh_context")
    assert {e.pgh_label for e in events} >= {"insert", "update"}
    assert {context_of(e)["user"] for e in events} == {admin_user.pk}
    assert {context_of(e)["request_id"] for e in events} == {REQUEST_ID}
    page = admin_client.get(f"/admin/billing/refund/{refund.pk}/change/").content.decode()
    assert admin_user.username in page and REQUEST_ID in page and "status: pending → succeeded" in page
    # The purchase's rights ended (the row stays, its change is in the history)...
    entitlement = Entitlement.objects.get(vehicle=vehicle)
    assert entitlement.ends_at is not None
    assert EntitlementEvent.objects.filter(pgh_obj_id=entitlement.pk, pgh_label="update").exists()
    assert not EntitlementEvent.objects.filter(pgh_label="delete").exists()
    # ... and the payment's client secret never reached the history.
    assert "client_secret" not in {f.name for f in PaymentAttemptEvent._meta.fields}


@needs_postgres
def test_bulk_updates_are_recorded_without_a_request():
    demo_data_seed()
    Price.objects.filter(offer__code="wifi_hotspot_monthly").update(valid_from="2025-02-01T00:00:00Z")
    updates = PriceEvent.objects.filter(pgh_label="update")
    assert updates.count() == Price.objects.filter(offer__code="wifi_hotspot_monthly").count() > 0
    assert all(e.pgh_context_id is None for e in updates)  # no request: shown as "system"


def test_users_in_the_history_are_looked_up_once(admin_client, django_assert_max_num_queries):
    demo_data_seed()
    price = Price.objects.first()
    for _ in range(5):
        admin_client.post(
            f"/admin/billing/price/{price.pk}/change/",
            {"valid_from_0": "2025-01-03", "valid_from_1": "00:00:00"},
        )
    get_user_model().objects.create_user("other-operator", is_staff=True)
    with django_assert_max_num_queries(20):
        assert admin_client.get(f"/admin/billing/price/{price.pk}/change/").status_code == 200
