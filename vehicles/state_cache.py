"""Hot copies of what a car asks on every poll, checked against a version stamp per vehicle.

Each process keeps the vehicle's credential and current features in memory, tagged with the
vehicle's version stamp from the shared cache (Redis in production). Every committed change a car
can observe — its credential issued or revoked, an entitlement granted or ended — writes a new
stamp (on commit), so the next request of any process misses and reads the database again.
A poll then costs one cache round trip instead of database queries, and never serves a state
older than the last commit. Readers take the stamp *before* reading the database, so a change
that commits meanwhile leaves the copy under a stamp nobody asks for any more.

`LOCAL_MAX_AGE` bounds how long a copy lives even without a new stamp: a safety net for writes
that bypass the services (bulk SQL, a restarted cache).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

from django.core.cache import cache
from django.db import transaction

from core.redis import redis_client, redis_key

LOCAL_MAX_AGE = 60.0
_VERSION_KEY = "vehicle-state:{}"


def vehicle_state_version(vehicle_id: Any) -> str:
    """The vehicle's current stamp; a missing one is created (never reused after eviction)."""
    client = redis_client()
    if client is None:  # the zero-setup demo: the default cache
        key = _VERSION_KEY.format(vehicle_id)
        cache.add(key, uuid.uuid4().hex, timeout=None)
        return cache.get(key)
    key = redis_key(_VERSION_KEY.format(vehicle_id))
    version = client.get(key)  # the one round trip of a warm poll
    if version is None:
        client.set(key, uuid.uuid4().hex, nx=True)
        version = client.get(key)
    return cast(str, version)  # the client decodes responses (core.redis); set just above


def vehicle_state_changed(vehicle_id: Any) -> None:
    """Call from any service that changes what a vehicle observes, inside its transaction.

    A new stamp now (this process, and tests inside a transaction, see the change at once) and
    another after commit: a reader that took the first stamp before the commit was visible holds
    a copy nobody will ask for."""
    vehicles_state_changed([vehicle_id])


def vehicles_state_changed(vehicle_ids: Sequence[Any]) -> None:
    """`vehicle_state_changed` for many vehicles (a batch of renewals): one round trip now, one
    after commit."""
    ids = list(dict.fromkeys(vehicle_ids))
    _new_stamps(ids)
    transaction.on_commit(lambda: _new_stamps(ids))


def _new_stamps(vehicle_ids: Sequence[Any]) -> None:
    client = redis_client()
    if client is None:
        cache.set_many({_VERSION_KEY.format(pk): uuid.uuid4().hex for pk in vehicle_ids}, timeout=None)
        return
    pipe = client.pipeline(transaction=False)
    for pk in vehicle_ids:
        pipe.set(redis_key(_VERSION_KEY.format(pk)), uuid.uuid4().hex)
    pipe.execute()


class LocalVersionedCache:
    """A bounded per-process LRU whose entries are valid for one version stamp and a deadline."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[Any, tuple[str, float, Any]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Any, version: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version or entry[1] <= time.monotonic():
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, key: Any, version: str, value: Any, ttl: float = LOCAL_MAX_AGE) -> None:
        with self._lock:
            self._entries[key] = (version, time.monotonic() + min(ttl, LOCAL_MAX_AGE), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
