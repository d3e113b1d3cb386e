"""Abuse limits are atomic across concurrent requests (R24)."""

import uuid

import pytest
from django.conf import settings

from core.ratelimit import parse_rate, rate_limit_hit
from tests.billing.api_helpers import vehicle_client
from tests.concurrency import run_concurrently
from tests.factories import VehicleFactory


def test_parse_rate():
    assert parse_rate("20/minute") == (20, 60)
    assert parse_rate("5/seconds") == (5, 1)
    assert parse_rate("1000/day") == (1000, 86400)


def test_a_window_allows_the_limit_then_refuses_until_the_next_window(settings):
    settings.RATE_LIMITS = {"checkout": "3/minute"}
    ident, start = uuid.uuid4().hex, 1_800_000_000.0

    results = [rate_limit_hit(scope="checkout", ident=ident, now=start + i)[0] for i in range(5)]
    next_window = rate_limit_hit(scope="checkout", ident=ident, now=start + 60)[0]
    other_caller = rate_limit_hit(scope="checkout", ident=uuid.uuid4().hex, now=start)[0]

    assert results == [True, True, True, False, False]
    assert next_window is True
    assert other_caller is True


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (make test sets it)")
def test_fifty_parallel_token_requests_over_the_limit_let_exactly_the_limit_through(settings):
    # an hourly window: a minute boundary falling inside the burst cannot split it
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "entitlement_token": "10/hour"}
    vehicle, other = VehicleFactory(), VehicleFactory()
    clients = [vehicle_client(vehicle)]
    header = clients[0]._credentials

    def request(_: int) -> tuple[int, str | None]:
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(**header)
        response = client.get("/api/v1/vehicle/entitlements/token/")
        return response.status_code, response.json().get("code")

    statuses = run_concurrently(request, threads=50)

    assert sorted(statuses, key=str).count((200, None)) == 10
    assert statuses.count((429, "throttled")) == 40
    assert vehicle_client(other).get("/api/v1/vehicle/entitlements/token/").status_code == 200
