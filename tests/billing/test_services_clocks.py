"""Test clocks: two years of monthly and yearly renewals across month ends and a leap day, a full
dunning cycle, and the real-time sweeps leaving clocked owners alone."""

import datetime as dt
import itertools

import pytest
from django.core.management import call_command

from billing.models import Invoice, PaymentMethod, Subscription, TestClock
from billing.selectors import features_active_at
from billing.services import clocks
from billing.services.clocks import clock_now, parse_duration
from billing.services.customers import payment_method_add
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import subscription_start
from core.errors import BillingError
from core.periods import Interval, add_interval
from tests.billing.api_helpers import (
    CARD_DECLINED_AT_CHARGE,
    catalog_world,
    heated_seats_plan,
    localstripe_card,
)

pytestmark = pytest.mark.stripe
UTC = dt.UTC
START = dt.datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
SECOND = dt.timedelta(seconds=1)


def clocked_owner(at=START):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    clock = clocks.test_clock_for_owner(owner=owner)
    TestClock.objects.filter(pk=clock.pk).update(frozen_time=at)
    clock.refresh_from_db()
    return owner, vehicle, clock


def start(owner, vehicle, offer, at):
    return subscription_start(
        owner=owner, vehicle=vehicle, offer_code=offer, payment_method_id=None, use_trial=False, at=at
    ).subscription


def period_invoices(subscription):
    return list(
        Invoice.objects.filter(subscription=subscription, kind="subscription_period")
        .order_by("period_start")
        .values_list("period_start", "period_end", "status")
    )


@pytest.mark.django_db
def test_two_years_of_monthly_and_yearly_renewals_across_month_ends_and_a_leap_day(stripe_proxy):
    owner, vehicle, clock = clocked_owner()
    monthly = start(owner, vehicle, "heated_seats_monthly", START)
    heated_seats_plan(vehicle, code="seats_yearly", interval="year", amount_minor=9_900)
    leap_day = dt.datetime(2028, 2, 29, 12, tzinfo=UTC)
    report = clocks.test_clock_advance(clock=clock, to=leap_day)
    Subscription.objects.filter(pk=monthly.pk).update(
        cancel_at_period_end=True
    )  # make room for the yearly plan
    clocks.test_clock_advance(clock=clock, to=dt.datetime(2028, 3, 31, 9, 30, tzinfo=UTC))
    yearly = start(owner, vehicle, "seats_yearly", dt.datetime(2028, 3, 31, 9, 30, tzinfo=UTC))

    end = dt.datetime(2030, 4, 1, tzinfo=UTC)
    clocks.test_clock_advance(clock=clock, to=end)

    months = period_invoices(monthly)
    expected = [(add_interval(START, interval=Interval.MONTH, count=i),) for i in range(14)]
    assert [
        (m[0],) for m in months
    ] == expected  # Jan 31, Feb 28, Mar 31, ... Feb 29 2028, Mar 31: none skipped
    assert all(status == "paid" for _, _, status in months)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(months))  # contiguous, none doubled
    assert months[13][0] == leap_day.replace(hour=9, minute=30)  # the anchor day 31 lands on Feb 29 in 2028
    years = period_invoices(yearly)
    assert [p[0] for p in years] == [
        dt.datetime(2028, 3, 31, 9, 30, tzinfo=UTC),
        dt.datetime(2029, 3, 31, 9, 30, tzinfo=UTC),
        dt.datetime(2030, 3, 31, 9, 30, tzinfo=UTC),
    ]
    assert report.renewed == 13
    assert clock_now(owner_id=owner.pk) == end
    monthly.refresh_from_db()
    assert (monthly.status, monthly.ended_at) == ("canceled", dt.datetime(2028, 3, 31, 9, 30, tzinfo=UTC))
    switch = dt.datetime(2028, 3, 31, 9, 30, tzinfo=UTC)
    assert [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=switch - SECOND)] == ["heated_seats"]
    assert [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=switch)] == ["heated_seats"]


@pytest.mark.django_db
def test_a_full_dunning_cycle_on_a_test_clock_ends_the_features_at_the_right_second(
    stripe_proxy, localstripe_url
):
    owner, vehicle, clock = clocked_owner()
    subscription = start(owner, vehicle, "heated_seats_monthly", START)
    payment_method_add(
        owner=owner,
        stripe_payment_method_id=localstripe_card(localstripe_url, CARD_DECLINED_AT_CHARGE),
        make_default=True,
    )
    renewal = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)

    report = clocks.test_clock_advance(clock=clock, to=renewal + dt.timedelta(days=30))

    assert (report.declined, report.retried, report.unpaid_canceled) == (5, 4, 1)
    subscription.refresh_from_db()
    assert (subscription.status, subscription.ended_at) == ("canceled", renewal + dt.timedelta(days=21))
    unpaid_at = renewal + dt.timedelta(days=7)
    codes = [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=unpaid_at - SECOND)]
    assert codes == ["heated_seats"]  # grace: kept until the last retry failed
    assert features_active_at(vehicle_id=vehicle.pk, at=unpaid_at) == []


@pytest.mark.django_db
def test_the_real_time_sweep_leaves_owners_on_test_clocks_alone(stripe_proxy):
    owner, vehicle, clock = clocked_owner()
    subscription = start(owner, vehicle, "heated_seats_monthly", START)

    report = subscriptions_renew_due(at=START + dt.timedelta(days=90))

    assert report.renewed == 0
    assert Invoice.objects.filter(subscription=subscription).count() == 1
    assert clock.members.count() == 1


@pytest.mark.django_db
def test_a_clock_never_goes_back_and_durations_parse(stripe_proxy):
    owner, _vehicle, clock = clocked_owner()
    with pytest.raises(BillingError):
        clocks.test_clock_advance(clock=clock, to=START - SECOND)
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("90min") == dt.timedelta(minutes=90)
    assert parse_duration("2mo") == 2
    with pytest.raises(BillingError):
        parse_duration("soon")
    assert clock_now(owner_id=owner.pk) == START


@pytest.mark.django_db
def test_manage_py_test_clock_advance_prints_each_boundary(stripe_proxy, capsys):
    owner, vehicle, _clock = clocked_owner()
    start(owner, vehicle, "heated_seats_monthly", START)
    PaymentMethod.objects.filter(owner=owner).update(is_default=True)

    call_command("test_clock", "advance", "--owner", owner.email, "--by", "2mo")

    out = capsys.readouterr().out
    assert "2027-02-28 09:30:00 renewed 1" in out
    assert "2027-03-31 09:30:00 renewed 1" in out
    assert "heated_seats_monthly" in out
