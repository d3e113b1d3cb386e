"""GET me/vehicles/{id}/offers/: compatible offers only, priced in the vehicle's market, with marks."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from billing.models import Offer, Subscription
from tests.billing.api_helpers import (
    add_card,
    buy,
    catalog_world,
    owner_client,
    post,
    subscribe_paid,
)
from tests.factories import (
    CapabilityFactory,
    FeatureFactory,
    MarketFactory,
    OfferFactory,
    OwnerFactory,
    PriceFactory,
)

pytestmark = [pytest.mark.django_db]


def _offers(client, vehicle) -> dict[str, dict]:
    response = client.get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/")
    assert response.status_code == 200, response.json()
    return {offer["code"]: offer for offer in response.json()}


def _unlock(code: str, *, market, amount_minor: int = 5_000, **feature_kwargs):
    offer = OfferFactory(
        code=code, features=[FeatureFactory(code=code.removesuffix("_unlock"), **feature_kwargs)]
    )
    PriceFactory(offer=offer, market=market, amount_minor=amount_minor)
    return offer


def test_only_offers_the_vehicle_can_use_are_listed():
    owner, vehicle = catalog_world()
    us = MarketFactory(code="US", name="United States", country="US", currency="USD")
    _unlock("lidar_unlock", market=vehicle.market, required_capabilities=[CapabilityFactory(code="lidar")])
    _unlock("us_only_unlock", market=vehicle.market, markets=[us])
    _unlock("de_only_unlock", market=vehicle.market, markets=[vehicle.market])
    _unlock("future_sw_unlock", market=vehicle.market, min_software_version="2099.1.0")
    _unlock("current_sw_unlock", market=vehicle.market, min_software_version="2026.40.1")
    _unlock("unpriced_here_unlock", market=us)
    inactive = _unlock("retired_unlock", market=vehicle.market)
    inactive.is_active = False
    inactive.save(update_fields=["is_active"])

    offers = _offers(owner_client(owner), vehicle)

    assert sorted(offers) == [
        "current_sw_unlock",
        "de_only_unlock",
        "heated_seats_monthly",
        "heated_seats_unlock",
    ]
    unlock = offers["heated_seats_unlock"]
    assert unlock["price"] == {"amount_minor": 19_900, "currency": "EUR", "formatted": "EUR 199.00"}
    assert (unlock["kind"], unlock["interval"], unlock["features"]) == ("one_time", "", ["heated_seats"])
    plan = offers["heated_seats_monthly"]
    assert (plan["kind"], plan["interval"], plan["trial_days"]) == ("subscription", "month", 7)
    assert (plan["owned"], plan["subscribed"], plan["trial_available"], plan["included_until"]) == (
        False,
        False,
        True,
        None,
    )


def test_a_japanese_car_sees_yen_without_decimals():
    japan = MarketFactory(code="JP", name="Japan", country="JP", currency="JPY", withdrawal_period_days=0)
    owner, vehicle = catalog_world(market=japan)
    _unlock("sport_sound_unlock", market=japan, amount_minor=1_200)

    offers = _offers(owner_client(owner), vehicle)

    assert offers["sport_sound_unlock"]["price"] == {
        "amount_minor": 1_200,
        "currency": "JPY",
        "formatted": "JPY 1,200",
    }
    assert offers["heated_seats_unlock"]["price"]["formatted"] == "JPY 19,900"
    assert {o["price"]["currency"] for o in offers.values()} == {"JPY"}


def test_another_owners_vehicle_offers_are_not_found():
    _, vehicle = catalog_world()

    response = owner_client(OwnerFactory()).get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/")

    assert response.status_code == 404


@pytest.mark.stripe
def test_a_new_price_version_applies_to_new_sales_only(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    subscription = Subscription.objects.get(pk=subscribe_paid(client, vehicle)["id"])
    v1 = subscription.price
    v2 = PriceFactory(
        offer=v1.offer,
        market=vehicle.market,
        amount_minor=1_299,
        version=2,
        valid_from=timezone.now() + dt.timedelta(days=1),
    )
    before = _offers(client, vehicle)["heated_seats_monthly"]

    with time_machine.travel(v2.valid_from + dt.timedelta(hours=1), tick=True):
        later_client = owner_client(owner)
        after = _offers(later_client, vehicle)["heated_seats_monthly"]
        mine = later_client.get(f"/api/v1/me/subscriptions/{subscription.pk}/").json()

    assert (before["price_version"], before["price"]["amount_minor"]) == (1, 999)
    assert (after["price_version"], after["price"]["amount_minor"]) == (2, 1_299)
    assert after["subscribed"] is True
    subscription.refresh_from_db()
    assert subscription.price_id == v1.pk
    assert mine["price"]["amount_minor"] == 999


@pytest.mark.stripe
def test_a_new_sale_after_the_new_version_uses_it(stripe_proxy):
    owner, vehicle = catalog_world()
    unlock = Offer.objects.get(code="heated_seats_unlock")
    v2 = PriceFactory(
        offer=unlock, market=vehicle.market, amount_minor=24_900, version=2, valid_from=timezone.now()
    )

    with time_machine.travel(v2.valid_from + dt.timedelta(minutes=1), tick=True):
        client = owner_client(owner)
        add_card(client)
        purchase = buy(client, vehicle)

    assert purchase["price"]["amount_minor"] == 24_900
    assert stripe_proxy.calls(method="POST", path="/v1/payment_intents")[-1].form["amount"] == "24900"


@pytest.mark.stripe
def test_marks_follow_what_the_vehicle_has(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    started = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "heated_seats_monthly"}
    )
    assert started.json()["status"] == "trialing"

    during_trial = _offers(client, vehicle)
    post(client, f"/api/v1/me/subscriptions/{started.json()['subscription']['id']}/cancel/")
    after_cancel = _offers(client, vehicle)
    buy(client, vehicle)
    after_purchase = _offers(client, vehicle)

    plan, unlock = during_trial["heated_seats_monthly"], during_trial["heated_seats_unlock"]
    assert (plan["subscribed"], plan["trial_available"], plan["owned"]) == (True, False, False)
    assert unlock["owned"] is False
    assert after_cancel["heated_seats_monthly"]["subscribed"] is False
    assert after_cancel["heated_seats_monthly"]["trial_available"] is False
    assert after_purchase["heated_seats_unlock"]["owned"] is True
    assert after_purchase["heated_seats_monthly"]["owned"] is True  # every feature is the car's for good
