"""Ed25519 signing keys of offline entitlement tokens: creation, rotation, JWKS.

A key's life: published (in the JWKS) -> active (signs new tokens) -> superseded by the
next active key (still published, so the tokens it signed keep verifying) -> retired
(gone from the JWKS). Publication comes `publish_ahead` before activation so cars fetch
the new public key before they meet a token signed with it (RFC 8725 key hygiene).
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from joserfc.jwk import OKPKey

from core.errors import Conflict, ValidationError
from core.models import SigningKey

logger = structlog.get_logger(__name__)

#: The only JWS algorithm of our tokens: Ed25519 signatures over OKP keys with `crv: Ed25519`, named
#: `EdDSA` as RFC 8037 does. RFC 9864's fully specified name `Ed25519` means the same signature, but
#: PyJWT does not know it and joserfc accepts neither name without being told; `EdDSA` with the
#: curve pinned in the JWK is what joserfc, PyJWT and jwcrypto all verify
#: (tests/billing/test_token_interop.py).
ALGORITHM = "EdDSA"
KEY_TYPE = "OKP"
CURVE: Final = "Ed25519"

# One application-wide PostgreSQL advisory lock serialises key bootstrap and rotation.
_KEY_LOCK_ID = zlib.crc32(b"billing.signing_keys")


def _require_aware(**values: datetime) -> None:
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(f"{name} must be a timezone-aware datetime.", details={"field": name})


def _lock_keys() -> None:
    """Take the key-management lock until the end of the current transaction."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_KEY_LOCK_ID])


def signing_key_create(*, published_at: datetime, active_from: datetime) -> SigningKey:
    """A new Ed25519 key; its kid is the RFC 7638 thumbprint of the public key."""
    _require_aware(published_at=published_at, active_from=active_from)
    if active_from < published_at:
        raise ValidationError("A key must be published before it signs.", details={"field": "active_from"})
    signing_key_memo_clear()
    key = OKPKey.generate_key(CURVE, private=True)
    kid = key.thumbprint()
    params = {"kid": kid, "alg": ALGORITHM, "use": "sig"}
    return SigningKey.objects.create(
        kid=kid,
        private_jwk=dict(key.as_dict(private=True, **params)),
        public_jwk=dict(key.as_dict(private=False, **params)),
        published_at=published_at,
        active_from=active_from,
    )


def _signing_keys_usable(*, at: datetime) -> QuerySet[SigningKey]:
    return SigningKey.objects.filter(Q(retires_at__isnull=True) | Q(retires_at__gt=at), active_from__lte=at)


def _signing_key_current(*, at: datetime) -> SigningKey | None:
    return _signing_keys_usable(at=at).order_by("-active_from", "-id").first()


# The signing key looked up last, reused for `_MEMO_TTL` by this process (one query less per token).
# It never outlives the key's retirement nor the activation of a newer key known at lookup time;
# a key rotated in by another process meanwhile was published long before it signs, so signing
# with the previous one for a few more seconds is still valid.
_MEMO_TTL = timedelta(seconds=30)
_memo: tuple[datetime, datetime, SigningKey] | None = None


def signing_key_memo_clear() -> None:
    global _memo
    _memo = None


def signing_key_for_signing(*, at: datetime) -> SigningKey:
    """The newest key active at `at` and not retired.

    With none (first use, or every key retired) one is bootstrapped, published and
    active at `at`, under a lock so concurrent first requests create exactly one.
    """
    global _memo
    _require_aware(at=at)
    memo = _memo
    if memo is not None and memo[0] <= at < memo[1]:
        return memo[2]
    key = _signing_key_current(at=at)
    if key is not None:
        next_activation = (
            SigningKey.objects.filter(active_from__gt=at)
            .order_by("active_from")
            .values_list("active_from", flat=True)
            .first()
        )
        ends = [t for t in (key.retires_at, next_activation) if t is not None]
        _memo = (at, min([at + _MEMO_TTL, *ends]), key)
        return key
    with transaction.atomic():
        _lock_keys()
        key = _signing_key_current(at=at)
        if key is None:
            key = signing_key_create(published_at=at, active_from=at)
            logger.warning("signing_key_bootstrapped", kid=key.kid, at=at.isoformat())
    return key


def signing_key_rotate(
    *, now: datetime, publish_ahead: timedelta, retire_previous_after: timedelta
) -> SigningKey:
    """Create the next key, published now and active from `now + publish_ahead`.

    Every key not yet scheduled for retirement (the current one, and any still pending)
    retires at `next.active_from + retire_previous_after`: at least the maximum token
    TTL, so the last tokens it signed stay verifiable until they expire.
    """
    _require_aware(now=now)
    if publish_ahead < timedelta(0):
        raise ValidationError("publish_ahead must not be negative.", details={"field": "publish_ahead"})
    max_ttl: timedelta = settings.ENTITLEMENT_TOKEN_MAX_TTL
    if retire_previous_after < max_ttl:
        raise ValidationError(
            "retire_previous_after must be at least the maximum token TTL.",
            details={"field": "retire_previous_after", "minimum_seconds": int(max_ttl.total_seconds())},
        )
    with transaction.atomic():
        _lock_keys()
        pending = SigningKey.objects.filter(
            active_from__gt=now + publish_ahead, retires_at__isnull=True
        ).first()
        if pending is not None:
            raise Conflict(
                "A key that becomes active later than the new one is already pending.",
                details={"kid": pending.kid, "active_from": pending.active_from.isoformat()},
            )
        current = _signing_key_current(at=now) or signing_key_create(published_at=now, active_from=now)
        next_key = signing_key_create(published_at=now, active_from=now + publish_ahead)
        retires_at = next_key.active_from + retire_previous_after
        SigningKey.objects.filter(retires_at__isnull=True).exclude(pk=next_key.pk).update(
            retires_at=retires_at
        )
    logger.info(
        "signing_key_rotated",
        kid=next_key.kid,
        previous_kid=current.kid,
        active_from=next_key.active_from.isoformat(),
        previous_retires_at=retires_at.isoformat(),
    )
    return next_key


def signing_keys_published(*, at: datetime) -> list[SigningKey]:
    """Keys in the JWKS at `at`: published and not yet retired, newest first."""
    _require_aware(at=at)
    return list(
        SigningKey.objects.filter(
            Q(retires_at__isnull=True) | Q(retires_at__gt=at), published_at__lte=at
        ).order_by("-active_from", "-id")
    )


_PUBLIC_MEMBERS = ("kty", "crv", "x")


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """The public JWK of `key` with kid, alg and use: only whitelisted members, never `d`."""
    jwk = {name: key.public_jwk[name] for name in _PUBLIC_MEMBERS}
    jwk.update(kid=key.kid, alg=ALGORITHM, use="sig")
    if "d" in jwk or jwk["kty"] != KEY_TYPE or jwk["crv"] != CURVE:
        raise RuntimeError(f"signing key {key.kid} has an unexpected public JWK")
    return jwk


def jwks(*, at: datetime) -> dict[str, list[dict[str, Any]]]:
    """The JWK Set (RFC 7517 section 5) cars verify offline tokens with."""
    return {"keys": [public_jwk(key) for key in signing_keys_published(at=at)]}
