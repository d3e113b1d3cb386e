"""Offers included with a new car (billing.services.included_offers.vehicle_included_offers_grant)."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import Entitlement, EntitlementSource, Subscription
from billing.services.included_offers import vehicle_included_offers_grant
from core.periods import Interval, add_interval
from tests.billing.api_helpers import add_card, catalog_world, owner_client, post, vehicle_client
from tests.factories import CapabilityFactory, FeatureFactory, OfferFactory, PriceFactory, VehicleFactory

pytestmark = [pytest.mark.django_db]


def _connectivity(market, *, months: int = 36):
    """A monthly connectivity plan, included for `months` with a new car."""
    modem = CapabilityFactory(code="lte_modem")
    feature = FeatureFactory(code="connectivity", required_capabilities=[modem])
    plan = OfferFactory(
        code="connectivity_monthly",
        subscription=True,
        trial_days=7,
        included_months_with_new_car=months,
        features=[feature],
    )
    PriceFactory(offer=plan, market=market, amount_minor=1_500)
    return plan, modem


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("delivered_at", "ends_at"),
    [
        (dt.datetime(2024, 1, 31, 10, 0, tzinfo=dt.UTC), dt.datetime(2027, 1, 31, 10, 0, tzinfo=dt.UTC)),
        (dt.datetime(2024, 2, 29, 8, 30, tzinfo=dt.UTC), dt.datetime(2027, 2, 28, 8, 30, tzinfo=dt.UTC)),
        (dt.datetime(2023, 12, 31, 23, 59, tzinfo=dt.UTC), dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)),
    ],
)
def test_granted_from_delivery_for_36_months_month_end_safe(delivered_at, ends_at):
    _, vehicle = catalog_world()
    plan, modem = _connectivity(vehicle.market)
    vehicle.capabilities.add(modem)
    vehicle.delivered_at = delivered_at
    vehicle.save(update_fields=["delivered_at"])

    granted = vehicle_included_offers_grant(vehicle=vehicle)

    assert len(granted) == 1
    row = Entitlement.objects.get(vehicle=vehicle)
    assert (row.source, row.offer_id, row.feature.code) == (
        EntitlementSource.INCLUDED,
        plan.pk,
        "connectivity",
    )
    assert (row.starts_at, row.ends_at) == (delivered_at, ends_at)
    assert ends_at == add_interval(delivered_at, interval=Interval.MONTH, count=36)


def test_granting_again_keeps_the_one_row():
    _, vehicle = catalog_world()
    _, modem = _connectivity(vehicle.market)
    vehicle.capabilities.add(modem)

    first = vehicle_included_offers_grant(vehicle=vehicle)
    second = vehicle_included_offers_grant(vehicle=vehicle)

    assert [e.pk for e in first] == [e.pk for e in second]
    assert Entitlement.objects.filter(vehicle=vehicle).count() == 1


def test_nothing_for_an_undelivered_or_incompatible_car():
    _, vehicle = catalog_world()
    _connectivity(vehicle.market)
    undelivered = VehicleFactory(delivered_at=None, capabilities=[CapabilityFactory(code="lte_modem")])

    assert vehicle_included_offers_grant(vehicle=vehicle) == []  # no modem
    assert vehicle_included_offers_grant(vehicle=undelivered) == []
    assert not Entitlement.objects.exists()


def test_the_offers_list_and_the_car_show_the_included_period():
    owner, vehicle = catalog_world()
    _, modem = _connectivity(vehicle.market)
    vehicle.capabilities.add(modem)
    (row,) = vehicle_included_offers_grant(vehicle=vehicle)

    offers = {
        o["code"]: o for o in owner_client(owner).get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/").json()
    }
    features = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]

    assert offers["connectivity_monthly"]["included_until"] == _iso(row.ends_at)
    assert offers["connectivity_monthly"]["owned"] is False
    assert offers["heated_seats_monthly"]["included_until"] is None
    assert features == [{"code": "connectivity", "valid_until": _iso(row.ends_at), "sources": ["included"]}]


@pytest.mark.stripe
def test_after_the_included_period_the_paid_plan_is_offered_and_can_be_bought(stripe_proxy):
    owner, vehicle = catalog_world()
    _, modem = _connectivity(vehicle.market)
    vehicle.capabilities.add(modem)
    (row,) = vehicle_included_offers_grant(vehicle=vehicle)

    with time_machine.travel(row.ends_at + dt.timedelta(days=1), tick=True):
        client = owner_client(owner)
        add_card(client)
        offers = {o["code"]: o for o in client.get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/").json()}
        before = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]
        started = post(
            client,
            f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/",
            {"offer": "connectivity_monthly", "trial": False},
        )
        after = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]

    assert offers["connectivity_monthly"]["included_until"] is None
    assert offers["connectivity_monthly"]["price"]["amount_minor"] == 1_500
    assert before == []
    assert started.status_code == 201, started.json()
    assert started.json()["subscription"]["status"] == "active"
    assert [(f["code"], f["sources"]) for f in after] == [("connectivity", ["subscription"])]
    assert stripe_proxy.calls(method="POST", path="/v1/payment_intents")[-1].form["amount"] == "1500"


@pytest.mark.stripe
def test_subscribing_while_included_is_allowed(stripe_proxy):
    """subscription_start refuses only when every feature is the car's for good (perpetual);
    an included period is not perpetual, so the owner may subscribe (a trial here)."""
    owner, vehicle = catalog_world()
    _, modem = _connectivity(vehicle.market)
    vehicle.capabilities.add(modem)
    (row,) = vehicle_included_offers_grant(vehicle=vehicle)
    client = owner_client(owner)
    add_card(client)

    started = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "connectivity_monthly"}
    )
    features = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/").json()["features"]

    assert started.status_code == 201, started.json()
    assert started.json()["status"] == "trialing"
    assert Subscription.objects.get().offer.code == "connectivity_monthly"
    assert features == [
        {"code": "connectivity", "valid_until": _iso(row.ends_at), "sources": ["included", "subscription"]}
    ]
    assert not stripe_proxy.calls(method="POST", path="/v1/payment_intents")
