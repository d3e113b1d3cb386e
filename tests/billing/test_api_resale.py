"""Resale: the seller starts a transfer, the buyer claims the car with the VIN and a one-time code."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import (
    Entitlement,
    Invoice,
    Offer,
    PaymentAttempt,
    PaymentMethod,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from core.rounding import prorate_between
from tests.billing.api_helpers import (
    add_card,
    buy,
    catalog_world,
    owner_client,
    post,
    results,
    subscribe_paid,
    vehicle_client,
)
from tests.factories import FeatureFactory, OfferFactory, OwnerFactory, PriceFactory, VehicleFactory
from vehicles.models import Ownership, VehicleTransfer

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

CLAIM = "/api/v1/me/transfers/claim/"


def _seller_world():
    """Seller A with a one-time unlock (stays with the car), an unlock that ends on transfer and
    a paid monthly connectivity plan, all on one car."""
    seller, vehicle = catalog_world()
    connectivity = FeatureFactory(code="connectivity")
    plan = OfferFactory(code="connectivity_monthly", subscription=True, features=[connectivity])
    PriceFactory(offer=plan, market=vehicle.market, amount_minor=1_500)
    navigation = FeatureFactory(code="navigation_pro")
    personal = OfferFactory(
        code="navigation_pro_unlock",
        features=[navigation],
        transfer_policy=Offer.TransferPolicy.ENDS_ON_TRANSFER,
    )
    PriceFactory(offer=personal, market=vehicle.market, amount_minor=4_900)
    client = owner_client(seller)
    add_card(client)
    buy(client, vehicle, "heated_seats_unlock")
    buy(client, vehicle, "navigation_pro_unlock")
    subscription = Subscription.objects.get(pk=subscribe_paid(client, vehicle, "connectivity_monthly")["id"])
    return seller, vehicle, subscription


def _start(seller, vehicle) -> dict:
    response = post(owner_client(seller), f"/api/v1/me/vehicles/{vehicle.pk}/transfer/")
    assert response.status_code == 201, response.json()
    return response.json()


def test_claim_moves_the_car_refunds_unused_time_and_keeps_what_stays_with_the_car(
    stripe_proxy, django_capture_on_commit_callbacks
):
    seller, vehicle, subscription = _seller_world()
    buyer = OwnerFactory()
    at = (subscription.current_period_start + dt.timedelta(days=20, hours=5, seconds=11)).replace(
        microsecond=0
    )

    with time_machine.travel(at, tick=False):
        started = _start(seller, vehicle)
        with django_capture_on_commit_callbacks(execute=True):
            claimed = owner_client(buyer).post(
                CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json"
            )
        features = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]
        seller_client, buyer_client = owner_client(seller), owner_client(buyer)
        seller_vehicles = results(seller_client.get("/api/v1/me/vehicles/"))
        seller_get = seller_client.get(f"/api/v1/me/vehicles/{vehicle.pk}/")
        buyer_vehicles = results(buyer_client.get("/api/v1/me/vehicles/"))

    assert len(started["code"]) == 10
    transfer = VehicleTransfer.objects.get(pk=started["transfer"])
    assert started["code"] not in transfer.code_hash
    assert claimed.status_code == 200, claimed.json()
    assert claimed.json()["id"] == str(vehicle.pk)
    assert (transfer.status, transfer.to_owner_id, transfer.completed_at) == ("completed", buyer.pk, at)
    assert [v["id"] for v in buyer_vehicles] == [str(vehicle.pk)]
    assert seller_vehicles == []
    assert seller_get.status_code == 404
    assert Ownership.objects.get(vehicle=vehicle, ends_at__isnull=True).owner == buyer
    assert Ownership.objects.get(vehicle=vehicle, owner=seller).ends_at == at

    subscription.refresh_from_db()
    assert (subscription.status, subscription.ended_at) == (SubscriptionStatus.CANCELED, at)
    expected = prorate_between(
        1_500,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        at=at,
    )
    refund = Refund.objects.get()
    assert 0 < expected < 1_500
    assert (refund.status, refund.amount_minor, refund.reason) == (
        RefundStatus.SUCCEEDED,
        expected,
        "vehicle sold",
    )
    assert refund.payment_attempt.invoice.subscription_id == subscription.pk
    calls = stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert [(c.idempotency_key, c.form["amount"]) for c in calls] == [(refund.idempotency_key, str(expected))]

    assert features == [{"code": "heated_seats", "valid_until": None, "sources": ["purchase"]}]
    navigation = Entitlement.objects.get(feature__code="navigation_pro")
    assert navigation.ends_at == at
    assert Entitlement.objects.get(feature__code="connectivity").ends_at == at


def test_the_buyer_sees_none_of_the_sellers_money_records(stripe_proxy, django_capture_on_commit_callbacks):
    seller, vehicle, subscription = _seller_world()
    buyer = OwnerFactory()
    started = _start(seller, vehicle)
    buyer_client = owner_client(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json").status_code
            == 200
        )
    invoice = Invoice.objects.filter(owner=seller).first()
    payment = PaymentAttempt.objects.filter(owner=seller).first()
    method = PaymentMethod.objects.get(owner=seller)

    for path in ("invoices", "payments", "payment-methods", "subscriptions", "purchases"):
        assert results(buyer_client.get(f"/api/v1/me/{path}/")) == [], path
    assert buyer_client.get(f"/api/v1/me/invoices/{invoice.pk}/").status_code == 404
    assert buyer_client.get(f"/api/v1/me/payments/{payment.pk}/").status_code == 404
    assert buyer_client.get(f"/api/v1/me/subscriptions/{subscription.pk}/").status_code == 404
    assert buyer_client.post(f"/api/v1/me/payment-methods/{method.pk}/default/").status_code == 404
    # the seller keeps their history
    assert len(results(owner_client(seller).get("/api/v1/me/invoices/"))) == 3


def test_the_buyer_sees_the_unlock_as_owned_and_can_subscribe(
    stripe_proxy, django_capture_on_commit_callbacks
):
    seller, vehicle, _ = _seller_world()
    buyer = OwnerFactory()
    started = _start(seller, vehicle)
    buyer_client = owner_client(buyer)
    with django_capture_on_commit_callbacks(execute=True):
        buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json")
    add_card(buyer_client)

    offers = {o["code"]: o for o in buyer_client.get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/").json()}
    subscribed = subscribe_paid(buyer_client, vehicle, "connectivity_monthly")

    assert offers["heated_seats_unlock"]["owned"] is True
    assert offers["navigation_pro_unlock"]["owned"] is False
    assert offers["connectivity_monthly"]["subscribed"] is False
    assert subscribed["status"] == "active"
    assert Subscription.objects.get(pk=subscribed["id"]).owner == buyer


def test_five_wrong_codes_expire_the_transfer(stripe_proxy):
    seller, vehicle = catalog_world()
    started = _start(seller, vehicle)
    buyer_client = owner_client(OwnerFactory())

    answers = [
        buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": "WRONGCODE2"}, format="json") for _ in range(5)
    ]
    transfer = VehicleTransfer.objects.get(pk=started["transfer"])
    right = buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json")

    assert [(a.status_code, a.json()["code"]) for a in answers] == [(422, "transfer_code_invalid")] * 5
    assert (transfer.failed_attempts, transfer.status) == (5, VehicleTransfer.Status.EXPIRED)
    assert (right.status_code, right.json()["code"]) == (422, "transfer_code_invalid")
    assert Ownership.objects.get(vehicle=vehicle, ends_at__isnull=True).owner == seller


def test_a_wrong_code_counts_but_the_right_one_still_works_before_the_limit(stripe_proxy):
    seller, vehicle = catalog_world()
    started = _start(seller, vehicle)
    buyer = OwnerFactory()
    buyer_client = owner_client(buyer)

    wrong = buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": "WRONGCODE2"}, format="json")
    right = buyer_client.post(
        CLAIM, {"vin": vehicle.vin.lower(), "code": started["code"].lower()}, format="json"
    )

    assert wrong.status_code == 422
    assert right.status_code == 200, right.json()
    assert Ownership.objects.get(vehicle=vehicle, ends_at__isnull=True).owner == buyer


def test_a_new_transfer_replaces_the_old_code(stripe_proxy):
    seller, vehicle = catalog_world()
    first = _start(seller, vehicle)
    second = _start(seller, vehicle)
    buyer_client = owner_client(OwnerFactory())

    old = buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": first["code"]}, format="json")

    assert old.status_code == 422
    assert VehicleTransfer.objects.get(pk=first["transfer"]).status == VehicleTransfer.Status.CANCELED
    assert (
        buyer_client.post(CLAIM, {"vin": vehicle.vin, "code": second["code"]}, format="json").status_code
        == 200
    )


def test_an_expired_transfer_cannot_be_claimed(stripe_proxy):
    seller, vehicle = catalog_world()
    started = _start(seller, vehicle)
    buyer = OwnerFactory()

    with time_machine.travel(dt.datetime.fromisoformat(started["expires_at"]), tick=True):
        response = owner_client(buyer).post(
            CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json"
        )

    assert (response.status_code, response.json()["code"]) == (422, "transfer_code_invalid")
    assert Ownership.objects.get(vehicle=vehicle, ends_at__isnull=True).owner == seller


def test_claiming_my_own_car_is_refused(stripe_proxy):
    seller, vehicle = catalog_world()
    started = _start(seller, vehicle)

    response = owner_client(seller).post(CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json")

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_state"
    assert Ownership.objects.filter(vehicle=vehicle).count() == 1
    assert VehicleTransfer.objects.get().status == VehicleTransfer.Status.PENDING


def test_starting_a_transfer_for_someone_elses_car_is_not_found(stripe_proxy):
    _, vehicle = catalog_world()
    stranger = OwnerFactory()
    VehicleFactory(owner=stranger)

    response = post(owner_client(stranger), f"/api/v1/me/vehicles/{vehicle.pk}/transfer/")

    assert response.status_code == 404
    assert not VehicleTransfer.objects.exists()


def test_claim_body_is_validated(stripe_proxy):
    buyer_client = owner_client(OwnerFactory())

    response = buyer_client.post(CLAIM, {"vin": "SHORT"}, format="json")

    assert response.status_code == 400
    assert set(response.json()["details"]) == {"vin", "code"}


def test_after_an_upgrade_the_seller_gets_the_unused_time_of_the_new_price(
    stripe_proxy, django_capture_on_commit_callbacks
):
    """The current period was paid by two payments (the period and the upgrade): the refund of the
    unused time at the new price is taken from both, newest first."""
    seller, vehicle = catalog_world()
    premium = OfferFactory(
        code="heated_seats_premium_monthly", subscription=True, features=[FeatureFactory(code="heated_seats")]
    )
    PriceFactory(offer=premium, market=vehicle.market, amount_minor=1_999)
    client = owner_client(seller)
    add_card(client)
    subscription = Subscription.objects.get(pk=subscribe_paid(client, vehicle)["id"])
    start, end = subscription.current_period_start, subscription.current_period_end
    with time_machine.travel(start + dt.timedelta(days=2), tick=True):
        changed = owner_client(seller).post(
            f"/api/v1/me/subscriptions/{subscription.pk}/change/",
            {"offer": "heated_seats_premium_monthly"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="upgrade",
        )
        assert changed.json()["status"] == "succeeded", changed.json()
    at = (start + dt.timedelta(days=3)).replace(microsecond=0)

    with time_machine.travel(at, tick=False):
        started = _start(seller, vehicle)
        with django_capture_on_commit_callbacks(execute=True):
            claimed = owner_client(OwnerFactory()).post(
                CLAIM, {"vin": vehicle.vin, "code": started["code"]}, format="json"
            )

    assert claimed.status_code == 200, claimed.json()
    expected = prorate_between(1_999, period_start=start, period_end=end, at=at)
    refunds = list(Refund.objects.all())
    assert all(r.status == RefundStatus.SUCCEEDED for r in refunds)
    assert sum(r.amount_minor for r in refunds) == expected
    assert (
        sum(int(c.form["amount"]) for c in stripe_proxy.calls(method="POST", path="/v1/refunds")) == expected
    )
    paid = sum(PaymentAttempt.objects.filter(owner=seller).values_list("amount_minor", flat=True))
    assert expected <= paid
