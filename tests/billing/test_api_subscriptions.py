"""My subscriptions: list, retrieve, cancel (withdrawal or period end), resume, change plan."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import (
    Entitlement,
    Invoice,
    InvoiceKind,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from core.rounding import upgrade_proration
from tests.billing.api_helpers import (
    add_card,
    catalog_world,
    heated_seats_plan,
    owner_client,
    post,
    results,
    subscribe_paid,
    vehicle_features,
)
from tests.factories import OwnerFactory, VehicleFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

PI = "/v1/payment_intents"


def _paid_world(*, consumer: bool = True):
    owner, vehicle = catalog_world()
    if not consumer:
        owner.is_consumer = False
        owner.save(update_fields=["is_consumer"])
    client = owner_client(owner)
    add_card(client)
    body = subscribe_paid(client, vehicle)
    return owner, vehicle, Subscription.objects.get(pk=body["id"])


def test_list_and_retrieve_show_only_my_subscriptions(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    other_owner = OwnerFactory()
    other_vehicle = VehicleFactory(owner=other_owner, capabilities=list(vehicle.capabilities.all()))
    other_client = owner_client(other_owner)
    add_card(other_client)
    other = subscribe_paid(other_client, other_vehicle)
    client = owner_client(owner)

    listed = results(client.get("/api/v1/me/subscriptions/"))
    one = client.get(f"/api/v1/me/subscriptions/{subscription.pk}/")
    foreign = client.get(f"/api/v1/me/subscriptions/{other['id']}/")

    assert [s["id"] for s in listed] == [str(subscription.pk)]
    assert one.status_code == 200
    assert one.json()["offer"] == "heated_seats_monthly"
    assert one.json()["price"] == {"amount_minor": 999, "currency": "EUR", "formatted": "EUR 9.99"}
    assert one.json()["status"] == "active"
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "not_found"
    assert post(client, f"/api/v1/me/subscriptions/{other['id']}/cancel/").status_code == 404
    assert Subscription.objects.get(pk=other["id"]).cancel_at_period_end is False


def test_cancel_after_the_withdrawal_period_ends_at_period_end(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    period_end = subscription.current_period_end

    with time_machine.travel(subscription.created_at + dt.timedelta(days=15), tick=True):
        response = post(owner_client(owner), f"/api/v1/me/subscriptions/{subscription.pk}/cancel/")
        features = vehicle_features(vehicle)

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "active"
    assert body["cancel_at_period_end"] is True
    assert body["canceled_at"] is not None
    assert body["ended_at"] is None
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_at_period_end) == ("active", True)
    assert not Refund.objects.exists()
    assert not stripe_proxy.calls(method="POST", path="/v1/refunds")
    entitlement = Entitlement.objects.get(subscription=subscription)
    assert entitlement.ends_at == period_end
    assert features == [
        {
            "code": "heated_seats",
            "valid_until": period_end.isoformat().replace("+00:00", "Z"),
            "sources": ["subscription"],
        }
    ]


def test_cancel_within_the_withdrawal_period_refunds_in_full_and_ends_now(stripe_proxy):
    owner, vehicle, subscription = _paid_world()

    with time_machine.travel(subscription.created_at + dt.timedelta(days=3), tick=True):
        response = post(owner_client(owner), f"/api/v1/me/subscriptions/{subscription.pk}/cancel/")
        features = vehicle_features(vehicle)

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "canceled"
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.ended_at is not None
    refund = Refund.objects.get()
    assert (refund.status, refund.amount_minor, refund.currency) == (RefundStatus.SUCCEEDED, 999, "EUR")
    assert refund.payment_attempt.invoice.subscription_id == subscription.pk
    assert refund.stripe_refund_id
    calls = stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert [c.idempotency_key for c in calls] == [refund.idempotency_key]
    assert calls[0].form["amount"] == "999"
    entitlement = Entitlement.objects.get(subscription=subscription)
    assert entitlement.ends_at == subscription.ended_at
    assert features == []


def test_fleet_owner_has_no_withdrawal_and_cancels_at_period_end(stripe_proxy):
    owner, vehicle, subscription = _paid_world(consumer=False)

    response = post(owner_client(owner), f"/api/v1/me/subscriptions/{subscription.pk}/cancel/")

    assert response.status_code == 200, response.json()
    assert response.json()["cancel_at_period_end"] is True
    assert response.json()["status"] == "active"
    assert not Refund.objects.exists()
    assert not stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert Entitlement.objects.get(subscription=subscription).ends_at == subscription.current_period_end
    assert [f["code"] for f in vehicle_features(vehicle)] == ["heated_seats"]


def test_resume_before_the_period_end_clears_the_cancellation(stripe_proxy):
    owner, _, subscription = _paid_world(consumer=False)
    client = owner_client(owner)
    post(client, f"/api/v1/me/subscriptions/{subscription.pk}/cancel/")

    response = client.post(f"/api/v1/me/subscriptions/{subscription.pk}/resume/")

    assert response.status_code == 200, response.json()
    assert response.json()["cancel_at_period_end"] is False
    assert response.json()["canceled_at"] is None
    subscription.refresh_from_db()
    assert (subscription.cancel_at_period_end, subscription.canceled_at) == (False, None)


def test_resume_when_not_canceling_is_refused(stripe_proxy):
    owner, _, subscription = _paid_world()

    response = owner_client(owner).post(f"/api/v1/me/subscriptions/{subscription.pk}/resume/")

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_state"


def test_resume_after_the_period_end_is_refused(stripe_proxy):
    owner, _, subscription = _paid_world(consumer=False)
    post(owner_client(owner), f"/api/v1/me/subscriptions/{subscription.pk}/cancel/")

    with time_machine.travel(subscription.current_period_end + dt.timedelta(seconds=1), tick=False):
        response = owner_client(owner).post(f"/api/v1/me/subscriptions/{subscription.pk}/resume/")

    assert response.status_code == 422
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end is True


def test_upgrade_preview_credits_unused_time_and_charges_the_new_plan_to_the_second(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    heated_seats_plan(vehicle, amount_minor=1_999)
    at = (subscription.current_period_start + dt.timedelta(days=10, hours=3, seconds=7)).replace(
        microsecond=0
    )

    with time_machine.travel(at, tick=False):
        response = owner_client(owner).post(
            f"/api/v1/me/subscriptions/{subscription.pk}/change-preview/",
            {"offer": "heated_seats_premium_monthly"},
            format="json",
        )

    body = response.json()
    assert response.status_code == 200, body
    end, start = subscription.current_period_end, subscription.current_period_start
    credit, debit = upgrade_proration(
        999,
        1_999,
        part_seconds=int((end - at).total_seconds()),
        whole_seconds=int((end - start).total_seconds()),
    )
    assert body["kind"] == "upgrade"
    assert body["effective_at"] == at.isoformat().replace("+00:00", "Z")
    assert [line["amount"]["amount_minor"] for line in body["lines"]] == [credit, debit]
    assert credit < 0 < debit
    assert body["amount_due"]["amount_minor"] == credit + debit
    assert body["amount_due"]["currency"] == "EUR"
    assert not Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).exists()
    assert len(stripe_proxy.calls(method="POST", path=PI)) == 1  # only the first period


def test_upgrade_charges_once_switches_the_plan_and_moves_the_entitlement(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    premium = heated_seats_plan(vehicle, amount_minor=1_999)
    period_start, period_end = subscription.current_period_start, subscription.current_period_end

    with time_machine.travel(period_start + dt.timedelta(days=10), tick=True):
        response = post(
            owner_client(owner),
            f"/api/v1/me/subscriptions/{subscription.pk}/change/",
            {"offer": "heated_seats_premium_monthly"},
        )
        features = vehicle_features(vehicle)

    body = response.json()
    assert response.status_code == 201, body
    assert body["status"] == "succeeded"
    assert body["subscription"]["offer"] == "heated_seats_premium_monthly"
    invoice = Invoice.objects.get(kind=InvoiceKind.PLAN_CHANGE)
    assert invoice.status == "paid"
    assert invoice.total_minor == sum(line.amount_minor for line in invoice.lines.all()) > 0
    assert body["invoice"]["total"]["amount_minor"] == invoice.total_minor
    charges = stripe_proxy.calls(method="POST", path=PI)
    assert len(charges) == 2  # first period + the upgrade
    assert charges[-1].form["amount"] == str(invoice.total_minor)
    subscription.refresh_from_db()
    assert subscription.offer_id == premium.pk
    assert subscription.price.amount_minor == 1_999
    assert (subscription.current_period_start, subscription.current_period_end) == (period_start, period_end)
    old, new = Entitlement.objects.filter(subscription=subscription).order_by("starts_at")
    assert (old.starts_at, old.ends_at) == (period_start, invoice.paid_at)
    assert (new.starts_at, new.ends_at) == (invoice.paid_at, period_end)
    assert [(f["code"], f["valid_until"]) for f in features] == [
        ("heated_seats", period_end.isoformat().replace("+00:00", "Z"))
    ]


def test_downgrade_is_scheduled_for_the_period_end_and_charges_nothing(stripe_proxy):
    owner, vehicle = catalog_world()
    heated_seats_plan(vehicle, amount_minor=1_999)
    client = owner_client(owner)
    add_card(client)
    subscription = Subscription.objects.get(
        pk=subscribe_paid(client, vehicle, "heated_seats_premium_monthly")["id"]
    )
    invoices_before = Invoice.objects.count()

    response = post(
        client, f"/api/v1/me/subscriptions/{subscription.pk}/change/", {"offer": "heated_seats_monthly"}
    )

    body = response.json()
    assert response.status_code == 201, body
    assert body["status"] == "scheduled"
    assert body["subscription"]["pending_offer"] == "heated_seats_monthly"
    assert body["subscription"]["offer"] == "heated_seats_premium_monthly"
    subscription.refresh_from_db()
    assert subscription.pending_offer.code == "heated_seats_monthly"
    assert subscription.pending_price.amount_minor == 999
    assert subscription.price.amount_minor == 1_999
    assert Invoice.objects.count() == invoices_before
    assert len(stripe_proxy.calls(method="POST", path=PI)) == 1
    preview = client.post(
        f"/api/v1/me/subscriptions/{subscription.pk}/change-preview/",
        {"offer": "heated_seats_monthly"},
        format="json",
    ).json()
    assert preview["kind"] == "downgrade"
    assert preview["lines"] == []
    assert preview["amount_due"]["amount_minor"] == 0
    assert preview["effective_at"] == subscription.current_period_end.isoformat().replace("+00:00", "Z")


def test_change_during_a_trial_is_refused(stripe_proxy):
    owner, vehicle = catalog_world()
    heated_seats_plan(vehicle)
    client = owner_client(owner)
    add_card(client)
    started = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "heated_seats_monthly"}
    )
    assert started.json()["status"] == "trialing"
    url = f"/api/v1/me/subscriptions/{started.json()['subscription']['id']}"

    preview = client.post(f"{url}/change-preview/", {"offer": "heated_seats_premium_monthly"}, format="json")
    change = post(client, f"{url}/change/", {"offer": "heated_seats_premium_monthly"})

    assert (preview.status_code, change.status_code) == (422, 422)
    assert change.json()["code"] == "invalid_state"
    assert not Invoice.objects.exists()
    assert not stripe_proxy.calls(method="POST", path=PI)
    assert Subscription.objects.get().offer.code == "heated_seats_monthly"


def test_change_to_a_yearly_plan_is_unavailable(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    heated_seats_plan(vehicle, code="heated_seats_yearly", amount_minor=9_900, interval="year")

    response = post(
        owner_client(owner),
        f"/api/v1/me/subscriptions/{subscription.pk}/change/",
        {"offer": "heated_seats_yearly"},
    )

    assert response.status_code == 422
    assert response.json()["code"] == "offer_unavailable"
    assert not Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).exists()
    subscription.refresh_from_db()
    assert (subscription.offer.code, subscription.pending_offer) == ("heated_seats_monthly", None)


def test_change_to_the_current_plan_or_an_unknown_offer_is_refused(stripe_proxy):
    owner, _, subscription = _paid_world()
    client = owner_client(owner)
    url = f"/api/v1/me/subscriptions/{subscription.pk}/change/"

    same = post(client, url, {"offer": "heated_seats_monthly"})
    unknown = post(client, url, {"offer": "no_such_plan"})
    invalid = post(client, url, {"offer": "not a slug"})

    assert (same.status_code, same.json()["code"]) == (422, "already_subscribed")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (invalid.status_code, invalid.json()["code"]) == (400, "validation_error")
    assert "offer" in invalid.json()["details"]


def test_the_same_change_key_twice_charges_once(stripe_proxy):
    owner, vehicle, subscription = _paid_world()
    heated_seats_plan(vehicle, amount_minor=1_999)
    client = owner_client(owner)
    url = f"/api/v1/me/subscriptions/{subscription.pk}/change/"

    first = post(client, url, {"offer": "heated_seats_premium_monthly"}, key="upgrade-1")
    second = post(client, url, {"offer": "heated_seats_premium_monthly"}, key="upgrade-1")

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).count() == 1
    assert len(stripe_proxy.calls(method="POST", path=PI)) == 2  # first period + one upgrade


def test_an_upgrade_with_nothing_due_switches_the_plan_without_charging(stripe_proxy):
    """In the last minutes of a period both prorated lines round to 0: nothing to charge, but the
    plan still changes (a zero-amount PaymentIntent does not exist)."""
    owner, vehicle, subscription = _paid_world()
    premium = heated_seats_plan(vehicle, amount_minor=1_999)

    with time_machine.travel(subscription.current_period_end - dt.timedelta(seconds=60), tick=True):
        response = post(
            owner_client(owner),
            f"/api/v1/me/subscriptions/{subscription.pk}/change/",
            {"offer": "heated_seats_premium_monthly"},
        )

    body = response.json()
    assert response.status_code == 201, body
    assert body["status"] == "succeeded"
    invoice = Invoice.objects.get(kind=InvoiceKind.PLAN_CHANGE)
    assert (invoice.total_minor, invoice.status) == (0, "paid")
    assert not invoice.attempts.exists()
    assert len(stripe_proxy.calls(method="POST", path=PI)) == 1  # only the first period
    subscription.refresh_from_db()
    assert subscription.offer_id == premium.pk
    assert Entitlement.objects.filter(subscription=subscription).count() == 2
