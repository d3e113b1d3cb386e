"""Credentials of the two kinds of API clients.

* **Vehicles** authenticate with their own random secret (`Authorization: Vehicle <key_id>.<secret>`).
  Only a SHA-256 hash is stored. A slow password hash (PBKDF2, argon2) buys nothing here: the secret
  is 256 random bits, so there is nothing to brute-force from a leaked hash, while a car polls often
  and a slow hash would cost CPU on every request. There is no fleet-wide secret (R23).
* **Owners** (mobile app) use JWT access + refresh tokens (simplejwt). Refresh tokens rotate; every
  token descending from one login shares a *family* id (claim `fam`, also the prefix of the `jti`,
  so the family is one indexed prefix query on `OutstandingToken.jti`). Presenting a refresh token
  that was already rotated revokes the whole family (RFC 9700 §4.14.2) and answers `token_reused`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from core.errors import BillingError, ErrorCode
from vehicles.models import Vehicle, VehicleCredential
from vehicles.state_cache import LocalVersionedCache, vehicle_state_changed, vehicle_state_version

logger = structlog.get_logger(__name__)

# --- Vehicles --------------------------------------------------------------------------------

KEY_ID_PREFIX = "vk_"
KEY_ID_RE = re.compile(r"vk_[0-9a-f]{24}")
SECRET_BYTES = 32
HASH_SCHEME = "sha256"
# `last_used_at` is informative (operators, stale-credential reports): one write a minute is enough.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class VehicleCredentialInvalid(BillingError):
    """Unknown key id, wrong secret or malformed credential (deliberately not distinguished)."""

    status_code = 401
    default_code = ErrorCode.NOT_AUTHENTICATED


class VehicleCredentialRevoked(VehicleCredentialInvalid):
    """The secret is right but the credential was revoked (told only to whoever knows the secret)."""

    default_code = ErrorCode.CREDENTIAL_REVOKED


@dataclass(frozen=True)
class IssuedCredential:
    """A freshly issued credential. `secret` exists only here: show it once, never store it."""

    key_id: str
    secret: str = field(repr=False)
    credential: VehicleCredential

    @property
    def authorization(self) -> str:
        """The `Authorization` header value the vehicle sends."""
        return f"Vehicle {self.key_id}.{self.secret}"


def vehicle_secret_hash(secret: str) -> str:
    """The stored form of a vehicle secret: `sha256$<hex digest>`."""
    return f"{HASH_SCHEME}${hashlib.sha256(secret.encode()).hexdigest()}"


# Compared against when the key id is unknown, so that path costs the same work as a wrong secret.
_UNKNOWN_KEY_HASH = vehicle_secret_hash(secrets.token_urlsafe(SECRET_BYTES))


@transaction.atomic
def vehicle_credential_issue(*, vehicle: Vehicle) -> IssuedCredential:
    """Issue a new credential for the vehicle, revoking its active one (rotation)."""
    # Serializes concurrent issues for one vehicle (else the partial unique constraint would fail one).
    Vehicle.objects.select_for_update().only("pk").get(pk=vehicle.pk)
    now = timezone.now()
    revoked = VehicleCredential.objects.filter(vehicle=vehicle, revoked_at__isnull=True).update(
        revoked_at=now
    )
    secret = secrets.token_urlsafe(SECRET_BYTES)
    credential = VehicleCredential.objects.create(
        vehicle=vehicle,
        key_id=KEY_ID_PREFIX + secrets.token_hex(12),
        secret_hash=vehicle_secret_hash(secret),
    )
    vehicle_state_changed(vehicle.pk)
    logger.info(
        "vehicle_credential.issued", vehicle_id=str(vehicle.pk), key_id=credential.key_id, rotated=revoked
    )
    return IssuedCredential(key_id=credential.key_id, secret=secret, credential=credential)


def vehicle_credential_revoke(*, vehicle: Vehicle) -> int:
    """Revoke the vehicle's active credential; returns how many were revoked (0 or 1)."""
    revoked = VehicleCredential.objects.filter(vehicle=vehicle, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    vehicle_state_changed(vehicle.pk)
    logger.info("vehicle_credential.revoked", vehicle_id=str(vehicle.pk), revoked=revoked)
    return revoked


def _credential_with_vehicle(key_id: str) -> VehicleCredential | None:
    """The credential with this key id, its vehicle loaded, in one query (cache misses only)."""
    try:
        return VehicleCredential.objects.select_related("vehicle").get(key_id=key_id)
    except VehicleCredential.DoesNotExist:
        return None


_credentials = LocalVersionedCache()
_key_vehicles: dict[str, Any] = {}  # a key id never moves to another vehicle


def _credential_current(key_id: str) -> VehicleCredential | None:
    """The credential (vehicle loaded, `state_version` set) from this process's hot copy when the
    vehicle's stamp is unchanged, else from the database."""
    vehicle_id = _key_vehicles.get(key_id)
    if vehicle_id is not None:
        version = vehicle_state_version(vehicle_id)
        credential = _credentials.get(key_id, version)
        if credential is not None:
            return credential
    credential = _credential_with_vehicle(key_id)
    if credential is None:
        return None
    if vehicle_id != credential.vehicle_id:  # first sight: the stamp must predate the read we keep
        vehicle_id = credential.vehicle_id
        version = vehicle_state_version(vehicle_id)
        credential = _credential_with_vehicle(key_id)
        if credential is None:
            return None
        if len(_key_vehicles) > 500_000:
            _key_vehicles.clear()
        _key_vehicles[key_id] = vehicle_id
    credential.state_version = version
    _credentials.put(key_id, version, credential)
    return credential


def vehicle_credential_verify(*, key_id: str, secret: str) -> VehicleCredential:
    """The active credential matching `key_id` and `secret` (its `vehicle` loaded), or raise
    `VehicleCredentialInvalid` / `VehicleCredentialRevoked`. Writes only `last_used_at`, at most
    once per `LAST_USED_RESOLUTION`, and only on success."""
    presented = vehicle_secret_hash(secret)
    credential = None
    if KEY_ID_RE.fullmatch(key_id):
        credential = _credential_current(key_id)
    if credential is None:
        hmac.compare_digest(presented, _UNKNOWN_KEY_HASH)
        raise VehicleCredentialInvalid("Invalid vehicle credential.")
    if not hmac.compare_digest(presented, credential.secret_hash):
        raise VehicleCredentialInvalid("Invalid vehicle credential.")
    if credential.revoked_at is not None:
        raise VehicleCredentialRevoked("This vehicle credential has been revoked.")
    _touch(credential)
    return credential


def vehicle_credential_authenticate(*, key_id: str, secret: str) -> Vehicle:
    """The vehicle owning this active credential; raises like `vehicle_credential_verify`."""
    return vehicle_credential_verify(key_id=key_id, secret=secret).vehicle


def _touch(credential: VehicleCredential) -> None:
    now = timezone.now()
    stale_before = now - LAST_USED_RESOLUTION
    if credential.last_used_at is not None and credential.last_used_at > stale_before:
        return
    # Conditional: concurrent requests of the same car write at most once.
    VehicleCredential.objects.filter(pk=credential.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale_before)
    ).update(last_used_at=now)
    credential.last_used_at = now


# --- Owners (JWT refresh-token families) -----------------------------------------------------

FAMILY_CLAIM = "fam"
TOKEN_REUSED = ErrorCode.TOKEN_REUSED


class RefreshTokenInvalid(BillingError):
    """Malformed, expired, wrongly signed or unknown refresh token, or an inactive user."""

    status_code = 401
    default_code = ErrorCode.NOT_AUTHENTICATED


class RefreshTokenReused(RefreshTokenInvalid):
    """A refresh token was presented after it had been rotated or revoked: its family is revoked."""

    default_code = TOKEN_REUSED


class _RefreshTokenReplayed(TokenError):
    """Raised by `FamilyRefreshToken` when a validly signed token is on the blacklist."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__("Token is blacklisted")
        self.family: str | None = payload.get(FAMILY_CLAIM)


class FamilyRefreshToken(RefreshToken):
    """A refresh token that belongs to the family of one login.

    The family id (`fam`, random) is set when the token is created for a login and is kept when the
    token rotates; each `jti` is `<fam>.<random>`, so a family's tokens are found by jti prefix.
    """

    def __init__(self, token: Any = None, verify: bool = True) -> None:
        super().__init__(token, verify)
        if token is None:
            self.payload[FAMILY_CLAIM] = uuid.uuid4().hex
            self.set_jti()

    def set_jti(self) -> None:
        family = self.payload.get(FAMILY_CLAIM)
        suffix = uuid.uuid4().hex
        self.payload[jwt_settings.JTI_CLAIM] = f"{family}.{suffix}" if family else suffix

    def check_blacklist(self) -> None:
        # Runs after the signature and expiry were verified: a blacklisted token here is a replay.
        if BlacklistedToken.objects.filter(token__jti=self.payload[jwt_settings.JTI_CLAIM]).exists():
            raise _RefreshTokenReplayed(self.payload)


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str = field(repr=False)


def owner_token_obtain(*, user: Any) -> TokenPair:
    """A new login (a new token family) for an already authenticated user."""
    refresh = FamilyRefreshToken.for_user(user)
    return TokenPair(access=str(refresh.access_token), refresh=str(refresh))


def owner_token_refresh(*, refresh: str) -> TokenPair:
    """Rotate a refresh token: blacklist it, return a new access + refresh of the same family.

    Replaying a rotated token (or losing a race to rotate the same token twice) revokes the
    family and raises `RefreshTokenReused`; a stolen token is thus usable at most until the
    legitimate client refreshes, and then neither can continue.
    """
    replayed_family: str | None = None
    with transaction.atomic():
        try:
            token = FamilyRefreshToken(refresh)
        except _RefreshTokenReplayed as exc:
            replayed_family = exc.family
        except TokenError as exc:
            raise RefreshTokenInvalid(str(exc.args[0] if exc.args else "Token is invalid")) from exc
        else:
            family = token.get(FAMILY_CLAIM)
            if not family:
                raise RefreshTokenInvalid("Token is invalid")
            _active_user(token)
            outstanding = (
                OutstandingToken.objects.select_for_update().filter(jti=token[jwt_settings.JTI_CLAIM]).first()
            )
            if outstanding is None:
                raise RefreshTokenInvalid("Token is invalid")
            if BlacklistedToken.objects.filter(token=outstanding).exists():
                replayed_family = family  # a concurrent refresh rotated it while we waited for the lock
            else:
                BlacklistedToken.objects.create(token=outstanding)
                token.set_jti()
                token.set_exp()
                token.set_iat()
                token.outstand()
                return TokenPair(access=str(token.access_token), refresh=str(token))
    if not replayed_family:
        raise RefreshTokenInvalid("Token is blacklisted")
    revoked = owner_token_family_revoke(family=replayed_family)
    logger.warning("owner_token.reused", family=replayed_family, revoked=revoked)
    raise RefreshTokenReused(
        "This refresh token was already used; the session is revoked. Log in again.",
        details={"revoked_tokens": revoked},
    )


def owner_token_family_revoke(*, family: str) -> int:
    """Blacklist every not yet blacklisted refresh token of the family; returns how many."""
    with transaction.atomic():
        ids = list(
            OutstandingToken.objects.filter(
                jti__startswith=f"{family}.", blacklistedtoken__isnull=True
            ).values_list("pk", flat=True)
        )
        BlacklistedToken.objects.bulk_create(
            [BlacklistedToken(token_id=pk) for pk in ids], ignore_conflicts=True
        )
    return len(ids)


def owner_logout(*, refresh: str) -> int:
    """End the session (the token family) of this refresh token; idempotent. Returns how many
    tokens were revoked. A validly signed token that is already blacklisted is accepted."""
    try:
        family = FamilyRefreshToken(refresh).get(FAMILY_CLAIM)
    except _RefreshTokenReplayed as exc:
        family = exc.family
    except TokenError as exc:
        raise RefreshTokenInvalid(str(exc.args[0] if exc.args else "Token is invalid")) from exc
    if not family:
        raise RefreshTokenInvalid("Token is invalid")
    revoked = owner_token_family_revoke(family=family)
    logger.info("owner_token.logout", family=family, revoked=revoked)
    return revoked


def _active_user(token: FamilyRefreshToken) -> Any:
    user_id = token.get(jwt_settings.USER_ID_CLAIM)
    user = get_user_model().objects.filter(**{jwt_settings.USER_ID_FIELD: user_id}).first()
    if user is None or not jwt_settings.USER_AUTHENTICATION_RULE(user):
        raise RefreshTokenInvalid("No active account found for the given token.")
    return user
