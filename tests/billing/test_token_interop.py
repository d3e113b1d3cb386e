"""Offline entitlement tokens verify with the common JOSE libraries as a car's SDK would use them:
the JWKS as served by /api/v1/.well-known/jwks.json, the key chosen by the token's `kid`, one
pinned algorithm, the audience (the VIN) and issuer checked. What a library refuses (another key, a
tampered payload, `alg: none`) it refuses here too."""

import datetime as dt
import json
import warnings

import jwcrypto.jwk
import jwcrypto.jwt
import jwt as pyjwt
import pytest
from django.conf import settings
from django.utils import timezone
from joserfc import jwt as joserfc_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from jwcrypto.common import JWException

from billing.services.offline_tokens import TOKEN_TYPE, FeatureGrant, offline_token_issue
from tests.billing.api_helpers import vehicle_client
from tests.factories import VehicleFactory

pytestmark = pytest.mark.django_db

NAV_UNTIL = dt.datetime(2031, 6, 1, tzinfo=dt.UTC)


@pytest.fixture
def vehicle():
    return VehicleFactory()


@pytest.fixture
def served(vehicle):
    """A token and the JWKS as the API serves them to the car."""
    car = vehicle_client(vehicle)
    token = car.get("/api/v1/vehicle/entitlements/token/").json()["token"]
    jwks = car.get("/api/v1/.well-known/jwks.json").json()
    return token, jwks


def _unverified_kid(token: str) -> str:
    return pyjwt.get_unverified_header(token)["kid"]


def test_header_and_jwk_are_the_rfc_8037_names(served):
    token, jwks = served
    header = pyjwt.get_unverified_header(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]

    assert header == {"alg": "EdDSA", "kid": jwk["kid"], "typ": TOKEN_TYPE}
    assert {name: jwk[name] for name in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
    }


def test_pyjwt_verifies_the_token_with_the_served_jwks(vehicle, served):
    token, jwks = served
    key = pyjwt.PyJWKSet.from_dict(jwks)[_unverified_kid(token)]

    claims = pyjwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=vehicle.vin,
        issuer=settings.ENTITLEMENT_TOKEN_ISSUER,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )

    assert claims["sub"] == str(vehicle.pk)
    assert isinstance(claims["features"], list)


def test_jwcrypto_verifies_the_token_with_the_served_jwks(vehicle, served):
    token, jwks = served
    key_set = jwcrypto.jwk.JWKSet.from_json(json.dumps(jwks))

    verified = jwcrypto.jwt.JWT(
        jwt=token,
        key=key_set,
        algs=["EdDSA"],
        check_claims={"iss": settings.ENTITLEMENT_TOKEN_ISSUER, "aud": vehicle.vin, "exp": None, "nbf": None},
    )

    assert json.loads(verified.claims)["sub"] == str(vehicle.pk)


def test_joserfc_verifies_the_token_with_the_served_jwks(vehicle, served):
    token, jwks = served
    with warnings.catch_warnings():  # joserfc notes that RFC 9864 renamed EdDSA; the signature is the same
        warnings.simplefilter("ignore")
        decoded = joserfc_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
    joserfc_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": settings.ENTITLEMENT_TOKEN_ISSUER},
        aud={"essential": True, "value": vehicle.vin},
        exp={"essential": True},
    ).validate(decoded.claims)

    assert decoded.header["kid"] == _unverified_kid(token)
    assert decoded.claims["sub"] == str(vehicle.pk)


def _forgeries(token: str) -> dict[str, str]:
    header_segment, _payload, signature = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    intruder = OKPKey.generate_key("Ed25519", private=True)
    header = pyjwt.get_unverified_header(token)
    other_key = pyjwt.encode(
        {**claims, "sub": "someone-else"},
        intruder.get_op_key("sign"),
        algorithm="EdDSA",
        headers={"kid": header["kid"], "typ": TOKEN_TYPE},
    )
    everything = {**claims, "features": [{"code": "everything", "until": None}]}
    tampered = pyjwt.encode(everything, "k" * 32, "HS256")
    unsigned = pyjwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"]})
    return {
        "another key under our kid": other_key,
        "payload swapped": f"{header_segment}.{tampered.split('.')[1]}.{signature}",
        "alg none": unsigned,
    }


@pytest.mark.parametrize("forgery", ["another key under our kid", "payload swapped", "alg none"])
def test_every_library_refuses_forgeries(vehicle, served, forgery):
    token, jwks = served
    forged = _forgeries(token)[forgery]

    with pytest.raises(pyjwt.PyJWTError):
        key = pyjwt.PyJWKSet.from_dict(jwks)[_unverified_kid(token)]
        pyjwt.decode(forged, key, algorithms=["EdDSA"], audience=vehicle.vin)
    with pytest.raises(JWException):
        jwcrypto.jwt.JWT(jwt=forged, key=jwcrypto.jwk.JWKSet.from_json(json.dumps(jwks)), algs=["EdDSA"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(JoseError):
            joserfc_jwt.decode(forged, KeySet.import_key_set(jwks), algorithms=["EdDSA"])


def test_a_token_from_the_service_verifies_with_pyjwt_after_a_key_rotation(vehicle):
    """The README's snippet, against a JWKS that holds two keys: the `kid` picks the right one."""
    from billing.services.signing_keys import jwks, signing_key_rotate

    now = timezone.now()
    signing_key_rotate(
        now=now, publish_ahead=dt.timedelta(0), retire_previous_after=settings.ENTITLEMENT_TOKEN_MAX_TTL
    )
    issued = offline_token_issue(
        vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[FeatureGrant("navigation", NAV_UNTIL)], now=now
    )
    key_set = jwks(at=now)
    assert len(key_set["keys"]) == 2

    key = pyjwt.PyJWKSet.from_dict(key_set)[pyjwt.get_unverified_header(issued.token)["kid"]]
    claims = pyjwt.decode(issued.token, key, algorithms=["EdDSA"], audience=vehicle.vin)

    assert claims["features"] == [{"code": "navigation", "until": int(NAV_UNTIL.timestamp())}]
