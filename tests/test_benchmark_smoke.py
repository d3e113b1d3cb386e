"""The entitlement benchmark's own parts: statistics, the table, and the fleet seeding (small)."""

from __future__ import annotations

import math

import pytest
from django.utils import timezone

from benchmarks.entitlements import Result, format_table, parse_args, percentile, result_from_latencies
from benchmarks.seed_fleet import VIN_PREFIX, bench_vin, client_credentials_issue, fleet_seed
from billing.models import Entitlement, EntitlementSource, Purchase, Subscription
from billing.selectors import features_active_at
from vehicles.models import Ownership, Vehicle
from vehicles.services.credentials import vehicle_credential_verify


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0], 50) == 1
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_result_from_latencies_sorts_and_converts_to_milliseconds():
    result = result_from_latencies(
        name="x", path="/x", latencies_s=[0.003, 0.001, 0.002, 0.010], errors=1, seconds=2.0
    )
    assert result.requests == 4
    assert result.rps == 2.0
    assert result.p50_ms == pytest.approx(2.0)
    assert result.p99_ms == pytest.approx(10.0)


def test_table_compares_with_the_first_row_and_judges_the_goal():
    results = [
        Result("ping (baseline)", "/ping", requests=10_000, errors=0, seconds=10, p50_ms=1.0, p99_ms=3.0),
        Result("fast", "/a", requests=6_000, errors=0, seconds=10, p50_ms=2.0, p99_ms=5.5),
        Result("slow", "/b", requests=2_000, errors=3, seconds=10, p50_ms=7.25, p99_ms=20.0),
    ]
    lines = format_table(results).splitlines()
    assert lines[0].split() == [
        "endpoint",
        "requests",
        "errors",
        "req/s",
        "p50",
        "ms",
        "p99",
        "ms",
        "vs",
        "ping",
        "goal",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[-2:] == ["1.00", "baseline"]
    assert lines[3].split()[1:] == ["6,000", "0", "600", "2.00", "5.50", "0.60", "met"]
    assert lines[4].split()[1:] == ["2,000", "3", "200", "7.25", "20.00", "0.20", "MISSED"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule are aligned


def test_cli_bounds():
    assert parse_args([]).vehicles == 100_000
    with pytest.raises(SystemExit):
        parse_args(["--connections", "1000"])
    with pytest.raises(SystemExit):
        parse_args(["--vehicles", "10", "--clients", "20"])


@pytest.mark.django_db
def test_seeding_a_small_fleet_is_complete_consistent_and_idempotent():
    messages: list[str] = []
    report = fleet_seed(vehicles=50, batch_size=20, progress=messages.append)
    assert report.vehicles_created == 50
    assert report.total_vehicles == 50
    assert any("50/50" in message for message in messages)
    vehicles = Vehicle.objects.filter(vin__startswith=VIN_PREFIX)
    assert vehicles.count() == 50
    assert Ownership.objects.filter(vehicle__in=vehicles, ends_at__isnull=True).count() == 50

    now = timezone.now()
    sources = set()
    for vehicle in vehicles:
        features = features_active_at(vehicle_id=vehicle.pk, at=now)
        assert 2 <= len(features) <= 5
        sources.update(source for feature in features for source in feature.sources)
    assert sources == {EntitlementSource.PURCHASE, EntitlementSource.SUBSCRIPTION, EntitlementSource.GRANT}
    assert (
        Purchase.objects.filter(vehicle__in=vehicles).count()
        == Entitlement.objects.filter(source=EntitlementSource.PURCHASE).count()
    )
    assert Subscription.objects.filter(vehicle__in=vehicles).count() > 0

    again = fleet_seed(vehicles=50, batch_size=20)
    assert again.vehicles_created == 0
    assert Vehicle.objects.count() == 50

    more = fleet_seed(vehicles=60, batch_size=20)  # resumes after the existing ones
    assert more.vehicles_created == 10
    assert Vehicle.objects.filter(vin=bench_vin(59)).exists()


@pytest.mark.django_db
def test_client_credentials_authenticate_their_vehicles():
    fleet_seed(vehicles=30, batch_size=30)
    headers = client_credentials_issue(clients=5, vehicles=30)
    assert len(headers) == 5
    vins = set()
    for header in headers:
        scheme, value = header.split(" ")
        key_id, secret = value.split(".", 1)
        assert scheme == "Vehicle"
        vins.add(vehicle_credential_verify(key_id=key_id, secret=secret).vehicle.vin)
    assert vins == {bench_vin(i) for i in (0, 6, 12, 18, 24)}


# -- benchmarks/renewals.py ------------------------------------------------------------------------
def test_renewals_summary_is_the_machine_readable_last_line():
    from benchmarks.renewals import RunResult, duplicate_charges, format_table, summary_line

    results = [
        RunResult("local", 1, 1000, 1000, 2.0, 40_000, 0, 0, 0),
        RunResult("local", 2, 1000, 1000, 1.25, 40_500, 0, 0, 0),
        RunResult("e2e", 1, 100, 100, 4.2, 4_000, 0, 0, 0),
    ]
    assert duplicate_charges(["a", "b", "a", "a", "c"]) == 2
    assert summary_line(results) == (
        "local_renewals_per_s=800 e2e_renewals_per_s=23.8 queries_per_renewal=40.5 duplicate_charges=0"
    )
    lines = format_table(results).splitlines()
    assert lines[0].split()[:3] == ["mode", "workers", "subscriptions"]
    assert lines[3].split()[:6] == ["local", "2", "1,000", "1,000", "1.2", "800"]


def test_renewals_cli_bounds():
    from benchmarks.renewals import parse_args

    args = parse_args([])
    assert (args.subscriptions, args.workers, args.e2e_subscriptions, args.rate) == (
        10_000,
        [1, 2, 4],
        250,
        25.0,
    )
    assert parse_args(["--subscriptions", "40", "--workers", "2"]).e2e_subscriptions == 40
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "two"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.stripe
def test_renewals_benchmark_sweeps_a_tiny_fleet_once_in_two_processes(stripe_proxy, settings):
    """The benchmark's own run with N=12 and two sweeping processes, proxy answering."""
    import os

    from benchmarks.renewals import run_once

    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "STRIPE_API_BASE": stripe_proxy.url,
        "STRIPE_SECRET_KEY": "",
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
    }
    result = run_once(mode="local", workers=2, subscriptions=12, proxy=stripe_proxy, env=env, rate=25)

    assert (result.renewed, result.duplicate_charges, result.rate_limited, result.errors) == (12, 0, 0, 0)
    assert 0 < result.queries_per_renewal < 60
