"""One shared Redis client per process (when REDIS_URL is set), for the few hot paths that need
a single cheap round trip: rate-limit counters and vehicle state stamps."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def redis_client() -> redis.Redis | None:
    """The process's client, or None when no Redis is configured (the zero-setup demo)."""
    return _client_for(settings.REDIS_URL) if settings.REDIS_URL else None


def redis_key(name: str) -> str:
    """`name` under this deployment's prefix (the cache's KEY_PREFIX), so that test sessions and
    deployments sharing a server stay apart."""
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    return f"{prefix}:{name}" if prefix else name
