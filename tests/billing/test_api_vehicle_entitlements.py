"""The car's side: entitlements with ETag polling, the signed offline token, and who may call."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.services.offline_tokens import TokenInvalid, offline_token_verify
from tests.billing.api_helpers import add_card, buy, catalog_world, owner_client, vehicle_client
from vehicles.services.credentials import vehicle_credential_issue, vehicle_credential_revoke

pytestmark = [pytest.mark.django_db]

URL = "/api/v1/vehicle/entitlements/"
TOKEN_URL = "/api/v1/vehicle/entitlements/token/"


def test_an_unchanged_state_answers_304_with_no_body():
    _, vehicle = catalog_world()
    car = vehicle_client(vehicle)

    first = car.get(URL)
    second = car.get(URL, HTTP_IF_NONE_MATCH=first["ETag"])

    assert first.status_code == 200
    assert first.json() == {"vin": vehicle.vin, "at": first.json()["at"], "features": []}
    assert first["ETag"].startswith('"') and first["ETag"].endswith('"')
    assert second.status_code == 304
    assert second.content == b""
    assert second["ETag"] == first["ETag"]
    assert car.get(URL, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200


@pytest.mark.stripe
def test_a_purchase_changes_the_etag(stripe_proxy):
    owner, vehicle = catalog_world()
    car = vehicle_client(vehicle)
    before = car.get(URL)["ETag"]
    client = owner_client(owner)
    add_card(client)
    buy(client, vehicle)

    after = car.get(URL, HTTP_IF_NONE_MATCH=before)

    assert after.status_code == 200
    assert after["ETag"] != before
    assert after.json()["features"] == [
        {"code": "heated_seats", "valid_until": None, "sources": ["purchase"]}
    ]
    assert car.get(URL, HTTP_IF_NONE_MATCH=f'"x", {after["ETag"]}').status_code == 304


@pytest.mark.stripe
def test_the_offline_token_verifies_with_the_published_jwks(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    buy(client, vehicle)

    response = vehicle_client(vehicle).get(TOKEN_URL)
    jwks = APIClient().get("/api/v1/.well-known/jwks.json").json()

    body = response.json()
    assert response.status_code == 200, body
    assert response["Cache-Control"] == "no-store"
    assert body["kid"] in {key["kid"] for key in jwks["keys"]}
    claims = offline_token_verify(token=body["token"], vin=vehicle.vin, jwks=jwks, now=timezone.now())
    assert claims["features"] == [{"code": "heated_seats", "until": None}]
    assert (claims["aud"], claims["sub"]) == (vehicle.vin, str(vehicle.pk))
    with pytest.raises(TokenInvalid) as error:
        offline_token_verify(token=body["token"], vin="WVWZZZ1JZXW999999", jwks=jwks, now=timezone.now())
    assert error.value.reason == "wrong_audience"


def test_a_revoked_credential_is_refused():
    _, vehicle = catalog_world()
    issued = vehicle_credential_issue(vehicle=vehicle)
    vehicle_credential_revoke(vehicle=vehicle)
    car = APIClient()
    car.credentials(HTTP_AUTHORIZATION=issued.authorization)

    assert car.get(URL).status_code == 401
    assert car.get(TOKEN_URL).status_code == 401


def test_a_rotated_credential_is_refused_and_the_new_one_works():
    _, vehicle = catalog_world()
    old = vehicle_credential_issue(vehicle=vehicle)
    new = vehicle_credential_issue(vehicle=vehicle)

    assert APIClient(HTTP_AUTHORIZATION=old.authorization).get(URL).status_code == 401
    assert APIClient(HTTP_AUTHORIZATION=new.authorization).get(URL).status_code == 200


def test_a_wrong_secret_is_refused():
    _, vehicle = catalog_world()
    issued = vehicle_credential_issue(vehicle=vehicle)

    response = APIClient(HTTP_AUTHORIZATION=f"Vehicle {issued.key_id}.not-the-secret").get(URL)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("url", [URL, TOKEN_URL])
def test_an_owner_login_cannot_use_vehicle_endpoints(url):
    owner, _ = catalog_world()

    response = owner_client(owner).get(url)

    assert response.status_code in (401, 403)
    assert response.json()["code"] in ("not_authenticated", "permission_denied")


@pytest.mark.parametrize("path", ["me/vehicles/", "me/subscriptions/", "me/payment-methods/"])
def test_a_vehicle_credential_cannot_use_owner_endpoints(path):
    _, vehicle = catalog_world()

    response = vehicle_client(vehicle).get(f"/api/v1/{path}")

    assert response.status_code in (401, 403)


def test_no_credential_is_refused():
    assert APIClient().get(URL).status_code == 401
