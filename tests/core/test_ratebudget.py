"""The Stripe rate budget shared by every process (R7): paced calls never meet Stripe's 429.

The proxy answers 429 above a rate in any sliding second (`set_rate_limit`) and answers the
PaymentIntents itself, so what is measured is our pacing, not localstripe."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from billing.gateways import stripe as gateway
from core.money import Money
from core.ratebudget import (
    Budget,
    RateBudgetExhausted,
    rate_budget_reserve,
    rate_budget_reset,
    rate_budget_take,
)
from tests.concurrency import run_concurrently

PI_CREATE = "/v1/payment_intents"


@pytest.fixture(autouse=True)
def _fresh_buckets():
    for name in ("stripe", "test"):
        rate_budget_reset(name)
    yield
    for name in ("stripe", "test"):
        rate_budget_reset(name)


def charge() -> gateway.ChargeResult:
    attempt = str(uuid.uuid4())
    return gateway.payment_intent_create(
        amount=Money(999, "EUR"),
        customer_id="cus_budget",
        payment_method_id="pm_budget",
        idempotency_key=f"charge-attempt-{attempt}",
        metadata={"payment_attempt_id": attempt},
    )


def burst(calls_per_thread: int, threads: int) -> list[str]:
    return [
        status
        for statuses in run_concurrently(
            lambda _: [charge().status for _ in range(calls_per_thread)], threads=threads, timeout=60
        )
        for status in statuses
    ]


@pytest.mark.stripe
def test_with_the_budget_on_the_provider_never_answers_429(stripe_proxy, settings):
    stripe_proxy.set_answer_payment_intents(True)
    stripe_proxy.set_rate_limit(10)
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 10

    started = time.monotonic()
    statuses = burst(calls_per_thread=8, threads=4)  # 32 calls from 4 threads at once

    assert statuses == ["succeeded"] * 32
    assert stripe_proxy.calls(outcome="rate_limited") == []
    assert time.monotonic() - started >= 31 / 10  # paced, not bursted


@pytest.mark.stripe
def test_without_the_budget_the_same_burst_meets_429s(stripe_proxy, settings):
    """The control: the proxy's limit does bite, so the test above is meaningful."""
    stripe_proxy.set_answer_payment_intents(True)
    stripe_proxy.set_rate_limit(10)
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 0

    with pytest.raises(gateway.RateLimited):
        burst(calls_per_thread=8, threads=4)
    assert stripe_proxy.calls(outcome="rate_limited")


@pytest.mark.stripe
def test_no_slot_within_the_wait_is_a_rate_limit_and_nothing_is_sent(stripe_proxy, settings):
    stripe_proxy.set_answer_payment_intents(True)
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 0.5
    settings.STRIPE_RATE_BUDGET_MAX_WAIT_SECONDS = 0.1

    assert charge().status == "succeeded"
    with pytest.raises(gateway.RateLimited) as refused:
        charge()

    assert refused.value.retryable is True  # retried later with the same key: never a decline
    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == 1


def test_the_bucket_in_redis_spaces_concurrent_callers():
    budget = Budget(name="test", per_second=50, jitter_allowance=0)
    sent: list[float] = []
    lock = threading.Lock()

    def take(_: int) -> None:
        for _ in range(10):
            rate_budget_take(budget)
            with lock:
                sent.append(time.monotonic())

    run_concurrently(take, threads=3, timeout=30)

    sent.sort()
    assert sent[-1] - sent[0] >= 29 / 50 * 0.95  # 30 requests at 50/s: about 0.58 s, not at once
    window = [t for t in sent if t - sent[0] < 0.2]
    assert len(window) <= 11


def test_without_redis_each_process_keeps_its_own_budget(settings):
    settings.REDIS_URL = ""
    budget = Budget(name="test", per_second=20, jitter_allowance=0)

    started = time.monotonic()
    for _ in range(6):
        rate_budget_take(budget)

    assert time.monotonic() - started >= 5 / 20 * 0.95


def test_a_wait_longer_than_allowed_is_refused_without_taking_a_slot(settings):
    budget = Budget(name="test", per_second=1, max_wait=0.2, jitter_allowance=0)
    slept: list[float] = []

    rate_budget_take(budget, sleep=slept.append)
    with pytest.raises(RateBudgetExhausted) as refused:
        rate_budget_take(budget, sleep=slept.append)

    assert slept == []  # the first went at once; the second was refused, not queued
    assert 0.5 < refused.value.retry_after <= 1.0


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "per-process"])
def test_a_batch_reserves_consecutive_slots_in_one_call_as_many_as_fit_the_wait(settings, redis):
    if not redis:
        settings.REDIS_URL = ""
    budget = Budget(name="test", per_second=10, max_wait=0.55, jitter_allowance=0)

    started = time.monotonic()
    slots = rate_budget_reserve(budget, 20)

    assert len(slots) == 6  # 0, 0.1, ... 0.5 s: the seventh would wait longer than 0.55 s
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert all(abs(gap - 0.1) < 0.01 for gap in gaps)
    assert slots[0] - started < 0.05
    # the next caller queues behind the whole batch
    with pytest.raises(RateBudgetExhausted):
        rate_budget_reserve(budget, 1)


@pytest.mark.stripe
def test_a_batch_of_charges_with_reserved_slots_never_meets_429(stripe_proxy, settings):
    stripe_proxy.set_answer_payment_intents(True)
    stripe_proxy.set_rate_limit(10)
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 10

    def batch(_: int) -> list[str]:
        with gateway.budget_reserved(8):  # as a renewal batch does
            return [charge().status for _ in range(10)]  # 8 reserved slots, then one by one

    started = time.monotonic()
    batches = run_concurrently(batch, threads=3, timeout=60)
    statuses = [status for statuses in batches for status in statuses]

    assert statuses == ["succeeded"] * 30
    assert stripe_proxy.calls(outcome="rate_limited") == []
    assert time.monotonic() - started >= 29 / 10 * 0.95
