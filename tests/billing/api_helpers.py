"""Helpers for API tests: owners with a JWT, vehicles with a credential, cards in localstripe."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid

from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from tests.factories import (
    CapabilityFactory,
    FeatureFactory,
    OfferFactory,
    OwnerFactory,
    PriceFactory,
    VehicleFactory,
)

CARD_3DS = "4000002760003184"
CARD_DECLINED_AT_CHARGE = "4000000000000341"


def owner_client(owner) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(owner.user).access_token}")
    return client


def vehicle_client(vehicle) -> APIClient:
    from vehicles.services.credentials import vehicle_credential_issue

    issued = vehicle_credential_issue(vehicle=vehicle)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Vehicle {issued.key_id}.{issued.secret}")
    return client


def localstripe_card(base: str, number: str) -> str:
    """A PaymentMethod made from raw card details, as the app's Stripe SDK would."""
    form = {
        "type": "card",
        "card[number]": number,
        "card[exp_month]": "12",
        "card[exp_year]": "2030",
        "card[cvc]": "123",
    }
    request = urllib.request.Request(
        f"{base}/v1/payment_methods",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
        return json.loads(response.read())["id"]


def add_card(client: APIClient, payment_method: str = "pm_card_visa") -> dict:
    response = client.post(
        "/api/v1/me/payment-methods/", {"payment_method": payment_method, "make_default": True}, format="json"
    )
    assert response.status_code == 201, response.json()
    return response.json()


def post(client: APIClient, url: str, body: dict | None = None, key: str | None = None):
    return client.post(url, body or {}, format="json", HTTP_IDEMPOTENCY_KEY=key or str(uuid.uuid4()))


def catalog_world(*, market=None):
    """An owner, a vehicle with heated-seat hardware, a one-time unlock and a monthly plan."""
    hardware = CapabilityFactory(code="heated_seat_hw")
    owner = OwnerFactory()
    vehicle = VehicleFactory(owner=owner, capabilities=[hardware], **({"market": market} if market else {}))
    seats = FeatureFactory(code="heated_seats", required_capabilities=[hardware])
    unlock = OfferFactory(code="heated_seats_unlock", features=[seats])
    plan = OfferFactory(code="heated_seats_monthly", subscription=True, trial_days=7, features=[seats])
    for offer, amount in ((unlock, 19_900), (plan, 999)):
        if not offer.prices.filter(market=vehicle.market).exists():  # several worlds share the catalog
            PriceFactory(offer=offer, market=vehicle.market, amount_minor=amount)
    return owner, vehicle


def results(response) -> list[dict]:
    """The items of a list answer (paginated `{"count", "results"}` or a plain list)."""
    body = response.json()
    assert response.status_code == 200, body
    return body["results"] if isinstance(body, dict) else body


def heated_seats_plan(
    vehicle,
    *,
    code: str = "heated_seats_premium_monthly",
    amount_minor: int = 1_999,
    interval: str = "month",
    trial_days: int = 0,
):
    """Another plan on catalog_world's heated seats, priced in the vehicle's market."""
    seats = FeatureFactory(code="heated_seats")
    offer = OfferFactory(
        code=code, subscription=True, interval=interval, trial_days=trial_days, features=[seats]
    )
    PriceFactory(offer=offer, market=vehicle.market, amount_minor=amount_minor)
    return offer


def subscribe_paid(client: APIClient, vehicle, offer: str = "heated_seats_monthly") -> dict:
    """Start a paid (no trial) subscription through the API; returns the subscription body."""
    response = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": offer, "trial": False}
    )
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "succeeded"
    return response.json()["subscription"]


def buy(client: APIClient, vehicle, offer: str = "heated_seats_unlock") -> dict:
    """Buy a one-time unlock through the API; returns the purchase body."""
    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": offer})
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "succeeded"
    return response.json()["purchase"]


def vehicle_features(vehicle) -> list[dict]:
    """The features the car sees now, asked with a fresh credential of its own."""
    response = vehicle_client(vehicle).get("/api/v1/vehicle/entitlements/")
    assert response.status_code == 200, response.content
    return response.json()["features"]


def vehicle_feature_codes(vehicle) -> list[str]:
    return [feature["code"] for feature in vehicle_features(vehicle)]
