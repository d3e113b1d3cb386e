"""Offline entitlement tokens (R20): what a car accepts, and every forgery it must refuse."""

import base64
import datetime as dt
import hashlib
import hmac
import json

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from joserfc.jwk import OKPKey

from billing.services.offline_tokens import (
    TOKEN_TYPE,
    FeatureGrant,
    TokenInvalid,
    offline_token_issue,
    offline_token_verify,
)
from billing.services.signing_keys import jwks, signing_key_for_signing, signing_key_rotate
from core.errors import ValidationError
from core.models import SigningKey
from tests.factories import VehicleFactory

pytestmark = pytest.mark.django_db
UTC = dt.UTC
NOW = dt.datetime(2030, 3, 1, 9, 30, 15, tzinfo=UTC)
NAV_UNTIL = dt.datetime(2030, 6, 1, tzinfo=UTC)
OTHER_VIN = "WVWZZZ1JZXW999999"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign(header: dict, claims: dict, key: OKPKey) -> str:
    """An Ed25519 JWS made by hand, so any header can be tried."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return f"{signing_input}.{b64url(key.private_key.sign(signing_input.encode()))}"


def our_key(kid: str) -> OKPKey:
    return OKPKey.import_key(SigningKey.objects.get(kid=kid).private_jwk)


def split(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)), signature


def reason_of(token: str, *, vin: str, jwk_set: dict, now: dt.datetime = NOW, leeway: int = 0) -> str:
    with pytest.raises(TokenInvalid) as caught:
        offline_token_verify(token=token, vin=vin, jwks=jwk_set, now=now, leeway=leeway)
    return caught.value.reason


@pytest.fixture
def vehicle():
    return VehicleFactory()


@pytest.fixture
def issued(vehicle):
    return offline_token_issue(
        vehicle_id=str(vehicle.pk),
        vin=vehicle.vin,
        features=[FeatureGrant("navigation", NAV_UNTIL), FeatureGrant("heated_seats", None)],
        now=NOW,
        ttl=dt.timedelta(hours=12),
    )


@pytest.fixture
def published(issued):
    return jwks(at=NOW)


def test_token_verifies_with_the_jwks_and_carries_the_claims(vehicle, issued, published):
    claims = offline_token_verify(token=issued.token, vin=vehicle.vin, jwks=published, now=NOW)

    header, _, _ = split(issued.token)
    assert header == {"alg": "EdDSA", "kid": issued.kid, "typ": TOKEN_TYPE}
    iat = int(NOW.timestamp())
    assert claims == {
        "iss": settings.ENTITLEMENT_TOKEN_ISSUER,
        "aud": vehicle.vin,
        "sub": str(vehicle.pk),
        "features": [
            {"code": "navigation", "until": int(NAV_UNTIL.timestamp())},
            {"code": "heated_seats", "until": None},
        ],
        "iat": iat,
        "nbf": iat,
        "exp": iat + 12 * 3600,
        "jti": issued.jti,
    }
    assert issued.issued_at == NOW.replace(microsecond=0)
    assert issued.expires_at == NOW + dt.timedelta(hours=12)
    assert issued.kid == SigningKey.objects.get().kid


def test_each_token_has_its_own_jti(vehicle):
    tokens = [
        offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=NOW)
        for _ in range(3)
    ]

    assert len({t.jti for t in tokens}) == 3
    assert all(len(t.jti) == 32 for t in tokens)


def test_changed_payload_is_rejected(vehicle, issued, published):
    header_segment, _, signature = issued.token.split(".")
    _, claims, _ = split(issued.token)
    claims["features"].append({"code": "sport_mode", "until": None})
    forged = f"{header_segment}.{b64json(claims)}.{signature}"

    assert reason_of(forged, vin=vehicle.vin, jwk_set=published) == "bad_signature"


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-"))
def test_any_changed_payload_character_is_rejected(vehicle, issued, published, position, replacement):
    header_segment, payload_segment, signature = issued.token.split(".")
    index = position % len(payload_segment)
    if payload_segment[index] == replacement:
        replacement = "B"
    changed = payload_segment[:index] + replacement + payload_segment[index + 1 :]

    with pytest.raises(TokenInvalid):
        offline_token_verify(
            token=f"{header_segment}.{changed}.{signature}", vin=vehicle.vin, jwks=published, now=NOW
        )


def test_signature_from_another_key_under_our_kid_is_rejected(vehicle, issued, published):
    _, claims, _ = split(issued.token)
    intruder = OKPKey.generate_key("Ed25519")
    forged = sign({"alg": "EdDSA", "kid": issued.kid, "typ": TOKEN_TYPE}, claims, intruder)

    assert reason_of(forged, vin=vehicle.vin, jwk_set=published) == "bad_signature"


def test_token_of_a_key_outside_the_jwks_is_rejected(vehicle, issued, published):
    _, claims, _ = split(issued.token)
    intruder = OKPKey.generate_key("Ed25519", auto_kid=True)
    forged = sign({"alg": "EdDSA", "kid": intruder.kid, "typ": TOKEN_TYPE}, claims, intruder)

    assert reason_of(forged, vin=vehicle.vin, jwk_set=published) == "unknown_kid"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_rejected(vehicle, issued, published, alg):
    _, claims, _ = split(issued.token)
    forged = f"{b64json({'alg': alg, 'kid': issued.kid, 'typ': TOKEN_TYPE})}.{b64json(claims)}."

    assert reason_of(forged, vin=vehicle.vin, jwk_set=published) == "algorithm_not_allowed"


@pytest.mark.parametrize("secret_form", ["raw_x", "x_text", "jwk_json"])
def test_hs256_signed_with_the_public_key_is_rejected(vehicle, issued, published, secret_form):
    _, claims, _ = split(issued.token)
    jwk = published["keys"][0]
    secret = {
        "raw_x": b64url_decode(jwk["x"]),
        "x_text": jwk["x"].encode(),
        "jwk_json": json.dumps(jwk).encode(),
    }[secret_form]
    signing_input = f"{b64json({'alg': 'HS256', 'kid': issued.kid, 'typ': TOKEN_TYPE})}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64url(mac)}"

    assert reason_of(forged, vin=vehicle.vin, jwk_set=published) == "algorithm_not_allowed"


@pytest.mark.parametrize("alg", ["Ed25519", "Ed448", "eddsa", "ES256"])
def test_other_algorithm_names_are_not_accepted_either(vehicle, issued, published, alg):
    """One pinned algorithm (RFC 8725 3.1): `EdDSA`; RFC 9864's `Ed25519` for the same signature is
    refused too, like any other name."""
    _, claims, _ = split(issued.token)
    relabelled = sign({"alg": alg, "kid": issued.kid, "typ": TOKEN_TYPE}, claims, our_key(issued.kid))

    assert reason_of(relabelled, vin=vehicle.vin, jwk_set=published) == "algorithm_not_allowed"


def test_unknown_kid_is_rejected(vehicle, issued, published):
    someone_elses = {"keys": [{**published["keys"][0], "kid": "another-kid"}]}

    assert reason_of(issued.token, vin=vehicle.vin, jwk_set=someone_elses) == "unknown_kid"
    assert reason_of(issued.token, vin=vehicle.vin, jwk_set={"keys": []}) == "unknown_kid"


def test_token_without_kid_is_not_matched_to_the_only_key(vehicle, issued, published):
    _, claims, _ = split(issued.token)
    no_kid = sign({"alg": "EdDSA", "typ": TOKEN_TYPE}, claims, our_key(issued.kid))

    assert len(published["keys"]) == 1
    assert reason_of(no_kid, vin=vehicle.vin, jwk_set=published) == "missing_kid"


@pytest.mark.parametrize(
    ("header_extra", "reason"),
    [
        ({"typ": "JWT"}, "wrong_type"),
        ({"jku": "https://attacker.example/jwks.json"}, "unsupported_header"),
        ({"crit": ["exp"]}, "unsupported_header"),
    ],
)
def test_unexpected_header_is_rejected(vehicle, issued, published, header_extra, reason):
    _, claims, _ = split(issued.token)
    header = {"alg": "EdDSA", "kid": issued.kid, "typ": TOKEN_TYPE, **header_extra}
    token = sign(header, claims, our_key(issued.kid))

    assert reason_of(token, vin=vehicle.vin, jwk_set=published) == reason


def test_expired_token_is_rejected(vehicle, issued, published):
    with time_machine.travel(issued.expires_at - dt.timedelta(seconds=1), tick=False):
        offline_token_verify(token=issued.token, vin=vehicle.vin, jwks=published, now=timezone.now())

    with time_machine.travel(issued.expires_at, tick=False):
        assert reason_of(issued.token, vin=vehicle.vin, jwk_set=published, now=timezone.now()) == "expired"
        offline_token_verify(
            token=issued.token, vin=vehicle.vin, jwks=published, now=timezone.now(), leeway=60
        )

    with time_machine.travel(issued.expires_at + dt.timedelta(seconds=61), tick=False):
        reason = reason_of(issued.token, vin=vehicle.vin, jwk_set=published, now=timezone.now(), leeway=60)
        assert reason == "expired"


def test_token_not_yet_valid_is_rejected(vehicle):
    future = offline_token_issue(
        vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=NOW + dt.timedelta(hours=1)
    )
    published = jwks(at=NOW + dt.timedelta(hours=1))

    assert reason_of(future.token, vin=vehicle.vin, jwk_set=published, now=NOW) == "not_yet_valid"
    # A clock skew within the leeway is tolerated.
    claims = offline_token_verify(token=future.token, vin=vehicle.vin, jwks=published, now=NOW, leeway=3600)
    assert claims["jti"] == future.jti


def test_token_for_another_vehicle_is_rejected(vehicle, issued, published):
    assert reason_of(issued.token, vin=OTHER_VIN, jwk_set=published) == "wrong_audience"
    assert reason_of(issued.token, vin=vehicle.vin.lower(), jwk_set=published) == "wrong_audience"


def test_token_of_another_issuer_is_rejected(vehicle, issued, published, settings):
    settings.ENTITLEMENT_TOKEN_ISSUER = "https://other-issuer.example"

    assert reason_of(issued.token, vin=vehicle.vin, jwk_set=published) == "wrong_issuer"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "é.é.é", "a.b.c.d", b64url(b'["alg"]') + ".e30.", "e30.e30.e30"]
)
def test_garbage_is_rejected_with_the_single_error(vehicle, issued, published, token):
    with pytest.raises(TokenInvalid):
        offline_token_verify(token=token, vin=vehicle.vin, jwks=published, now=NOW)


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ttl=st.timedeltas(min_value=dt.timedelta(seconds=1), max_value=dt.timedelta(days=3650)))
def test_exp_never_exceeds_the_policy_maximum(vehicle, ttl):
    max_ttl = settings.ENTITLEMENT_TOKEN_MAX_TTL

    issued = offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=NOW, ttl=ttl)

    _, claims, _ = split(issued.token)
    assert claims["exp"] - claims["iat"] <= max_ttl.total_seconds()
    assert claims["exp"] - claims["iat"] == int(min(ttl, max_ttl).total_seconds())
    assert claims["exp"] == int(issued.expires_at.timestamp())
    assert issued.expires_at - NOW <= max_ttl


def test_feature_end_must_be_timezone_aware():
    with pytest.raises(ValidationError):
        FeatureGrant("navigation", dt.datetime(2030, 6, 1))


def test_default_ttl_is_the_maximum(vehicle):
    issued = offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=NOW)

    assert issued.expires_at == NOW.replace(microsecond=0) + settings.ENTITLEMENT_TOKEN_MAX_TTL


@pytest.mark.parametrize("ttl", [dt.timedelta(0), dt.timedelta(seconds=-5), dt.timedelta(milliseconds=10)])
def test_non_positive_ttl_is_refused(vehicle, ttl):
    with pytest.raises(ValidationError):
        offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=NOW, ttl=ttl)


def test_token_claiming_a_lifetime_beyond_the_maximum_is_rejected(vehicle, issued, published):
    _, claims, _ = split(issued.token)
    claims["exp"] = claims["iat"] + int(settings.ENTITLEMENT_TOKEN_MAX_TTL.total_seconds()) + 1
    token = sign({"alg": "EdDSA", "kid": issued.kid, "typ": TOKEN_TYPE}, claims, our_key(issued.kid))

    assert reason_of(token, vin=vehicle.vin, jwk_set=published) == "lifetime_too_long"


def test_rotation_keeps_old_tokens_valid_until_the_old_key_retires(vehicle):
    def issue(at: dt.datetime):
        return offline_token_issue(vehicle_id=str(vehicle.pk), vin=vehicle.vin, features=[], now=at)

    old_key = signing_key_for_signing(at=NOW)
    rotated_at = NOW + dt.timedelta(days=10)
    new_key = signing_key_rotate(
        now=rotated_at, publish_ahead=dt.timedelta(hours=24), retire_previous_after=dt.timedelta(hours=96)
    )

    # Published first, used later: at rotation the JWKS already has both, tokens still use the old key.
    assert {k["kid"] for k in jwks(at=rotated_at)["keys"]} == {old_key.kid, new_key.kid}
    just_before = issue(new_key.active_from - dt.timedelta(seconds=1))
    assert just_before.kid == old_key.kid
    assert issue(new_key.active_from).kid == new_key.kid

    # The last token of the old key verifies until it expires, before the old key retires.
    old_key.refresh_from_db()
    assert just_before.expires_at <= old_key.retires_at
    last_moment = just_before.expires_at - dt.timedelta(seconds=1)
    offline_token_verify(token=just_before.token, vin=vehicle.vin, jwks=jwks(at=last_moment), now=last_moment)

    # From the retirement on the old key is gone: its tokens fail, with any JWKS fetched since.
    after_retirement = jwks(at=old_key.retires_at)
    assert [k["kid"] for k in after_retirement["keys"]] == [new_key.kid]
    reason = reason_of(just_before.token, vin=vehicle.vin, jwk_set=after_retirement, now=last_moment)
    assert reason == "unknown_kid"
