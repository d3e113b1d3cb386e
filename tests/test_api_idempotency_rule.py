"""One Idempotency-Key rule: every POST that can move money or mint a one-time secret refuses to run
without the header (400 `idempotency_key_required`) and changes nothing; pure toggles run without it."""

from __future__ import annotations

import pytest

from billing.models import Invoice, PaymentAttempt, PaymentMethod, Purchase, Subscription
from core.models import IdempotencyRecord
from tests.billing.api_helpers import add_card, buy, catalog_world, owner_client, subscribe_paid
from tests.factories import VehicleFactory
from tests.test_api_schema import MONEY_POSTS
from vehicles.models import VehicleTransfer

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]


def counts() -> tuple[int, ...]:
    models = (Purchase, Subscription, Invoice, PaymentAttempt, PaymentMethod, VehicleTransfer)
    return (*(m.objects.count() for m in models), IdempotencyRecord.objects.count())


@pytest.fixture
def world(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    subscription = subscribe_paid(client, vehicle)
    twin = VehicleFactory(owner=owner, market=vehicle.market, capabilities=list(vehicle.capabilities.all()))
    purchase = buy(client, twin)
    payment = PaymentAttempt.objects.filter(invoice__purchase__pk=purchase["id"]).get()
    ids = {
        "vehicles": vehicle.pk,
        "subscriptions": subscription["id"],
        "purchases": purchase["id"],
        "payments": payment.pk,
        "invoices": payment.invoice_id,
    }
    return client, ids


def _url(template: str, ids: dict) -> str:
    collection = template.split("/me/", 1)[1].split("/", 1)[0]
    return template.replace("{id}", str(ids.get(collection, "")))


@pytest.mark.parametrize("template", sorted(p for p in MONEY_POSTS if "/me/" in p))  # owners' routes
def test_a_money_or_secret_post_without_idempotency_key_is_400_and_changes_nothing(
    world, stripe_proxy, template
):
    client, ids = world
    before, calls = counts(), len(stripe_proxy.calls())
    body = {"offer": "heated_seats_monthly"} if template.endswith(("purchases/", "subscriptions/")) else {}
    if template.endswith("/change/"):
        body = {"offer": "heated_seats_unlock"}

    response = client.post(_url(template, ids), body, format="json")

    assert response.status_code == 400, (template, response.status_code, response.content[:300])
    assert response.json()["code"] == "idempotency_key_required"
    assert counts() == before and len(stripe_proxy.calls()) == calls


def test_reads_and_pure_toggles_run_without_a_key(world):
    client, ids = world
    subscription = ids["subscriptions"]
    method = PaymentMethod.objects.get()

    default = client.post(f"/api/v1/me/payment-methods/{method.pk}/default/")
    others = [
        client.post(f"/api/v1/me/subscriptions/{subscription}/resume/"),  # not canceled: 422
        client.post(
            f"/api/v1/me/subscriptions/{subscription}/change-preview/", {"offer": "nope"}, format="json"
        ),
        client.post("/api/v1/me/transfers/claim/", {"vin": "W" * 17, "code": "WRONG"}, format="json"),
    ]

    assert default.status_code == 200, default.json()
    for response in others:
        assert response.json()["code"] != "idempotency_key_required", response.json()
