"""The demo seed: idempotent, realistic, and consistent with the entitlement rules."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
import time_machine
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import (
    Entitlement,
    EntitlementSource,
    Feature,
    Price,
    Refund,
    Subscription,
    SubscriptionStatus,
)
from billing.selectors import entitlements_active_at
from billing.services.catalog import offer_for_vehicle
from billing.services.demo_data import SUBSCRIPTIONS, demo_data_seed
from billing.services.subscriptions import subscription_cancel
from core.periods import Interval, add_interval
from vehicles.models import Owner, Ownership, Vehicle

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)

_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_check_digit(vin: str) -> str:
    """ISO 3779 / FMVSS 115 check digit (position 9)."""
    remainder = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True)) % 11
    return "X" if remainder == 10 else str(remainder)


def row_counts() -> dict[str, int]:
    return {
        model._meta.label: model.objects.count()
        for app in ("vehicles", "billing", "auth")
        for model in apps.get_app_config(app).get_models()
    }


@pytest.fixture
def seeded():
    with time_machine.travel(NOW, tick=False):
        return demo_data_seed(now=NOW)


def test_second_run_creates_nothing(seeded):
    before = row_counts()
    with time_machine.travel(NOW + dt.timedelta(days=3), tick=False):
        again = demo_data_seed()
    assert row_counts() == before
    assert [c.new for c in again.counts] == [0] * len(again.counts)
    assert {c.label: c.total for c in again.counts} == {c.label: c.total for c in seeded.counts}
    assert again.admin_created is False


def test_first_run_reports_what_it_created(seeded):
    counts = {c.label: (c.total, c.new) for c in seeded.counts}
    assert counts["markets"] == (4, 4)
    assert counts["vehicles"] == (6, 6)
    assert counts["owners"] == (3, 3)
    assert counts["entitlements"][0] == Entitlement.objects.count()
    assert seeded.admin_created is True


def test_catalog_spans_categories_markets_and_currencies(seeded):
    assert Feature.objects.count() >= 10
    assert Feature.objects.values("category").distinct().count() >= 6
    assert set(Price.objects.values_list("currency", flat=True)) == {"EUR", "USD", "JPY"}
    # Every price is in its market's currency; yen have no decimals (1,200 JPY is 1200).
    for price in Price.objects.select_related("market"):
        assert price.currency == price.market.currency
    assert (
        Price.objects.get(offer__code="heated_seats_monthly", market__code="JP", version=1).amount_minor
        == 1200
    )
    assert Price.objects.filter(version=2).exists(), "some offers have a second price version"
    restricted = Feature.objects.filter(markets__isnull=False).distinct()
    assert restricted.exists()
    assert Feature.objects.exclude(min_software_version="").exists()


def test_offers_cover_unlocks_plans_trials_bundles_tiers_and_included(seeded):
    from billing.models import Offer

    assert Offer.objects.get(code="heated_seats_unlock").kind == Offer.Kind.ONE_TIME
    monthly = Offer.objects.get(code="heated_seats_monthly")
    assert (monthly.interval, monthly.trial_days) == ("month", 7)
    assert Offer.objects.get(code="adas_highway_assist_yearly").interval == "year"
    winter = Offer.objects.get(code="winter_bundle")
    assert set(winter.features.values_list("code", flat=True)) == {"heated_seats", "heated_steering_wheel"}
    assert Offer.objects.get(code="premium_connectivity_monthly").included_months_with_new_car == 36
    basic, premium = (
        Offer.objects.get(code=c) for c in ("connectivity_basic_monthly", "premium_connectivity_monthly")
    )
    assert basic.tier < premium.tier


def test_owners_include_a_fleet_and_can_log_in(seeded):
    owners = {o.display_name: o for o in Owner.objects.select_related("user")}
    assert set(owners) == {"Anna Schmidt", "Kenji Sato", "Nordfleet Logistics GmbH"}
    fleet = owners["Nordfleet Logistics GmbH"]
    assert (fleet.kind, fleet.is_consumer) == (Owner.Kind.FLEET, False)
    assert owners["Kenji Sato"].currency == "JPY"
    assert owners["Anna Schmidt"].user.check_password("demo-password-1")
    assert owners["Kenji Sato"].user.check_password("demo-password-2")
    assert fleet.user.check_password("demo-password-3")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")


def test_vehicles_are_valid_and_each_has_one_current_owner(seeded):
    vehicles = list(Vehicle.objects.prefetch_related("ownerships"))
    assert len(vehicles) == 6
    assert len({(v.brand, v.model) for v in vehicles}) == 6
    assert {v.market.code for v in vehicles} == {"DE", "FR", "US", "JP"}
    for vehicle in vehicles:
        vehicle.full_clean()
        assert vehicle.vin[8] == vin_check_digit(vehicle.vin)
        assert Ownership.objects.filter(vehicle=vehicle, ends_at__isnull=True).count() == 1
    assert Ownership.objects.filter(ends_at__isnull=False).exists(), "one car was resold: a history to show"


def test_live_subscriptions_are_current_and_entitled_now(seeded):
    subscriptions = list(Subscription.objects.select_related("offer", "vehicle", "price", "owner"))
    assert len(subscriptions) >= 3
    for sub in subscriptions:
        assert sub.status == SubscriptionStatus.ACTIVE
        assert sub.current_period_start <= NOW < sub.current_period_end
        _, current_price = offer_for_vehicle(vehicle=sub.vehicle, offer_code=sub.offer.code, at=NOW)
        assert sub.price == current_price
        assert sub.price.currency == sub.owner.currency
        assert Ownership.objects.get(vehicle=sub.vehicle, ends_at__isnull=True).owner == sub.owner
        active = entitlements_active_at(vehicle_id=sub.vehicle_id, at=NOW).filter(subscription=sub)
        assert set(active.values_list("feature__code", flat=True)) == set(
            sub.offer.features.values_list("code", flat=True)
        )
    assert Subscription.objects.values("price__currency").distinct().count() >= 2


def test_included_connectivity_runs_36_months_from_delivery(seeded):
    included = Entitlement.objects.filter(source=EntitlementSource.INCLUDED).select_related("vehicle")
    assert included.exists()
    for entitlement in included:
        assert entitlement.offer.code == "premium_connectivity_monthly"
        assert entitlement.starts_at == entitlement.vehicle.delivered_at
        assert entitlement.ends_at == add_interval(entitlement.starts_at, interval=Interval.MONTH, count=36)
        assert entitlement.starts_at <= NOW < entitlement.ends_at


def test_command_prints_progress_and_logins_and_is_idempotent():
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("seed_demo", stdout=out)
    first = out.getvalue()
    assert "markets: 4 (4 new)" in first
    assert "vehicles: 6 (6 new)" in first
    assert "anna@example.com / demo-password-1" in first
    assert "WARNING" in first and "admin / admin" in first

    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert "markets: 4 (0 new)" in out.getvalue()
    assert " new)" in out.getvalue() and "(1 new)" not in out.getvalue()


def test_existing_admin_keeps_its_password():
    get_user_model().objects.create_superuser("admin", "ops@example.com", "a-real-password-42")
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert get_user_model().objects.get(username="admin").check_password("a-real-password-42")
    assert "WARNING" not in out.getvalue()


def test_command_refuses_production(settings):
    settings.PRODUCTION = True
    with pytest.raises(CommandError):
        call_command("seed_demo", stdout=StringIO())
    assert not Vehicle.objects.exists()


def test_seed_later_in_time_still_gives_current_periods():
    later = timezone.now().replace(microsecond=0) + dt.timedelta(days=400)
    with time_machine.travel(later, tick=False):
        demo_data_seed()
    for sub in Subscription.objects.all():
        assert sub.current_period_start <= later < sub.current_period_end
        assert entitlements_active_at(vehicle_id=sub.vehicle_id, at=later).filter(subscription=sub).exists()


def test_demo_subscriptions_are_dated_from_when_they_began_not_from_the_seeding(seeded):
    began = {(vin, code): started_at for vin, code, started_at in SUBSCRIPTIONS}
    for sub in Subscription.objects.select_related("vehicle", "offer"):
        assert sub.created_at == began[(sub.vehicle.vin, sub.offer.code)]
        assert sub.created_at <= sub.current_period_start < NOW


def test_canceling_a_demo_subscription_begun_weeks_ago_is_not_a_withdrawal(seeded):
    """In the EU a consumer may withdraw within 14 days of subscribing; the demo's subscriptions
    began weeks ago, so a cancel ends them at period end, keeps the features and refunds nothing."""
    anna = Owner.objects.get(email="anna@example.com")
    subscriptions = list(Subscription.objects.filter(owner__is_consumer=True).select_related("owner"))
    assert any(s.owner == anna for s in subscriptions)

    with time_machine.travel(NOW, tick=False):
        canceled = [subscription_cancel(owner=s.owner, subscription_id=s.pk, at=NOW) for s in subscriptions]

    for sub in canceled:
        sub.refresh_from_db()
        assert (sub.status, sub.cancel_at_period_end, sub.ended_at) == (SubscriptionStatus.ACTIVE, True, None)
        assert entitlements_active_at(vehicle_id=sub.vehicle_id, at=NOW).filter(subscription=sub).exists()
    assert not Refund.objects.exists()
