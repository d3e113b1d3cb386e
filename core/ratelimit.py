"""Abuse limits enforced atomically across processes.

DRF's own throttles read, compare and write back a cached history: two workers can both pass
the last slot. Here each window is one Redis counter (production and tests), incremented with INCR
and dated with EXPIRE NX in one MULTI: at most `limit` requests pass, in one round trip.

Anonymous callers (login) are counted per client address, and `X-Forwarded-For` is trusted only as
far as `settings.NUM_PROXIES` says (env `NUM_PROXIES`, default 0): with 0 the address is the
socket's peer (`REMOTE_ADDR`) and the header is ignored, since any client can write it; with N
reverse proxies in front of us it is the Nth address from the right, the one our outermost proxy
saw. DRF's default (the whole header as the key) let a client pick a new key per request.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from core.metrics import rate_limit_counted
from core.redis import redis_client, redis_key

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'20/minute' -> (20, 60)."""
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.rstrip("s")]


def rate_limit_hit(*, scope: str, ident: str, now: float | None = None) -> tuple[bool, int]:
    """Count one request of `ident` in `scope`; returns (allowed, seconds until the window ends)."""
    limit, period = parse_rate(settings.RATE_LIMITS[scope])
    now = time.time() if now is None else now
    window = int(now // period)
    name = f"ratelimit:{scope}:{ident}:{window}"
    client = redis_client()
    if client is not None:
        key = redis_key(name)  # one round trip: INCR creates the counter, EXPIRE NX dates it once
        pipe = client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, period + 1, nx=True)
        count = pipe.execute()[0]
    else:  # no Redis (the demo): the cache's add + incr on shared files, good enough for one user
        key = name
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # the window expired between add and incr
            cache.add(key, 1, timeout=period + 1)
            count = 1
    allowed = rate_limit_counted(scope, count <= limit)  # metrics: api_rate_limit_refusals_total
    return allowed, max(1, int((window + 1) * period - now))


def client_address(request: Any) -> str:
    """The caller's IP address, trusting `X-Forwarded-For` only for `settings.NUM_PROXIES` hops."""
    meta = getattr(request, "META", request)
    remote = meta.get("REMOTE_ADDR", "") or ""
    proxies = int(getattr(settings, "NUM_PROXIES", 0) or 0)
    if proxies <= 0:
        return remote
    hops = [hop.strip() for hop in (meta.get("HTTP_X_FORWARDED_FOR") or "").split(",")]
    if len(hops) < proxies:  # fewer hops than proxies: the request did not come through them
        return remote
    candidate = hops[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # garbage in the header: count it against the proxy that sent it
        return remote


class AtomicScopedThrottle(BaseThrottle):
    """Subclass with `scope`; identifies the caller by owner, vehicle or (anonymous) address."""

    scope = ""

    def allow_request(self, request: Request, view: APIView) -> bool:
        allowed, self._wait = rate_limit_hit(scope=self.scope, ident=self._ident(request))
        return allowed

    def wait(self) -> int:
        return self._wait

    def _ident(self, request: Request) -> str:
        user = request.user
        vehicle = getattr(user, "vehicle", None)
        if vehicle is not None:
            return f"vehicle:{vehicle.pk}"
        if user is not None and getattr(user, "is_authenticated", False):
            return f"user:{user.pk}"
        return f"addr:{client_address(request)}"


class CheckoutThrottle(AtomicScopedThrottle):
    scope = "checkout"


class EntitlementTokenThrottle(AtomicScopedThrottle):
    scope = "entitlement_token"


class LoginThrottle(AtomicScopedThrottle):
    scope = "login"
