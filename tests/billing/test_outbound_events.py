"""Billing records its events for the carmaker's systems where the change happens, in the same
transaction, in commit order per vehicle: subscriptions, invoices, payments, dunning, trials,
entitlements and resale. Payloads carry ids, the VIN, feature codes and amounts, no secrets."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import transaction

from billing.models import Feature, PaymentAttempt
from billing.services import outbound_events
from billing.services.customers import payment_method_add
from billing.services.dunning import dunning_sweep, trial_reminders_due
from billing.services.entitlements import entitlement_grant_admin
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import (
    subscription_cancel,
    subscription_end_now,
    subscription_resume,
    subscription_start,
)
from billing.services.transfers import transfer_claim, transfer_start
from events.models import OutboxEvent
from tests.billing.api_helpers import add_card, buy, catalog_world, owner_client
from tests.billing.test_disputes import dispute, send
from tests.billing.test_services_dunning import RENEWAL, START, at, declining_world
from tests.billing.test_webhooks_stripe import SECRET
from tests.factories import OwnerFactory

UTC = dt.UTC


def events_of(vehicle) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(ordering_key=str(vehicle.pk)).order_by("sequence"))


def types_of(vehicle) -> list[str]:
    return [e.type for e in events_of(vehicle)]


def paid_subscription(now):
    """A paid monthly plan started at `now` (the clock is moved there)."""
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    outcome = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_monthly",
        payment_method_id=None,
        use_trial=False,
        at=now,
    )
    return owner, vehicle, outcome.subscription


@pytest.mark.django_db
@pytest.mark.stripe
def test_a_paid_subscription_records_created_granted_and_paid_with_vin_features_and_amounts(stripe_proxy):
    now = dt.datetime.now(tz=UTC)
    owner, vehicle, subscription = paid_subscription(now)

    assert types_of(vehicle) == ["subscription.created", "entitlement.granted", "invoice.paid"]
    created, granted, paid = events_of(vehicle)
    assert created.payload["vehicle"] == {"id": str(vehicle.pk), "vin": vehicle.vin}
    assert created.payload["subscription"]["status"] == "incomplete"
    assert granted.payload["features"] == ["heated_seats"]
    assert granted.payload["entitlements"][0]["subscription_id"] == str(subscription.pk)
    assert paid.payload["invoice"]["total"] == {"amount_minor": 999, "currency": "EUR"}
    assert paid.payload["subscription"]["status"] == "active"
    assert paid.payload["invoice"]["paid_at"].endswith("Z")
    dumped = json.dumps([e.payload for e in events_of(vehicle)])
    for secret in ("pm_", "pi_", "secret", owner.email, owner.display_name):
        assert secret not in dumped


@pytest.mark.django_db
@pytest.mark.stripe
def test_cancel_resume_and_end_now_record_updated_revoked_and_canceled(stripe_proxy):
    owner, vehicle, subscription = paid_subscription(dt.datetime.now(tz=UTC))
    later = dt.datetime.now(tz=UTC) + dt.timedelta(days=20)  # past the withdrawal period

    at(later, lambda now: subscription_cancel(owner=owner, subscription_id=subscription.pk, at=now))
    at(later, lambda now: subscription_resume(owner=owner, subscription_id=subscription.pk, at=now))
    at(later, lambda now: subscription_end_now(subscription=subscription, at=now))

    assert types_of(vehicle)[3:] == [
        "subscription.updated",
        "subscription.updated",
        "entitlement.revoked",
        "subscription.canceled",
    ]
    updated, resumed, revoked, canceled = events_of(vehicle)[3:]
    assert updated.payload["change"] == "cancel_at_period_end"
    assert updated.payload["subscription"]["cancel_at_period_end"] is True
    assert resumed.payload["change"] == "resumed"
    assert revoked.payload["features"] == ["heated_seats"]
    assert canceled.payload["subscription"]["status"] == "canceled"


@pytest.mark.django_db
@pytest.mark.stripe
def test_a_plan_set_to_cancel_records_canceled_when_its_period_ends(stripe_proxy):
    owner, vehicle, subscription = paid_subscription(dt.datetime.now(tz=UTC))
    later = dt.datetime.now(tz=UTC) + dt.timedelta(days=20)
    at(later, lambda now: subscription_cancel(owner=owner, subscription_id=subscription.pk, at=now))

    at(subscription.current_period_end, lambda now: subscriptions_renew_due(at=now))

    assert types_of(vehicle)[3:] == ["subscription.updated", "subscription.canceled"]
    assert events_of(vehicle)[-1].payload["subscription"]["ended_at"]


@pytest.mark.django_db
@pytest.mark.stripe
def test_a_declined_renewal_records_payment_failed_and_dunning_started(stripe_proxy, localstripe_url):
    _owner, vehicle, _subscription = declining_world(localstripe_url)

    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))

    after_start = types_of(vehicle)[3:]
    assert after_start == ["dunning.started", "entitlement.granted", "payment.failed"]
    dunning = events_of(vehicle)[3]
    assert dunning.payload["grace_until"] and dunning.payload["next_retry_at"]
    assert dunning.payload["invoice"]["total"]["currency"] == "EUR"


@pytest.mark.django_db
@pytest.mark.stripe
def test_dunning_to_the_end_records_each_failure_then_unpaid_then_canceled(stripe_proxy, localstripe_url):
    _owner, vehicle, _subscription = declining_world(localstripe_url)
    at(RENEWAL, lambda now: subscriptions_renew_due(at=now))
    for days in (1, 3, 5, 7, 21):
        at(RENEWAL + dt.timedelta(days=days), lambda now: dunning_sweep(at=now))

    # the grace period's rights end on their own at the last retry: no revocation is needed
    assert types_of(vehicle)[5:] == [
        *["payment.failed"] * 4,
        "subscription.updated",
        "payment.failed",
        "subscription.canceled",
    ]
    unpaid = events_of(vehicle)[9]
    assert (unpaid.payload["change"], unpaid.payload["subscription"]["status"]) == ("unpaid", "unpaid")


@pytest.mark.django_db
@pytest.mark.stripe
def test_a_trial_records_created_granted_then_trial_ending_once(stripe_proxy):
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

    trial_reminders_due(at=subscription.trial_end - dt.timedelta(hours=1), owner_ids=[owner.pk])
    trial_reminders_due(at=subscription.trial_end - dt.timedelta(minutes=30), owner_ids=[owner.pk])

    assert types_of(vehicle) == ["subscription.created", "entitlement.granted", "trial.ending"]
    assert events_of(vehicle)[2].payload["trial_end"] == subscription.trial_end.isoformat().replace(
        "+00:00", "Z"
    )


@pytest.mark.django_db
@pytest.mark.stripe
def test_resale_records_the_sellers_plan_ending_then_vehicle_transferred(stripe_proxy):
    now = dt.datetime.now(tz=UTC)
    seller, vehicle, _subscription = paid_subscription(now - dt.timedelta(days=20))
    buyer = OwnerFactory()
    code = transfer_start(owner=seller, vehicle_id=vehicle.pk, at=now).code

    transfer_claim(new_owner=buyer, vin=vehicle.vin, code=code, at=now)

    assert types_of(vehicle)[3:] == ["entitlement.revoked", "subscription.canceled", "vehicle.transferred"]
    transferred = events_of(vehicle)[-1]
    assert transferred.payload["owner_id"] == buyer.pk
    assert seller.pk not in json.dumps(transferred.payload).split()  # only the new owner's id


@pytest.mark.django_db
def test_a_change_rolled_back_records_no_event(admin_user):
    _owner, vehicle = catalog_world()
    feature = Feature.objects.get(code="heated_seats")

    with pytest.raises(RuntimeError), transaction.atomic():
        entitlement_grant_admin(
            vehicle=vehicle,
            feature=feature,
            granted_by=admin_user,
            starts_at=dt.datetime.now(tz=UTC),
            ends_at=None,
            reason="goodwill",
        )
        raise RuntimeError("the operator's request fails after the grant")

    assert not OutboxEvent.objects.exists()
    entitlement_grant_admin(
        vehicle=vehicle,
        feature=feature,
        granted_by=admin_user,
        starts_at=dt.datetime.now(tz=UTC),
        ends_at=None,
        reason="goodwill",
    )
    assert types_of(vehicle) == ["entitlement.granted"]


@pytest.mark.django_db
@pytest.mark.stripe
def test_an_event_that_cannot_be_recorded_never_undoes_a_paid_fulfilment(stripe_proxy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(outbound_events, "events_record", broken)

    _owner, _vehicle, subscription = paid_subscription(dt.datetime.now(tz=UTC))

    subscription.refresh_from_db()
    assert subscription.status == "active"  # fulfilled, not refunded
    assert not subscription.invoices.filter(attempts__refunds__isnull=False).exists()
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
@pytest.mark.stripe
def test_a_dispute_records_revoked_and_opened_then_granted_and_closed_when_won(stripe_proxy, settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    buy(client, vehicle)
    attempt = PaymentAttempt.objects.get()

    send("charge.dispute.created", dispute(attempt))
    send("charge.dispute.closed", dispute(attempt, status="won"))

    assert types_of(vehicle)[-4:] == [
        "entitlement.revoked",
        "dispute.opened",
        "entitlement.granted",
        "dispute.closed",
    ]
    revoked, opened, granted, closed = events_of(vehicle)[-4:]
    assert (revoked.payload["reason"], revoked.payload["features"]) == ("dispute", ["heated_seats"])
    assert opened.payload["dispute"]["amount"] == {"amount_minor": 19_900, "currency": "EUR"}
    assert granted.payload["entitlements"][0]["ends_at"] is None  # the unlock is perpetual again
    assert (closed.payload["dispute"]["status"], closed.payload["dispute"]["lost"]["amount_minor"]) == (
        "won",
        0,
    )
