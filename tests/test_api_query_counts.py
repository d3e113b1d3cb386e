"""No N+1: the hot endpoints run the same number of queries for a small world and a 10x bigger one
(more offers, features, prices, entitlements, purchases, invoices, subscriptions)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.services.entitlements import entitlement_grant_admin
from tests.billing.api_helpers import add_card, catalog_world, owner_client, post, vehicle_client
from tests.factories import CapabilityFactory, FeatureFactory, OfferFactory, PriceFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

SMALL, LARGE = 1, 10


class Shop:
    """One owner and vehicle whose catalog and history grow in steps."""

    def __init__(self) -> None:
        self.owner, self.vehicle = catalog_world()
        self.client = owner_client(self.owner)
        self.car = vehicle_client(self.vehicle)
        self.hardware = list(self.vehicle.capabilities.all())
        self.operator = UserFactory(is_staff=True)
        self.size = 0
        add_card(self.client)
        for code in ("target_small", "target_large"):  # what the purchase measurement buys
            self._one_time(code)

    def _one_time(self, code: str, features=None):
        features = features or [FeatureFactory(code=f"{code}_feature", required_capabilities=self.hardware)]
        offer = OfferFactory(code=code, features=features)
        PriceFactory(offer=offer, market=self.vehicle.market, amount_minor=1_000)
        return offer

    def grow_to(self, size: int) -> None:
        for i in range(self.size, size):
            extra_hw = CapabilityFactory(code=f"hw_{i}")
            self.vehicle.capabilities.add(extra_hw)
            features = [
                FeatureFactory(code=f"f_{i}_{j}", required_capabilities=[*self.hardware, extra_hw])
                for j in range(3)
            ]
            self._one_time(f"unlock_{i}", features=features)
            plan_feature = FeatureFactory(code=f"plan_feature_{i}", required_capabilities=[extra_hw])
            plan = OfferFactory(code=f"plan_{i}", subscription=True, trial_days=7, features=[plan_feature])
            PriceFactory(offer=plan, market=self.vehicle.market, amount_minor=500)
            PriceFactory(offer=plan, market=self.vehicle.market, amount_minor=600, version=2)
            # an incompatible offer: filtered out, but still loaded
            alien = FeatureFactory(code=f"alien_{i}", required_capabilities=[CapabilityFactory()])
            self._one_time(f"alien_offer_{i}", features=[alien])
            bought = post(
                self.client, f"/api/v1/me/vehicles/{self.vehicle.pk}/purchases/", {"offer": f"unlock_{i}"}
            )
            assert bought.status_code == 201, bought.json()
            subscribed = post(
                self.client, f"/api/v1/me/vehicles/{self.vehicle.pk}/subscriptions/", {"offer": f"plan_{i}"}
            )
            assert subscribed.status_code == 201, subscribed.json()
            now = timezone.now()
            for feature in features:
                entitlement_grant_admin(
                    vehicle=self.vehicle,
                    feature=feature,
                    granted_by=self.operator,
                    starts_at=now - timedelta(days=1),
                    ends_at=now + timedelta(days=30),
                    reason="goodwill",
                )
        self.size = size


def count_queries(request: Callable[[], object]) -> int:
    request()  # warm-up: lazily created rows (signing key, customer) are not part of the cost
    with CaptureQueriesContext(connection) as captured:
        response = request()
    assert response.status_code in (200, 201), (response.status_code, response.content[:300])
    return len(captured.captured_queries)


def reads(shop: Shop) -> dict[str, Callable[[], object]]:
    vehicle = shop.vehicle.pk
    return {
        "offers": lambda: shop.client.get(f"/api/v1/me/vehicles/{vehicle}/offers/"),
        "vehicle_entitlements": lambda: shop.car.get("/api/v1/vehicle/entitlements/"),
        "vehicle_token": lambda: shop.car.get("/api/v1/vehicle/entitlements/token/"),
        "me_invoices": lambda: shop.client.get("/api/v1/me/invoices/"),
        "me_subscriptions": lambda: shop.client.get("/api/v1/me/subscriptions/"),
        "me_purchases": lambda: shop.client.get("/api/v1/me/purchases/"),
        "me_payments": lambda: shop.client.get("/api/v1/me/payments/"),
        "me_vehicles": lambda: shop.client.get("/api/v1/me/vehicles/"),
    }


def purchase_queries(shop: Shop, offer: str) -> int:
    url = f"/api/v1/me/vehicles/{shop.vehicle.pk}/purchases/"
    with CaptureQueriesContext(connection) as captured:
        response = post(shop.client, url, {"offer": offer}, key=str(uuid.uuid4()))
    assert response.status_code == 201, response.json()
    return len(captured.captured_queries)


def test_query_counts_do_not_grow_with_the_world(stripe_proxy, django_assert_max_num_queries):
    shop = Shop()
    shop.grow_to(SMALL)
    small = {name: count_queries(request) for name, request in reads(shop).items()}
    small["purchase"] = purchase_queries(shop, "target_small")
    sizes_small = len(shop.client.get(f"/api/v1/me/vehicles/{shop.vehicle.pk}/offers/").json())

    shop.grow_to(LARGE)
    large = {name: count_queries(request) for name, request in reads(shop).items()}
    large["purchase"] = purchase_queries(shop, "target_large")
    offers = shop.client.get(f"/api/v1/me/vehicles/{shop.vehicle.pk}/offers/").json()
    invoices = shop.client.get("/api/v1/me/invoices/").json()

    print("query counts small/large:", {k: (small[k], large[k]) for k in small})  # noqa: T201 - report
    # the large world really is bigger, and answers carry it
    assert len(offers) >= sizes_small + 2 * (LARGE - SMALL)
    assert invoices["count"] >= LARGE + 2
    features = shop.car.get("/api/v1/vehicle/entitlements/").json()["features"]
    assert len(features) >= 3 * LARGE
    assert large == small
    for name, request in reads(shop).items():  # and the fixture-enforced bound, per endpoint
        with django_assert_max_num_queries(small[name]):
            request()
