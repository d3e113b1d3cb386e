"""GET /api/v1/.well-known/jwks.json: public, cacheable, only public keys, enough to verify tokens."""

import datetime as dt

import pytest
from django.utils import timezone

from billing.services.offline_tokens import offline_token_issue, offline_token_verify
from billing.services.signing_keys import signing_key_for_signing, signing_key_rotate
from core.models import SigningKey
from tests.factories import VehicleFactory

pytestmark = [pytest.mark.django_db]
URL = "/api/v1/.well-known/jwks.json"


def test_jwks_is_public_and_cacheable(client):
    key = signing_key_for_signing(at=timezone.now())

    response = client.get(URL)

    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=300"
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": key.public_jwk["x"],
                "kid": key.kid,
                "alg": "EdDSA",
                "use": "sig",
            }
        ]
    }


def test_jwks_ignores_credentials_and_never_returns_private_material(client):
    key = signing_key_for_signing(at=timezone.now())

    response = client.get(URL, HTTP_AUTHORIZATION="Bearer not-a-valid-token")

    assert response.status_code == 200
    assert key.private_jwk["d"] not in response.content.decode()
    assert all("d" not in jwk for jwk in response.json()["keys"])


def test_jwks_shows_the_next_key_as_soon_as_it_is_published(client):
    now = timezone.now()
    current = signing_key_for_signing(at=now)
    nxt = signing_key_rotate(
        now=now, publish_ahead=dt.timedelta(hours=24), retire_previous_after=dt.timedelta(hours=96)
    )

    kids = [jwk["kid"] for jwk in client.get(URL).json()["keys"]]

    assert kids == [nxt.kid, current.kid]


def test_jwks_omits_keys_not_yet_published_and_retired(client):
    now = timezone.now()
    SigningKey.objects.create(
        kid="future",
        private_jwk={},
        public_jwk={},
        published_at=now + dt.timedelta(hours=1),
        active_from=now + dt.timedelta(hours=2),
    )
    retired = signing_key_for_signing(at=now - dt.timedelta(days=10))
    SigningKey.objects.filter(pk=retired.pk).update(retires_at=now - dt.timedelta(seconds=1))

    assert client.get(URL).json() == {"keys": []}


def test_a_token_verifies_with_the_served_jwks(client):
    vehicle = VehicleFactory()
    now = timezone.now()
    issued = offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=now)

    served = client.get(URL).json()

    claims = offline_token_verify(token=issued.token, vin=vehicle.vin, jwks=served, now=now)
    assert claims["jti"] == issued.jti


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_jwks_is_read_only(client, method):
    response = getattr(client, method)(URL)

    assert response.status_code == 405


def test_jwks_is_documented_without_auth_and_with_an_example(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operation = schema["paths"]["/api/v1/.well-known/jwks.json"]["get"]
    assert operation["operationId"] == "jwks_retrieve"
    assert "security" not in operation  # no authentication scheme required
    content = operation["responses"]["200"]["content"]["application/json"]
    assert content["examples"]["OnePublishedKey"]["value"]["keys"][0]["alg"] == "EdDSA"
    assert content["schema"]["$ref"].endswith("/JWKSet")
