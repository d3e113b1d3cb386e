"""Reconciliation with Stripe (R12): with the webhook endpoint down for a simulated day of payments
and refunds, the job restores parity between our payments and refunds and Stripe's, reports each
repair, and repairs nothing the second time. Against localstripe behind our fault proxy; no
webhook reaches us in these tests (none is registered)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    CreditNote,
    Entitlement,
    PaymentAttempt,
    ReconciliationRun,
    ReconciliationRunStatus,
    Refund,
    RefundStatus,
    StripeEvent,
)
from billing.services.refunds import refund_create
from billing.services.stripe_reconciliation import (
    _REFUND_STATUS,
    _SAME_PAYMENT,
    MAX_LOOKBACK,
    ReconciliationAlreadyRunning,
    stripe_reconcile,
)
from tests.billing.api_helpers import (
    CARD_3DS,
    add_card,
    buy,
    catalog_world,
    localstripe_card,
    owner_client,
    post,
)
from tests.billing.test_webhooks_stripe import _authenticate
from tests.factories import CapabilityFactory, VehicleFactory

pytestmark = [pytest.mark.stripe, pytest.mark.django_db]
NOW = dt.timedelta(0)  # nothing is left to settle by itself in these tests


def _cars(owner, first, n):
    hardware = CapabilityFactory(code="heated_seat_hw")
    return [first] + [
        VehicleFactory(owner=owner, capabilities=[hardware], market=first.market) for _ in range(n - 1)
    ]


def _a_day_without_webhooks(localstripe_url, stripe_proxy):
    """Three 3-D Secure purchases authenticated at Stripe while the app was closed, one charge
    whose answer was lost, two paid unlocks refunded (one answer lost, one partial that we saw)."""
    owner, first = catalog_world()
    client = owner_client(owner)
    cars = _cars(owner, first, 6)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    three_ds = []
    for car in cars[:3]:
        response = post(client, f"/api/v1/me/vehicles/{car.pk}/purchases/", {"offer": "heated_seats_unlock"})
        assert response.json()["status"] == "requires_action", response.json()
        attempt = PaymentAttempt.objects.get(invoice__vehicle=car)
        _authenticate(localstripe_url, attempt)  # the customer passes 3-D Secure; no webhook comes
        three_ds.append(attempt)
    add_card(client)  # a card that needs no authentication
    stripe_proxy.inject("drop_after_forward", path="/v1/payment_intents")  # Stripe charged; we never heard
    response = post(client, f"/api/v1/me/vehicles/{cars[3].pk}/purchases/", {"offer": "heated_seats_unlock"})
    assert response.json()["status"] == "processing", response.json()
    lost_answer = PaymentAttempt.objects.get(invoice__vehicle=cars[3])
    refunded = []
    for car in cars[4:]:
        buy(client, car)
        refunded.append(PaymentAttempt.objects.get(invoice__vehicle=car))
    stripe_proxy.inject("drop_after_forward", path="/v1/refunds")  # Stripe refunded; we never heard
    lost_refund = refund_create(payment_attempt=refunded[0], amount_minor=19_900, reason="goodwill")
    seen_refund = refund_create(payment_attempt=refunded[1], amount_minor=5_000, reason="goodwill")
    assert (lost_refund.status, seen_refund.status) == (RefundStatus.UNKNOWN, RefundStatus.SUCCEEDED)
    assert {a.status for a in PaymentAttempt.objects.filter(pk__in=[a.pk for a in three_ds])} == {
        AttemptStatus.REQUIRES_ACTION
    }
    assert PaymentAttempt.objects.get(pk=lost_answer.pk).status == AttemptStatus.UNKNOWN
    return three_ds, lost_answer, lost_refund


def _parity() -> list[str]:
    """Where our payments and refunds differ from Stripe's (empty: parity)."""
    since = timezone.now() - dt.timedelta(days=1)
    differences = []
    for intent in gateway.payment_intents_list(created_after=since):
        ours = PaymentAttempt.objects.get(pk=intent.metadata["payment_attempt_id"])
        if ours.status not in _SAME_PAYMENT[intent.status]:
            differences.append(f"payment {ours.pk}: ours {ours.status}, Stripe's {intent.status}")
    stripe_refunds = list(gateway.refunds_list(created_after=since))
    for record in stripe_refunds:
        ours = Refund.objects.get(pk=record.metadata["refund_id"])
        if ours.status != _REFUND_STATUS[record.status]:
            differences.append(f"refund {ours.pk}: ours {ours.status}, Stripe's {record.status}")
    if len(stripe_refunds) != Refund.objects.count():
        differences.append("refund counts differ")
    return differences


def test_a_day_with_the_endpoint_disabled_is_restored_to_parity_and_each_repair_is_reported(
    stripe_proxy, localstripe_url
):
    three_ds, lost_answer, lost_refund = _a_day_without_webhooks(localstripe_url, stripe_proxy)
    assert _parity() != []
    assert not StripeEvent.objects.exists()  # the endpoint was down all day

    run = stripe_reconcile(settling=NOW)

    assert run.status == ReconciliationRunStatus.SUCCEEDED, run.error
    assert _parity() == []
    for attempt in [*three_ds, lost_answer]:
        attempt.refresh_from_db()
        assert attempt.status == AttemptStatus.SUCCEEDED
        assert Entitlement.objects.filter(
            vehicle=attempt.invoice.vehicle, feature__code="heated_seats"
        ).exists()
    lost_refund.refresh_from_db()
    assert lost_refund.status == RefundStatus.SUCCEEDED
    assert CreditNote.objects.filter(refund=lost_refund).exists()
    # the report: each payment event never delivered, and the refund Stripe settled without telling us
    report = run.differences
    for attempt in [*three_ds, lost_answer]:
        line = next(
            d for d in report if d["kind"] == "event" and attempt.stripe_payment_intent_id in d["found"]
        )
        assert line["repaired"] and f"payment {attempt.pk} is succeeded" in line["action"], line
    refund_line = next(d for d in report if d["kind"] == "refund")
    assert refund_line["object"].startswith(str(lost_refund.pk))
    assert (refund_line["found"], refund_line["action"], refund_line["repaired"]) == (
        "ours unknown, Stripe's succeeded",
        "settled succeeded",
        True,
    )
    assert run.differences_found == run.differences_repaired == len(report)
    assert run.events_missing == StripeEvent.objects.count() >= 4
    assert (run.payments_checked, run.refunds_checked) == (6, 2)
    assert run.cursor_after > run.cursor_before


def test_running_it_twice_repairs_nothing_the_second_time(stripe_proxy, localstripe_url):
    _a_day_without_webhooks(localstripe_url, stripe_proxy)
    first = stripe_reconcile(settling=NOW)
    inbox = StripeEvent.objects.count()

    second = stripe_reconcile(settling=NOW)

    assert first.differences_repaired > 0
    assert second.status == ReconciliationRunStatus.SUCCEEDED, second.error
    assert (second.differences_found, second.differences_repaired, second.events_missing) == (0, 0, 0)
    assert second.differences == []
    assert second.events_seen > 0  # it did look
    assert StripeEvent.objects.count() == inbox
    assert second.cursor_before == first.cursor_after - dt.timedelta(hours=1)


def test_payments_are_compared_as_objects_when_their_events_are_gone(
    stripe_proxy, localstripe_url, monkeypatch
):
    """Stripe keeps events 30 days; objects are compared whatever the events say."""
    three_ds, *_ = _a_day_without_webhooks(localstripe_url, stripe_proxy)
    monkeypatch.setattr(gateway, "events_list", lambda **_: iter(()))

    run = stripe_reconcile(settling=NOW)

    assert _parity() == []
    payment_lines = [d for d in run.differences if d["kind"] == "payment"]
    assert len(payment_lines) == 4
    assert all(d["repaired"] and d["action"] == "recorded succeeded" for d in payment_lines)
    assert {d["found"] for d in payment_lines} == {
        "ours requires_action, Stripe's succeeded",
        "ours unknown, Stripe's succeeded",
    }
    assert str(three_ds[0].pk) in " ".join(d["object"] for d in payment_lines)


def test_a_refund_made_outside_the_app_and_a_state_that_cannot_follow_are_reported_for_an_operator(
    stripe_proxy, localstripe_url
):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    buy(client, vehicle)
    attempt = PaymentAttempt.objects.get()
    gateway._client().v1.refunds.create(  # someone refunded in Stripe's dashboard
        {"payment_intent": attempt.stripe_payment_intent_id, "amount": 1_000},
        options={"idempotency_key": "dashboard-refund-1"},
    )

    run = stripe_reconcile(settling=NOW)

    line = next(d for d in run.differences if d["kind"] == "refund")
    assert "EUR 10.00" in line["found"] and str(attempt.pk) in line["found"]
    assert line["repaired"] is False
    assert run.differences_repaired == run.differences_found - 1


def test_the_cursor_never_goes_back_more_than_30_days_and_one_run_at_a_time(stripe_proxy):
    at = timezone.now()
    first = stripe_reconcile(settling=NOW, at=at)
    assert first.cursor_before == at - MAX_LOOKBACK
    assert first.cursor_after == first.cursor_before  # no events at all

    ReconciliationRun.objects.create(started_at=timezone.now(), cursor_before=at)  # a run in progress
    with pytest.raises(ReconciliationAlreadyRunning):
        stripe_reconcile(settling=NOW)

    later = stripe_reconcile(settling=NOW, at=at + dt.timedelta(hours=3))  # the stale run is abandoned
    assert later.status == ReconciliationRunStatus.SUCCEEDED
    assert ReconciliationRun.objects.filter(status=ReconciliationRunStatus.FAILED).count() == 1


def test_a_stripe_outage_fails_the_run_without_moving_the_cursor(stripe_proxy):
    stripe_proxy.inject("status_500", method="GET", path="/v1/events", times=5)

    run = stripe_reconcile(settling=NOW)

    assert run.status == ReconciliationRunStatus.FAILED
    assert run.cursor_after is None and "PaymentProviderUnavailable" in run.error


def test_the_admin_button_runs_it_and_shows_the_report(stripe_proxy, localstripe_url, admin_client):
    _a_day_without_webhooks(localstripe_url, stripe_proxy)
    changelist = admin_client.get(reverse("admin:billing_reconciliationrun_changelist"))
    assert "Reconcile with Stripe now" in changelist.content.decode()

    response = admin_client.post(reverse("admin:billing_reconciliationrun_reconcile_now"), follow=True)

    run = ReconciliationRun.objects.get()
    assert run.trigger == ReconciliationRun.Trigger.ADMIN
    page = response.content.decode()
    assert f"Reconciliation succeeded: {run.differences_found} differences found" in page
    assert "never delivered" in page and "settled succeeded" in page
    assert admin_client.get(reverse("admin:billing_reconciliationrun_changelist")).status_code == 200
