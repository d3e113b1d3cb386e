"""A request budget shared by every process: outbound calls to a provider (Stripe) are paced so
that its rate limit is never hit.

The budget is a token bucket kept in Redis and taken by one Lua script, so every web process,
Celery worker and beat sweep draws from the same bucket. It is implemented as GCRA (the "generic
cell rate algorithm": a token bucket stored as one timestamp, the theoretical arrival time of the
next request): each caller *reserves* the next free slot atomically and sleeps until it, so
concurrent callers are spaced `interval` apart instead of all retrying at once. The script reads
Redis' own clock (`TIME`), so the hosts' clocks do not need to agree.

`interval` is `(1 + jitter_allowance) / per_second`: a request reserved for a slot may leave a
few milliseconds late (scheduling, GIL, network) while the next one leaves on time; the allowance
keeps any one-second window at the provider at or under `per_second` despite that.

A slot further away than `max_wait` is not reserved: `RateBudgetExhausted` is raised and the
caller treats it as the provider's 429 (retry later, same idempotency key). Without Redis (the
SQLite demo) the same algorithm runs per process, behind a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.redis import redis_client, redis_key

# KEYS[1]: the bucket. ARGV: interval (µs), burst (requests that may go at once), max wait (µs),
# count (consecutive slots wanted). Reserves as many of them as leave within max wait (at least
# one, or none). Returns {µs from now to the first slot's theoretical arrival time, slots
# reserved}; refused: {-(µs until a slot within max wait), 0}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local send_at = tat - (burst - 1) * interval
if send_at < now then send_at = now end
local wait = send_at - now
if wait > max_wait then
  return {-(wait - max_wait), 0}
end
local fit = math.floor((max_wait - wait) / interval) + 1
if fit < count then count = fit end
local new_tat = tat + count * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {tat - now, count}
"""


class RateBudgetExhausted(Exception):
    """No slot within `max_wait`: the caller must treat it as a 429 and retry later."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"the {name} request budget is exhausted; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Budget:
    name: str
    per_second: float
    burst: int = 1
    max_wait: float = 30.0
    jitter_allowance: float = 0.05

    @property
    def interval_us(self) -> int:
        return int(1_000_000 * (1 + self.jitter_allowance) / self.per_second)


class _LocalBucket:
    """The same GCRA inside one process (no Redis): shared by its threads, not across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, budget: Budget, now: float, count: int = 1) -> tuple[float, int]:
        """(seconds from `now` to the first slot's arrival time, slots reserved), as the script."""
        interval = budget.interval_us / 1_000_000
        with self._lock:
            tat = max(self._tat.get(budget.name, 0.0), now)
            wait = max(0.0, tat - (budget.burst - 1) * interval - now)
            if wait > budget.max_wait:
                return -(wait - budget.max_wait), 0
            count = min(count, int((budget.max_wait - wait) // interval) + 1)
            self._tat[budget.name] = tat + count * interval
            return tat - now, count


_local = _LocalBucket()
_scripts: dict[int, Callable] = {}


def _reserve_in_redis(budget: Budget, count: int) -> tuple[float, int] | None:
    client = redis_client()
    if client is None:
        return None
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_GCRA)
    arrival, reserved = script(
        keys=[redis_key(f"ratebudget:{budget.name}")],
        args=[budget.interval_us, budget.burst, int(budget.max_wait * 1_000_000), count],
    )
    return int(arrival) / 1_000_000, int(reserved)


def rate_budget_reserve(budget: Budget, count: int) -> list[float]:
    """Reserve up to `count` consecutive slots of `budget` in one round trip (a batch of calls):
    the `time.monotonic()` instants at which each may leave, as many as fit within
    `budget.max_wait`. Raises `RateBudgetExhausted` when not even one does. Slots not used are
    lost (the budget stays on the safe side). No budget configured: `count` slots, now."""
    now = time.monotonic()
    if budget.per_second <= 0:
        return [now] * count
    reserved = _reserve_in_redis(budget, count)
    arrival, got = reserved if reserved is not None else _local.reserve(budget, now, count)
    if got == 0:
        raise RateBudgetExhausted(budget.name, -arrival)
    interval = budget.interval_us / 1_000_000
    ahead = (budget.burst - 1) * interval  # slot i arrives at arrival + i * interval, minus the burst
    return [now + max(0.0, arrival + i * interval - ahead) for i in range(got)]


def rate_budget_take(budget: Budget, *, sleep: Callable[[float], None] = time.sleep) -> float:
    """Take one request from `budget`, sleeping until its slot; returns the seconds slept.
    Raises `RateBudgetExhausted` when no slot is free within `budget.max_wait`."""
    if budget.per_second <= 0:
        return 0.0  # no budget configured: unpaced
    (slot,) = rate_budget_reserve(budget, 1)
    wait = max(0.0, slot - time.monotonic())
    if wait > 0:
        sleep(wait)
    return wait


def rate_budget_reset(name: str) -> None:
    """Forget a bucket (tests and benchmarks start from a full one)."""
    client = redis_client()
    if client is not None:
        client.delete(redis_key(f"ratebudget:{name}"))
    with _local._lock:
        _local._tat.pop(name, None)
