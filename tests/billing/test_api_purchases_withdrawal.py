"""One-time purchases: withdrawal within the market's period, refusals, and input validation."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import (
    Entitlement,
    Invoice,
    PaymentAttempt,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from tests.billing.api_helpers import (
    add_card,
    buy,
    catalog_world,
    owner_client,
    post,
    results,
    vehicle_feature_codes,
)
from tests.factories import FeatureFactory, MarketFactory, OfferFactory, OwnerFactory, PriceFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

PI = "/v1/payment_intents"


def _bought(*, market=None):
    owner, vehicle = catalog_world(market=market)
    client = owner_client(owner)
    add_card(client)
    purchase = Purchase.objects.get(pk=buy(client, vehicle)["id"])
    return owner, vehicle, purchase


def test_withdraw_within_the_period_refunds_in_full_and_removes_the_feature(stripe_proxy):
    owner, vehicle, purchase = _bought()
    assert vehicle_feature_codes(vehicle) == ["heated_seats"]

    with time_machine.travel(purchase.paid_at + dt.timedelta(days=13), tick=True):
        response = post(owner_client(owner), f"/api/v1/me/purchases/{purchase.pk}/withdraw/")
        features = vehicle_feature_codes(vehicle)

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "refunded"
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.REFUNDED
    refund = Refund.objects.get()
    assert (refund.status, refund.amount_minor, refund.currency, refund.reason) == (
        RefundStatus.SUCCEEDED,
        19_900,
        "EUR",
        "withdrawal",
    )
    assert refund.payment_attempt == PaymentAttempt.objects.get(invoice__purchase=purchase)
    calls = stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert [c.idempotency_key for c in calls] == [refund.idempotency_key]
    assert calls[0].form["amount"] == "19900"
    assert features == []
    entitlement = Entitlement.objects.get(purchase=purchase)
    assert entitlement.ends_at is not None and entitlement.ends_at > entitlement.starts_at


def test_withdraw_twice_refunds_once(stripe_proxy):
    owner, _, purchase = _bought()
    client = owner_client(owner)
    url = f"/api/v1/me/purchases/{purchase.pk}/withdraw/"

    first = post(client, url, key="withdraw-1")
    replay = post(client, url, key="withdraw-1")
    again = post(client, url)

    assert first.status_code == replay.status_code == 200
    assert replay["Idempotent-Replayed"] == "true"
    assert again.status_code == 422
    assert again.json()["code"] == "invalid_state"
    assert Refund.objects.count() == 1
    assert len(stripe_proxy.calls(method="POST", path="/v1/refunds")) == 1


def test_withdraw_after_the_period_is_refused_and_refunds_nothing(stripe_proxy):
    owner, vehicle, purchase = _bought()

    with time_machine.travel(purchase.paid_at + dt.timedelta(days=14, seconds=1), tick=True):
        response = post(owner_client(owner), f"/api/v1/me/purchases/{purchase.pk}/withdraw/")
        features = vehicle_feature_codes(vehicle)

    assert response.status_code == 422
    assert response.json()["code"] == "withdrawal_period_over"
    assert not Refund.objects.exists()
    assert not stripe_proxy.calls(method="POST", path="/v1/refunds")
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert features == ["heated_seats"]


def test_withdraw_in_a_market_without_withdrawal_right_is_refused(stripe_proxy):
    us = MarketFactory(
        code="US", name="United States", country="US", currency="USD", withdrawal_period_days=0
    )
    owner, _, purchase = _bought(market=us)

    response = post(owner_client(owner), f"/api/v1/me/purchases/{purchase.pk}/withdraw/")

    assert response.status_code == 422
    assert response.json()["code"] == "withdrawal_period_over"
    assert not Refund.objects.exists()
    assert not stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert purchase.price.currency == "USD"


def test_fleet_owner_cannot_withdraw(stripe_proxy):
    owner, _, purchase = _bought()
    owner.is_consumer = False
    owner.save(update_fields=["is_consumer"])

    response = post(owner_client(owner), f"/api/v1/me/purchases/{purchase.pk}/withdraw/")

    assert (response.status_code, response.json()["code"]) == (422, "withdrawal_period_over")
    assert not Refund.objects.exists()


def test_another_owners_purchase_is_not_found(stripe_proxy):
    _, _, purchase = _bought()
    stranger = owner_client(OwnerFactory())

    withdraw = post(stranger, f"/api/v1/me/purchases/{purchase.pk}/withdraw/")
    retrieve = stranger.get(f"/api/v1/me/purchases/{purchase.pk}/")

    assert (withdraw.status_code, retrieve.status_code) == (404, 404)
    assert results(stranger.get("/api/v1/me/purchases/")) == []
    assert not Refund.objects.exists()


def test_list_and_retrieve_my_purchases(stripe_proxy):
    owner, vehicle, purchase = _bought()
    client = owner_client(owner)

    listed = results(client.get("/api/v1/me/purchases/"))
    one = client.get(f"/api/v1/me/purchases/{purchase.pk}/").json()

    assert [p["id"] for p in listed] == [str(purchase.pk)]
    assert one["status"] == "paid"
    assert one["vehicle"] == str(vehicle.pk)
    assert one["price"] == {"amount_minor": 19_900, "currency": "EUR", "formatted": "EUR 199.00"}


def test_buying_an_owned_unlock_again_is_refused_without_charging(stripe_proxy):
    owner, vehicle, _ = _bought()

    response = post(
        owner_client(owner), f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"}
    )

    assert response.status_code in (409, 422)
    assert response.json()["code"] == "already_entitled"
    assert Purchase.objects.count() == 1
    assert Invoice.objects.count() == 1
    assert len(stripe_proxy.calls(method="POST", path=PI)) == 1


def test_a_subscription_offer_cannot_be_bought_as_a_purchase(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_monthly"})

    assert response.status_code == 422
    assert response.json()["code"] == "offer_unavailable"
    assert not Purchase.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)


def test_without_a_payment_method_nothing_is_created(stripe_proxy):
    owner, vehicle = catalog_world()

    response = post(
        owner_client(owner), f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"}
    )

    assert response.status_code == 422
    assert response.json()["code"] == "no_payment_method"
    assert not Purchase.objects.exists()
    assert not Invoice.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)


def test_another_owners_payment_method_cannot_be_used(stripe_proxy):
    owner, vehicle = catalog_world()
    stranger = owner_client(OwnerFactory())
    foreign_method = add_card(stranger)

    response = post(
        owner_client(owner),
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        {"offer": "heated_seats_unlock", "payment_method": foreign_method["id"]},
    )

    assert (response.status_code, response.json()["code"]) == (422, "no_payment_method")
    assert not Purchase.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)


def test_unknown_offer_is_not_found(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "no_such_offer"})

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert response.json()["details"] == {"offer": "no_such_offer"}
    assert not Purchase.objects.exists()


def test_buying_for_another_owners_vehicle_is_not_found(stripe_proxy):
    _, vehicle = catalog_world()
    stranger = owner_client(OwnerFactory())
    add_card(stranger)

    response = post(
        stranger, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"}
    )

    assert response.status_code == 404
    assert not Purchase.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "offer"),
        ({"offer": "heated seats!"}, "offer"),
        ({"offer": "heated_seats_unlock", "payment_method": "abc"}, "payment_method"),
    ],
)
def test_a_bad_body_is_a_validation_error_and_creates_nothing(stripe_proxy, body, field):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", body)

    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert list(response.json()["details"]) == [field]
    assert not Purchase.objects.exists()
    assert not Invoice.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)


def test_a_purchase_without_idempotency_key_is_refused(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)

    response = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_required"
    assert not Purchase.objects.exists()


def test_a_free_offer_is_refused_and_leaves_nothing_behind(stripe_proxy):
    owner, vehicle = catalog_world()
    free = OfferFactory(code="free_unlock", features=[FeatureFactory(code="heated_seats")])
    PriceFactory(offer=free, market=vehicle.market, amount_minor=0)
    client = owner_client(owner)
    add_card(client)
    url = f"/api/v1/me/vehicles/{vehicle.pk}/purchases/"

    first = post(client, url, {"offer": "free_unlock"})
    second = post(client, url, {"offer": "free_unlock"})

    assert (first.status_code, first.json()["code"]) == (422, "offer_unavailable")
    assert (second.status_code, second.json()["code"]) == (422, "offer_unavailable")
    assert not Purchase.objects.exists()
    assert not Invoice.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)
