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


# --- which address an anonymous caller is counted under (hole 11 of issue 7) ---------------------
def _meta(remote: str = "203.0.113.9", xff: str | None = None) -> dict:
    return {"REMOTE_ADDR": remote, **({"HTTP_X_FORWARDED_FOR": xff} if xff is not None else {})}


def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    from core.ratelimit import client_address

    settings.NUM_PROXIES = 0

    assert client_address(_meta(xff="1.2.3.4")) == "203.0.113.9"
    assert client_address(_meta(xff="1.2.3.4, 5.6.7.8")) == "203.0.113.9"
    assert client_address(_meta()) == "203.0.113.9"


def test_with_n_trusted_proxies_the_nth_address_from_the_right_counts(settings):
    from core.ratelimit import client_address

    settings.NUM_PROXIES = 1
    assert client_address(_meta(remote="10.0.0.2", xff="198.51.100.7")) == "198.51.100.7"
    # what the client wrote itself stays on the left and is never used
    assert client_address(_meta(remote="10.0.0.2", xff="6.6.6.6, 198.51.100.7")) == "198.51.100.7"
    settings.NUM_PROXIES = 2
    assert client_address(_meta(remote="10.0.0.3", xff="6.6.6.6, 198.51.100.7, 10.0.0.2")) == "198.51.100.7"
    # fewer hops than proxies, or garbage: the request is counted under the peer that sent it
    assert client_address(_meta(remote="10.0.0.3", xff="198.51.100.7")) == "10.0.0.3"
    assert client_address(_meta(remote="10.0.0.3", xff="x, not-an-ip")) == "10.0.0.3"


@pytest.mark.django_db
def test_a_client_cannot_escape_the_login_limit_by_rewriting_x_forwarded_for(settings):
    from rest_framework.test import APIClient

    settings.NUM_PROXIES = 0
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login": "3/hour"}
    suffix = uuid.uuid4().hex  # counters outlive test databases: a fresh address per run
    remote = f"2001:db8::{suffix[:4]}:{suffix[4:8]}"

    statuses = []
    for attempt in range(6):
        response = APIClient(REMOTE_ADDR=remote).post(
            "/api/v1/auth/token/",
            {"username": f"nobody-{suffix}", "password": "wrong"},
            format="json",
            HTTP_X_FORWARDED_FOR=f"10.9.{attempt}.{attempt}",
        )
        statuses.append((response.status_code, response.json()["code"]))

    assert statuses[:3] == [(401, "not_authenticated")] * 3
    assert statuses[3:] == [(429, "throttled")] * 3
