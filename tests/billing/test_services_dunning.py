"""Dunning: a declined renewal is retried on schedule, the car keeps its features during the
grace period, the subscription becomes unpaid after the last retry and is canceled later; paying
the open invoice (a retry or the owner with another card) restores the period."""

import datetime as dt

import pytest
import time_machine

from billing.models import Entitlement, Invoice, PaymentAttempt, PaymentMethod, Subscription
from billing.selectors import features_active_at
from billing.services.customers import payment_method_add
from billing.services.dunning import dunning_sweep
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import subscription_start
from tests.billing.api_helpers import (
    CARD_DECLINED_AT_CHARGE,
    add_card,
    catalog_world,
    heated_seats_plan,
    localstripe_card,
    owner_client,
    post,
)
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.stripe
UTC = dt.UTC
START = dt.datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
RENEWAL = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def at(moment, work):
    with time_machine.travel(moment, tick=False):
        return work(moment)


def declining_world(localstripe_url):
    """A paid monthly plan whose owner's default card now declines."""
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    subscription = at(
        START,
        lambda now: (
            subscription_start(
                owner=owner,
                vehicle=vehicle,
                offer_code="heated_seats_monthly",
                payment_method_id=None,
                use_trial=False,
                at=now,
            ).subscription
        ),
    )
    payment_method_add(
        owner=owner,
        stripe_payment_method_id=localstripe_card(localstripe_url, CARD_DECLINED_AT_CHARGE),
        make_default=True,
    )
    return owner, vehicle, subscription


def features(vehicle, moment):
    return [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=moment)]


@pytest.mark.django_db
def test_a_declined_renewal_starts_dunning_with_grace_and_a_retry_schedule(stripe_proxy, localstripe_url):
    _owner, vehicle, subscription = declining_world(localstripe_url)

    report = at(RENEWAL, lambda now: subscriptions_renew_due(at=now))

    assert report.declined == 1
    subscription.refresh_from_db()
    assert subscription.status == "past_due"
    assert subscription.next_retry_at == RENEWAL + DAY
    assert subscription.grace_until == RENEWAL + 7 * DAY
    assert features(vehicle, RENEWAL + 6 * DAY) == ["heated_seats"]  # grace: the car keeps it
    assert features(vehicle, RENEWAL + 7 * DAY) == []
    invoice = subscription.dunning_invoice
    assert invoice.status == "open"


@pytest.mark.django_db
def test_retries_follow_the_schedule_then_unpaid_ends_the_features_then_canceled(
    stripe_proxy, localstripe_url
):
    _owner, vehicle, subscription = declining_world(localstripe_url)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))

    assert at(RENEWAL + DAY - dt.timedelta(seconds=1), lambda now: dunning_sweep(at=now)).retried == 0
    for offset, expected_next in ((1, 3), (3, 5), (5, 7)):
        report = at(RENEWAL + offset * DAY, lambda now: dunning_sweep(at=now))
        assert (report.retried, report.declined) == (1, 1)
        subscription.refresh_from_db()
        assert (subscription.status, subscription.next_retry_at) == (
            "past_due",
            RENEWAL + expected_next * DAY,
        )
    last = RENEWAL + 7 * DAY
    at(last, lambda now: dunning_sweep(at=now))

    subscription.refresh_from_db()
    assert (subscription.status, subscription.unpaid_since) == ("unpaid", last)
    assert features(vehicle, last - dt.timedelta(seconds=1)) == ["heated_seats"]
    assert features(vehicle, last) == []
    invoice = Invoice.objects.get(pk=subscription.dunning_invoice_id)
    assert PaymentAttempt.objects.filter(invoice=invoice).count() == 5  # the renewal and 4 retries
    assert len({a.idempotency_key for a in PaymentAttempt.objects.filter(invoice=invoice)}) == 5

    assert at(last + 13 * DAY, lambda now: dunning_sweep(at=now)).canceled == 0
    assert at(last + 14 * DAY, lambda now: dunning_sweep(at=now)).canceled == 1
    subscription.refresh_from_db()
    invoice.refresh_from_db()
    assert (subscription.status, invoice.status) == ("canceled", "uncollectible")


@pytest.mark.django_db
def test_a_retry_that_succeeds_restores_the_whole_period(stripe_proxy, localstripe_url):
    owner, vehicle, subscription = declining_world(localstripe_url)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))
    PaymentMethod.objects.filter(owner=owner).delete()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)

    report = at(RENEWAL + 3 * DAY, lambda now: dunning_sweep(at=now))  # the day-1 retry, run late

    assert (report.retried, report.recovered) == (1, 1)
    subscription.refresh_from_db()
    assert (subscription.status, subscription.next_retry_at, subscription.dunning_invoice) == (
        "active",
        None,
        None,
    )
    assert features(vehicle, RENEWAL + 20 * DAY) == ["heated_seats"]
    rows = Entitlement.objects.filter(subscription=subscription, starts_at=RENEWAL)
    assert [(r.source, r.ends_at) for r in rows] == [
        ("subscription", dt.datetime(2027, 3, 31, 9, 30, tzinfo=UTC))
    ]


@pytest.mark.django_db(transaction=True)
def test_concurrent_dunning_sweeps_retry_each_subscription_once(stripe_proxy, localstripe_url):
    _owner, _vehicle, subscription = declining_world(localstripe_url)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))
    moment = RENEWAL + DAY

    reports = run_concurrently(lambda _i: at(moment, lambda now: dunning_sweep(at=now)), threads=4)

    assert sum(r.retried for r in reports) == 1
    subscription.refresh_from_db()
    decline_and_one_retry = PaymentAttempt.objects.filter(invoice=subscription.dunning_invoice_id)
    assert decline_and_one_retry.count() == 2


@pytest.mark.django_db
def test_a_trial_ending_with_no_card_on_file_ends_the_subscription(stripe_proxy):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    subscription = at(
        START,
        lambda now: (
            subscription_start(
                owner=owner,
                vehicle=vehicle,
                offer_code="heated_seats_monthly",
                payment_method_id=None,
                use_trial=True,
                at=now,
            ).subscription
        ),
    )
    PaymentMethod.objects.filter(owner=owner).delete()
    trial_end = subscription.trial_end

    assert at(trial_end - 3 * DAY, lambda now: dunning_sweep(at=now)).reminded == 1
    assert at(trial_end - 2 * DAY, lambda now: dunning_sweep(at=now)).reminded == 0  # once
    report = at(trial_end, lambda now: subscriptions_renew_due(at=now))

    subscription.refresh_from_db()
    assert (report.canceled, subscription.status, subscription.ended_at) == (1, "canceled", trial_end)
    assert not Invoice.objects.filter(subscription=subscription).exists()
    assert features(vehicle, trial_end) == []


@pytest.mark.django_db
def test_a_past_due_subscription_does_not_block_subscribing_to_another_plan(stripe_proxy, localstripe_url):
    owner, vehicle, subscription = declining_world(localstripe_url)
    heated_seats_plan(vehicle, amount_minor=1_999)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))
    PaymentMethod.objects.filter(owner=owner).delete()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)

    outcome = at(
        RENEWAL + DAY / 2,
        lambda now: subscription_start(
            owner=owner,
            vehicle=vehicle,
            offer_code="heated_seats_premium_monthly",
            payment_method_id=None,
            use_trial=False,
            at=now,
        ),
    )

    assert outcome.status == "succeeded"
    assert Subscription.objects.get(pk=subscription.pk).status == "past_due"


@pytest.mark.django_db
def test_the_owner_pays_the_open_invoice_with_another_card_and_dunning_ends(stripe_proxy, localstripe_url):
    owner, vehicle, subscription = declining_world(localstripe_url)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))
    for offset in (1, 3, 5, 7):  # every retry declines: unpaid, the features ended
        at(RENEWAL + offset * DAY, lambda now: dunning_sweep(at=now))
    subscription.refresh_from_db()
    assert subscription.status == "unpaid"
    invoice = subscription.dunning_invoice

    with time_machine.travel(RENEWAL + 8 * DAY, tick=False):  # tokens minted at the travelled time
        client = owner_client(owner)
        good = add_card(client)  # becomes the default; the declining card stays on file
        paid = post(client, f"/api/v1/me/invoices/{invoice.pk}/pay/", {"payment_method": good["id"]})
        again = post(client, f"/api/v1/me/invoices/{invoice.pk}/pay/")
        foreign = post(owner_client(catalog_world()[0]), f"/api/v1/me/invoices/{invoice.pk}/pay/")

    assert paid.status_code == 200, paid.json()
    assert paid.json()["status"] == "succeeded"
    subscription.refresh_from_db()
    assert (subscription.status, subscription.dunning_invoice_id, subscription.unpaid_since) == (
        "active",
        None,
        None,
    )
    assert features(vehicle, RENEWAL + 20 * DAY) == ["heated_seats"]  # the period is restored
    assert (again.status_code, again.json()["code"]) == (422, "invalid_state")
    assert foreign.status_code == 404
