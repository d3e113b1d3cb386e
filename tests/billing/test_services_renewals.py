"""The renewal sweep: one invoice and one charge per period, month-end anchors, cancel at period
end, downgrades, trials, declines, and concurrent sweeps (PostgreSQL)."""

import datetime as dt

import pytest
import time_machine

from billing.models import Entitlement, Invoice, PaymentAttempt, Subscription
from billing.selectors import features_active_at
from billing.services.customers import payment_method_add
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import subscription_start
from tests.billing.api_helpers import CARD_DECLINED_AT_CHARGE, catalog_world, localstripe_card
from tests.concurrency import run_concurrently
from tests.factories import OfferFactory, PriceFactory

pytestmark = pytest.mark.stripe
UTC = dt.UTC
JAN_31 = dt.datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
PI_CREATE = "/v1/payment_intents"


def paid_monthly(at=JAN_31, card="pm_card_visa", trial=False):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id=card, make_default=True)
    with time_machine.travel(at, tick=False):
        outcome = subscription_start(
            owner=owner,
            vehicle=vehicle,
            offer_code="heated_seats_monthly",
            payment_method_id=None,
            use_trial=trial,
            at=at,
        )
    return outcome.subscription


def periods(subscription):
    return list(
        Invoice.objects.filter(subscription=subscription, kind="subscription_period")
        .order_by("period_start")
        .values_list("period_start", "period_end", "status")
    )


def sweep(at):
    with time_machine.travel(at, tick=False):
        return subscriptions_renew_due(at=at)


@pytest.mark.django_db
def test_month_end_anchor_renews_once_per_period(stripe_proxy):
    subscription = paid_monthly()
    feb_28, mar_31, apr_30 = (
        dt.datetime(2027, m, d, 9, 30, tzinfo=UTC) for m, d in ((2, 28), (3, 31), (4, 30))
    )

    assert sweep(feb_28 - dt.timedelta(seconds=1)).renewed == 0
    assert sweep(feb_28).renewed == 1
    assert sweep(feb_28 + dt.timedelta(hours=1)).renewed == 0  # nothing due any more
    assert sweep(mar_31).renewed == 1

    assert periods(subscription) == [
        (JAN_31, feb_28, "paid"),
        (feb_28, mar_31, "paid"),
        (mar_31, apr_30, "paid"),
    ]
    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == 3
    feature = features_active_at(vehicle_id=subscription.vehicle_id, at=JAN_31)[0]
    assert feature.valid_until == apr_30  # contiguous periods, no gap at renewals


@pytest.mark.django_db
def test_cancel_at_period_end_ends_without_charging(stripe_proxy):
    subscription = paid_monthly()
    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=True)
    feb_28 = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)

    report = sweep(feb_28 + dt.timedelta(minutes=5))

    subscription.refresh_from_db()
    assert (report.canceled, subscription.status, subscription.ended_at) == (1, "canceled", feb_28)
    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == 1  # the first period only
    assert features_active_at(vehicle_id=subscription.vehicle_id, at=feb_28) == []


@pytest.mark.django_db
def test_pending_downgrade_applies_at_renewal(stripe_proxy):
    subscription = paid_monthly()
    basic = OfferFactory(
        code="heated_seats_basic_monthly", subscription=True, features=list(subscription.offer.features.all())
    )
    basic_price = PriceFactory(offer=basic, market=subscription.vehicle.market, amount_minor=499)
    Subscription.objects.filter(pk=subscription.pk).update(pending_offer=basic, pending_price=basic_price)

    sweep(dt.datetime(2027, 2, 28, 10, tzinfo=UTC))

    subscription.refresh_from_db()
    assert (subscription.offer_id, subscription.price_id, subscription.pending_price_id) == (
        basic.pk,
        basic_price.pk,
        None,
    )
    assert (
        Invoice.objects.filter(subscription=subscription).order_by("-period_start").first().total_minor == 499
    )


@pytest.mark.django_db
def test_trial_converts_to_paid_at_trial_end(stripe_proxy):
    subscription = paid_monthly(trial=True)
    assert subscription.status == "trialing"
    trial_end = subscription.trial_end

    sweep(trial_end)

    subscription.refresh_from_db()
    assert subscription.status == "active"
    assert (subscription.current_period_start, subscription.current_period_end) == (
        trial_end,
        trial_end.replace(month=3),
    )
    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == 1


@pytest.mark.django_db
def test_declined_renewal_is_past_due_and_grants_only_the_grace_period(stripe_proxy, localstripe_url):
    subscription = paid_monthly()
    declining = localstripe_card(localstripe_url, CARD_DECLINED_AT_CHARGE)
    payment_method_add(owner=subscription.owner, stripe_payment_method_id=declining, make_default=True)
    feb_28 = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)

    report = sweep(feb_28)

    subscription.refresh_from_db()
    assert (report.declined, subscription.status) == (1, "past_due")
    assert periods(subscription)[-1] == (feb_28, dt.datetime(2027, 3, 31, 9, 30, tzinfo=UTC), "open")
    grace = features_active_at(vehicle_id=subscription.vehicle_id, at=feb_28)
    assert [(f.code, f.valid_until, f.sources) for f in grace] == [
        ("heated_seats", feb_28 + dt.timedelta(days=7), ("grace",))
    ]
    assert not Entitlement.objects.filter(
        subscription=subscription, starts_at=feb_28, source="subscription"
    ).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_charge_each_period_once(stripe_proxy):
    subscriptions = [paid_monthly() for _ in range(6)]
    due = dt.datetime(2027, 2, 28, 12, tzinfo=UTC)

    run_concurrently(lambda _: subscriptions_renew_due(at=due), threads=4, timeout=120)

    assert Invoice.objects.filter(kind="subscription_period").count() == 12
    assert PaymentAttempt.objects.filter(status="succeeded").count() == 12
    creates = [c for c in stripe_proxy.calls(method="POST", path=PI_CREATE) if c.reached_upstream]
    assert len(creates) == len({c.idempotency_key for c in creates}) == 12
    assert all(
        s.status == "active" for s in Subscription.objects.filter(pk__in=[s.pk for s in subscriptions])
    )


@pytest.mark.django_db
def test_sweep_that_died_before_charging_is_finished_by_the_next_one(stripe_proxy):
    from billing.services.renewals import subscription_renew

    subscription = paid_monthly()
    feb_28 = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)
    with time_machine.travel(feb_28, tick=False):
        subscription_renew(subscription_id=subscription.pk, at=feb_28)  # ...then the worker dies

    assert sweep(feb_28 + dt.timedelta(minutes=1)).renewed == 0  # too fresh to call stranded
    assert sweep(feb_28 + dt.timedelta(minutes=10)).renewed == 1
    assert sweep(feb_28 + dt.timedelta(minutes=20)).renewed == 0
    assert periods(subscription)[-1][2] == "paid"
    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == 2
