"""Buying and subscribing through the owner API, charged through localstripe."""

import pytest

from billing.models import AttemptStatus, Entitlement, Invoice, PaymentAttempt, Purchase, Subscription
from tests.billing.api_helpers import (
    CARD_3DS,
    CARD_DECLINED_AT_CHARGE,
    add_card,
    catalog_world,
    localstripe_card,
    owner_client,
    post,
    vehicle_client,
)

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]


def test_buy_unlock_charges_once_and_the_car_sees_the_feature(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})

    body = response.json()
    assert response.status_code == 201, body
    assert body["status"] == "succeeded"
    assert body["purchase"]["status"] == "paid"
    assert body["invoice"]["total"] == {"amount_minor": 19900, "currency": "EUR", "formatted": "EUR 199.00"}
    assert body["invoice"]["status"] == "paid"
    assert len(stripe_proxy.calls(method="POST", path="/v1/payment_intents")) == 1
    features = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]
    assert features == [{"code": "heated_seats", "valid_until": None, "sources": ["purchase"]}]


def test_declined_card_grants_nothing(stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_DECLINED_AT_CHARGE))

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})

    assert response.status_code == 402, response.json()
    assert response.json()["code"] == "payment_declined"
    assert not Entitlement.objects.exists()
    assert Purchase.objects.get().status == "failed"
    assert Invoice.objects.get().status == "void"
    assert PaymentAttempt.objects.get().status == AttemptStatus.DECLINED


def test_three_d_secure_returns_client_secret_then_confirm_grants(stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})

    body = response.json()
    assert response.status_code == 202, body
    assert body["status"] == "requires_action"
    assert body["payment"]["client_secret"]
    assert not Entitlement.objects.exists()
    payment_intent = PaymentAttempt.objects.get().stripe_payment_intent_id
    stripe_proxy_authenticate(localstripe_url, payment_intent, body["payment"]["client_secret"])
    confirmed = post(client, f"/api/v1/me/payments/{body['payment']['id']}/confirm/")
    assert confirmed.json()["status"] == "succeeded"
    assert Entitlement.objects.filter(vehicle=vehicle, feature__code="heated_seats").exists()


def stripe_proxy_authenticate(base: str, payment_intent: str, client_secret: str) -> None:
    """What the customer does in the app: pass the 3-D Secure challenge."""
    import urllib.parse
    import urllib.request

    request = urllib.request.Request(
        f"{base}/v1/payment_intents/{payment_intent}/_authenticate",
        data=urllib.parse.urlencode({"success": "true", "client_secret": client_secret}).encode(),
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def test_subscription_starts_with_trial_once_per_vehicle_and_feature(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    url = f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/"

    first = post(client, url, {"offer": "heated_seats_monthly"})
    assert first.status_code == 201, first.json()
    assert first.json()["status"] == "trialing"
    assert not stripe_proxy.calls(method="POST", path="/v1/payment_intents")
    cancel = post(client, f"/api/v1/me/subscriptions/{first.json()['subscription']['id']}/cancel/")
    assert cancel.status_code == 200, cancel.json()

    again = post(client, url, {"offer": "heated_seats_monthly", "trial": True})

    assert again.status_code == 422
    assert again.json()["code"] == "trial_already_used"


def test_paid_subscription_without_trial(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = post(
        client,
        f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/",
        {"offer": "heated_seats_monthly", "trial": False},
    )

    body = response.json()
    assert response.status_code == 201, body
    assert body["subscription"]["status"] == "active"
    subscription = Subscription.objects.get()
    entitlement = Entitlement.objects.get(subscription=subscription)
    assert (entitlement.starts_at, entitlement.ends_at) == (
        subscription.current_period_start,
        subscription.current_period_end,
    )
    duplicate = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "heated_seats_monthly"}
    )
    assert duplicate.json()["code"] == "already_subscribed"


def test_same_idempotency_key_replays_without_a_second_charge(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    url = f"/api/v1/me/vehicles/{vehicle.pk}/purchases/"

    first = post(client, url, {"offer": "heated_seats_unlock"}, key="buy-seats-1")
    second = post(client, url, {"offer": "heated_seats_unlock"}, key="buy-seats-1")
    changed = post(client, url, {"offer": "heated_seats_monthly"}, key="buy-seats-1")

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert changed.status_code == 422
    assert changed.json()["code"] == "idempotency_key_reused"
    assert len(stripe_proxy.calls(method="POST", path="/v1/payment_intents")) == 1
    assert PaymentAttempt.objects.count() == 1


def test_incompatible_vehicle_is_refused_with_reasons(stripe_proxy):
    owner, vehicle = catalog_world()
    vehicle.capabilities.clear()
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})

    assert response.status_code == 422
    assert response.json()["code"] == "feature_incompatible"
    assert "heated_seat_hw" in response.json()["details"]["reasons"][0]
    assert not Purchase.objects.exists()


def test_timeout_leaves_payment_unknown_and_grants_nothing_until_reconciled(stripe_proxy):
    from billing.services.payments import payment_attempts_reconcile

    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    stripe_proxy.inject("drop", path="/v1/payment_intents")

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})

    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "processing"
    assert PaymentAttempt.objects.get().status == AttemptStatus.UNKNOWN
    assert not Entitlement.objects.exists()

    assert payment_attempts_reconcile(older_than=__import__("datetime").timedelta(0)) == {"succeeded": 1}
    keys = {c.idempotency_key for c in stripe_proxy.calls(method="POST", path="/v1/payment_intents")}
    assert len(keys) == 1
    assert Entitlement.objects.filter(vehicle=vehicle).count() == 1
