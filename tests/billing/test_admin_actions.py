"""Admin actions that call services: goodwill refunds, and starting a resale."""

import pytest

from billing.models import Entitlement, PaymentAttempt, Refund
from tests.billing.api_helpers import add_card, catalog_world, owner_client, post

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]
CHANGELIST = "/admin/billing/paymentattempt/"


def test_admin_refunds_what_is_left_once_and_keeps_the_feature(admin_client, stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    attempt = PaymentAttempt.objects.get()
    action = {"action": "refund_in_full", "_selected_action": [str(attempt.pk)]}

    first = admin_client.post(CHANGELIST, action, follow=True)
    second = admin_client.post(CHANGELIST, action, follow=True)

    assert "refund of EUR 199.00 succeeded" in first.content.decode()
    assert "already fully refunded" in second.content.decode()
    refund = Refund.objects.get()
    assert (refund.amount_minor, refund.status) == (19_900, "succeeded")
    assert len(stripe_proxy.calls(method="POST", path="/v1/refunds")) == 1
    assert Entitlement.objects.filter(vehicle=vehicle, ends_at__isnull=True).exists()


def test_admin_starts_a_transfer_for_the_current_owner_and_the_buyer_claims_it(admin_client):
    import re

    from tests.factories import OwnerFactory

    owner, vehicle = catalog_world()
    page = admin_client.post(
        "/admin/vehicles/vehicle/",
        {"action": "start_vehicle_transfer", "_selected_action": [str(vehicle.pk)]},
        follow=True,
    ).content.decode()
    code = re.search(r"transfer code (\w+)", page).group(1)
    buyer = owner_client(OwnerFactory())

    claimed = buyer.post("/api/v1/me/transfers/claim/", {"vin": vehicle.vin, "code": code}, format="json")

    assert claimed.status_code == 200, claimed.json()
    assert owner_client(owner).get(f"/api/v1/me/vehicles/{vehicle.pk}/").status_code == 404


def test_admin_grants_the_offers_included_with_a_new_car(admin_client):
    from tests.factories import FeatureFactory, OfferFactory, VehicleFactory

    vehicle = VehicleFactory()
    OfferFactory(
        code="connectivity_included",
        subscription=True,
        included_months_with_new_car=36,
        features=[FeatureFactory(code="premium_connectivity")],
    )

    page = admin_client.post(
        "/admin/vehicles/vehicle/",
        {"action": "grant_included_offers", "_selected_action": [str(vehicle.pk)]},
        follow=True,
    ).content.decode()

    assert "included premium_connectivity" in page
    entitlement = Entitlement.objects.get(vehicle=vehicle, source="included")
    assert entitlement.starts_at == vehicle.delivered_at
    assert entitlement.ends_at.year == vehicle.delivered_at.year + 3
