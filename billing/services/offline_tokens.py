"""Offline entitlement tokens: compact JWS signed with Ed25519 (RFC 7515, RFC 8037: `alg: EdDSA`,
OKP keys with `crv: Ed25519`).

A car caches the JWKS and checks, without network, which features it may use. The
verifier below is the reference of what the car's SDK does, following RFC 8725: one
pinned algorithm, the key chosen by `kid` from the JWKS only, explicit `typ`, and
every time and audience claim required. Any JOSE library verifies the tokens too when it is told
the same: joserfc, PyJWT and jwcrypto (tests/billing/test_token_interop.py, README).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import OKPKey
from joserfc.util import json_b64encode, urlsafe_b64decode, urlsafe_b64encode

from billing.services.signing_keys import ALGORITHM, CURVE, KEY_TYPE, signing_key_for_signing
from core.errors import BillingError, ErrorCode, ValidationError
from vehicles.state_cache import LocalVersionedCache

#: Explicit JWT type (RFC 8725 section 3.11) so no other JWT of ours passes as an entitlement.
TOKEN_TYPE = "entitlement+jwt"
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_REQUIRED_CLAIMS = ("iss", "aud", "sub", "features", "iat", "nbf", "exp", "jti")


class TokenInvalid(BillingError):
    """The token must not be trusted; `reason` says why (a short stable string)."""

    status_code = 401
    default_code = ErrorCode.TOKEN_INVALID

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid entitlement token: {reason}.", details={"reason": reason})
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FeatureGrant:
    code: str
    valid_until: datetime | None = None

    def __post_init__(self) -> None:
        if self.valid_until is not None and self.valid_until.utcoffset() is None:
            raise ValidationError("valid_until must be timezone-aware.", details={"feature": self.code})


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    kid: str
    jti: str
    issued_at: datetime
    expires_at: datetime


# joserfc's RFC 8037 implementation, used directly: looked up by name, joserfc warns on every token
# that RFC 9864 deprecates the name `EdDSA` (the signature is the same; the curve is pinned by the key).
_EDDSA = jws.JWSRegistry.algorithms[ALGORITHM]

_private_keys: dict[str, OKPKey] = {}  # kid -> parsed key; a kid names one key forever


def _private_key(kid: str, private_jwk: dict) -> OKPKey:
    if kid not in _private_keys:
        # Without its stored `alg`: keys created before the switch to `EdDSA` say `Ed25519`.
        _private_keys[kid] = OKPKey.import_key({k: v for k, v in private_jwk.items() if k != "alg"})
    return _private_keys[kid]


def _sign_compact(header: dict[str, Any], claims: dict[str, Any], key: OKPKey) -> str:
    signing_input = json_b64encode(header) + b"." + json_b64encode(claims)
    return (signing_input + b"." + urlsafe_b64encode(_EDDSA.sign(signing_input, key))).decode("ascii")


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def offline_token_issue(
    *,
    vehicle_id: str,
    vin: str,
    features: Sequence[FeatureGrant],
    now: datetime,
    ttl: timedelta | None = None,
) -> IssuedToken:
    """Sign the feature list of one vehicle; the lifetime is capped at the policy maximum."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValidationError("now must be a timezone-aware datetime.", details={"field": "now"})
    max_ttl: timedelta = settings.ENTITLEMENT_TOKEN_MAX_TTL
    # Whole seconds, rounded down: exp - iat never exceeds the maximum TTL.
    lifetime_seconds = int((max_ttl if ttl is None else min(ttl, max_ttl)).total_seconds())
    if lifetime_seconds < 1:
        raise ValidationError("ttl must be at least one second.", details={"field": "ttl"})
    issued_at = datetime.fromtimestamp(_unix(now), tz=UTC)
    expires_at = issued_at + timedelta(seconds=lifetime_seconds)
    key = signing_key_for_signing(at=now)
    jti = uuid.uuid4().hex
    claims = {
        "iss": settings.ENTITLEMENT_TOKEN_ISSUER,
        "aud": vin,
        "sub": str(vehicle_id),
        "features": [
            {"code": grant.code, "until": None if grant.valid_until is None else _unix(grant.valid_until)}
            for grant in features
        ],
        "iat": _unix(issued_at),
        "nbf": _unix(issued_at),
        "exp": _unix(expires_at),
        "jti": jti,
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": TOKEN_TYPE}
    private_key = _private_key(key.kid, key.private_jwk)
    token = _sign_compact(header, claims, private_key)
    return IssuedToken(token=token, kid=key.kid, jti=jti, issued_at=issued_at, expires_at=expires_at)


def _verification_key(jwk_set: dict[str, Any], kid: object) -> OKPKey:
    """The OKP/Ed25519 public key published under `kid`, imported from its public members only."""
    if not isinstance(kid, str) or not kid:
        raise TokenInvalid("missing_kid")
    keys = jwk_set.get("keys") if isinstance(jwk_set, dict) else None
    matches = [k for k in keys or [] if isinstance(k, dict) and k.get("kid") == kid]
    if len(matches) != 1:
        raise TokenInvalid("unknown_kid")
    jwk = matches[0]
    if (
        jwk.get("kty") != KEY_TYPE
        or jwk.get("crv") != CURVE
        or jwk.get("alg", ALGORITHM) != ALGORITHM
        or jwk.get("use", "sig") != "sig"
    ):
        raise TokenInvalid("key_not_allowed")
    try:
        return OKPKey.import_key({"kty": KEY_TYPE, "crv": CURVE, "x": jwk["x"]})
    except (JoseError, KeyError, TypeError, ValueError) as error:
        raise TokenInvalid("key_not_allowed") from error


def _check_claims(claims: dict[str, Any], *, vin: str, now: datetime, leeway: int) -> None:
    # every claim required; `features` may be an empty list (a token may grant nothing)
    options: dict[str, jwt.ClaimsOption] = {
        name: {"essential": True, "allow_blank": name == "features"} for name in _REQUIRED_CLAIMS
    }
    registry = jwt.JWTClaimsRegistry(now=_unix(now), leeway=leeway, **options)
    try:
        registry.validate(claims)
    except MissingClaimError as error:
        raise TokenInvalid("missing_claim") from error
    except ExpiredTokenError as error:
        raise TokenInvalid("expired") from error
    except InvalidClaimError as error:
        reason = "not_yet_valid" if error.claim in ("nbf", "iat") else "invalid_claim"
        raise TokenInvalid(reason) from error
    if claims["iss"] != settings.ENTITLEMENT_TOKEN_ISSUER:
        raise TokenInvalid("wrong_issuer")
    if claims["aud"] != vin:  # exactly our VIN: no list, no prefix
        raise TokenInvalid("wrong_audience")
    if claims["exp"] - claims["iat"] > settings.ENTITLEMENT_TOKEN_MAX_TTL.total_seconds():
        raise TokenInvalid("lifetime_too_long")
    features = claims["features"]
    if not isinstance(features, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("code"), str)
        and (f.get("until") is None or type(f["until"]) is int)
        for f in features
    ):
        raise TokenInvalid("invalid_claim")


def offline_token_verify(
    *, token: str, vin: str, jwks: dict[str, Any], now: datetime, leeway: int = 0
) -> dict:
    """Verify `token` as a car with `vin` would, offline, against a cached JWKS; returns the claims.

    Raises `TokenInvalid` on anything wrong: malformed, other algorithm (`none`, HS256...),
    unknown kid, bad signature, wrong type, issuer or audience, expired or not yet valid.
    """
    try:
        obj = jws.extract_compact(token.encode("ascii"))
    except (JoseError, UnicodeError, ValueError, TypeError, AttributeError) as error:
        raise TokenInvalid("malformed") from error
    header = obj.headers()
    if not isinstance(header, dict):
        raise TokenInvalid("malformed")
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid("algorithm_not_allowed")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenInvalid("wrong_type")
    if not set(header) <= _ALLOWED_HEADER:  # no crit, b64, jku, jwk, x5u...: nothing fetched or implied
        raise TokenInvalid("unsupported_header")
    key = _verification_key(jwks, header.get("kid"))
    try:
        signing_input = obj.segments["header"] + b"." + obj.segments["payload"]
        valid = _EDDSA.verify(signing_input, urlsafe_b64decode(obj.segments["signature"]), key)
    except (JoseError, KeyError, TypeError, ValueError) as error:
        raise TokenInvalid("bad_signature") from error
    if not valid:
        raise TokenInvalid("bad_signature")
    try:
        claims = json.loads(obj.payload)
    except (TypeError, ValueError) as error:
        raise TokenInvalid("malformed") from error
    if not isinstance(claims, dict):
        raise TokenInvalid("malformed")
    _check_claims(claims, vin=vin, now=now, leeway=leeway)
    return claims


# Cars poll for tokens far more often than their rights change: within a short window the token
# just issued to the same car, for the same state stamp and before any entitlement boundary, is
# handed out again instead of signing a new one.
TOKEN_REUSE_WINDOW = timedelta(seconds=60)
_recent_tokens = LocalVersionedCache(max_entries=100_000)


def offline_token_current(
    *,
    vehicle_id: str,
    vin: str,
    features: Sequence[FeatureGrant],
    state_version: str,
    next_change: datetime | None,
    now: datetime,
) -> IssuedToken:
    """`offline_token_issue`, reusing this process's last token for the vehicle while its state
    stamp is unchanged, `TOKEN_REUSE_WINDOW` has not passed and no entitlement boundary came."""
    recent = _recent_tokens.get(vehicle_id, state_version)
    if recent is not None:
        token, reuse_until = recent
        if token.issued_at <= now < reuse_until:
            return token
    token = offline_token_issue(vehicle_id=vehicle_id, vin=vin, features=features, now=now)
    reuse_until = min(t for t in (token.issued_at + TOKEN_REUSE_WINDOW, next_change) if t is not None)
    _recent_tokens.put(
        vehicle_id, state_version, (token, reuse_until), ttl=TOKEN_REUSE_WINDOW.total_seconds()
    )
    return token
