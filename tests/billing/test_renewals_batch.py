"""The renewal sweep's batch path (issue 8, renewals at fleet scale): a claimed batch is renewed
set-wise, and must leave exactly what renewing one subscription at a time leaves.

- a batch mixing plain renewals with rows that take the one-by-one path (set to cancel, a trial
  ending without a card) renews each as it should, with consecutive invoice numbers and, per car,
  `entitlement.granted` then `invoice.paid`;
- a crash between each pair of steps (after the claim committed, between two charges, after the
  charges before recording, inside the recording transaction) converges after the reconciler to
  exactly one charge per period, paid invoices, one entitlement per period and one event each;
- a renewal whose car changed hands between the charge and its recording is refunded, not granted;
- a batch whose recording fails is recorded one by one.

The proxy answers the PaymentIntents itself (what is under test is our side)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from billing.models import (
    AttemptStatus,
    Entitlement,
    PaymentAttempt,
    PaymentMethod,
    Refund,
    Subscription,
    SubscriptionStatus,
)
from billing.services import payments, renewals
from billing.services.payments import payment_attempts_reconcile
from billing.services.renewals import subscriptions_renew_due
from events.models import EventType, OutboxEvent
from tests.billing.renewal_helpers import due_fleet, renewal_invoices
from vehicles.models import Owner, Ownership

pytestmark = [pytest.mark.stripe, pytest.mark.django_db]
PI_CREATE = "/v1/payment_intents"


class Crash(BaseException):
    """The process dies here (no `except Exception` of ours catches it)."""


def assert_converged(fleet, proxy, *, renewed=None) -> None:
    """Each renewed period: one paid invoice, one succeeded attempt, one PaymentIntent created at
    Stripe (by key), one entitlement row, and per car one `entitlement.granted` then one
    `invoice.paid`; nothing left pending."""
    ids = renewed if renewed is not None else fleet.subscription_ids
    invoices = renewal_invoices(fleet).filter(subscription_id__in=ids)
    assert invoices.count() == invoices.filter(status="paid").count() == len(ids)
    attempts = PaymentAttempt.objects.filter(invoice__in=invoices)
    assert attempts.filter(status=AttemptStatus.SUCCEEDED).count() == attempts.count() == len(ids)
    mine = {str(pk) for pk in invoices.values_list("pk", flat=True)}
    creates = [
        c
        for c in proxy.calls(method="POST", path=PI_CREATE)
        if c.reached_upstream and c.form["metadata[invoice_id]"] in mine
    ]
    assert len({c.idempotency_key for c in creates}) == len(ids)
    assert len({c.form["metadata[invoice_id]"] for c in creates}) == len(ids)
    rows = Entitlement.objects.filter(subscription_id__in=ids, starts_at=fleet.period_end)
    assert rows.count() == len(ids)
    for subscription in Subscription.objects.filter(pk__in=ids):
        types = list(
            OutboxEvent.objects.filter(ordering_key=str(subscription.vehicle_id))
            .order_by("sequence")
            .values_list("type", flat=True)
        )
        assert types == [EventType.ENTITLEMENT_GRANTED, EventType.INVOICE_PAID], types
        assert subscription.status == SubscriptionStatus.ACTIVE
        assert subscription.current_period_start == fleet.period_end


def test_a_batch_of_plain_and_special_rows_renews_each_as_one_by_one_would(local_stripe):
    fleet = due_fleet(6, per_owner=1)
    to_cancel, trial_without_card, *plain = fleet.subscription_ids
    Subscription.objects.filter(pk=to_cancel).update(cancel_at_period_end=True)
    trial = Subscription.objects.get(pk=trial_without_card)
    Subscription.objects.filter(pk=trial.pk).update(status=SubscriptionStatus.TRIALING)
    PaymentMethod.objects.filter(owner_id=trial.owner_id).delete()

    report = subscriptions_renew_due(at=timezone.now())

    assert (report.renewed, report.canceled, report.errors) == (4, 2, [])
    assert_converged(fleet, local_stripe, renewed=plain)
    assert set(
        Subscription.objects.filter(pk__in=[to_cancel, trial_without_card]).values_list("status", flat=True)
    ) == {SubscriptionStatus.CANCELED}
    assert not renewal_invoices(fleet).filter(subscription_id__in=[to_cancel, trial_without_card]).exists()
    issued = renewal_invoices(fleet).values_list("number", flat=True)
    numbers = sorted(int(number.rsplit("-", 1)[1]) for number in issued)
    assert numbers == list(range(numbers[0], numbers[0] + 4))  # consecutive: gapless series


def _crash_on_call(monkeypatch, module, name, *, on_call: int, after: bool = False):
    original = getattr(module, name)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call and not after:
            raise Crash(name)
        result = original(*args, **kwargs)
        if calls["n"] == on_call and after:
            raise Crash(name)
        return result

    monkeypatch.setattr(module, name, crashing)


CRASH_POINTS = {
    "after the claim committed, before any charge": (renewals, "payment_attempt_call_stripe", 1, False),
    "between two charges (two charged, the answer of the second lost)": (
        renewals,
        "payment_attempt_call_stripe",
        2,
        True,
    ),
    "after every charge, before recording": (renewals, "renewal_answers_record", 1, False),
    "inside the recording transaction, before it commits": (
        payments,
        "payment_attempts_transition",
        1,
        False,
    ),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_between_any_two_steps_converges_after_the_reconciler(local_stripe, monkeypatch, point):
    fleet = due_fleet(5, per_owner=1)
    module, name, on_call, after = CRASH_POINTS[point]
    _crash_on_call(monkeypatch, module, name, on_call=on_call, after=after)

    with pytest.raises(Crash):
        subscriptions_renew_due(at=timezone.now())
    monkeypatch.undo()

    # The claim committed: the periods moved on, each with its invoice and attempt; nothing is
    # due again, so the next sweep renews nothing twice...
    assert subscriptions_renew_due(at=timezone.now()).renewed == 0
    # ...and the reconciler settles every attempt with its own key.
    settled = payment_attempts_reconcile(older_than=dt.timedelta(0))

    assert sum(settled.values()) == settled.get("succeeded", 0) > 0
    assert_converged(fleet, local_stripe)


def test_a_renewal_whose_car_changed_hands_before_recording_is_refunded(local_stripe, monkeypatch):
    fleet = due_fleet(3, per_owner=1)
    sold = Subscription.objects.get(pk=fleet.subscription_ids[0])
    original = renewals.payment_attempt_call_stripe

    def charge_then_sell(*, attempt):
        answer = original(attempt=attempt)
        if attempt.invoice.subscription_id == sold.pk:  # the car is sold while Stripe charges
            now = timezone.now()
            Ownership.objects.filter(vehicle_id=sold.vehicle_id, ends_at__isnull=True).update(ends_at=now)
            buyer = Owner.objects.create(
                display_name="Buyer", email="buyer@example.com", billing_country="DE", currency="EUR"
            )
            Ownership.objects.create(vehicle_id=sold.vehicle_id, owner=buyer, starts_at=now)
        return answer

    monkeypatch.setattr(renewals, "payment_attempt_call_stripe", charge_then_sell)

    report = subscriptions_renew_due(at=timezone.now())

    assert report.renewed == 3  # every charge succeeded...
    assert_converged(fleet, local_stripe, renewed=fleet.subscription_ids[1:])
    refund = Refund.objects.get(payment_attempt__invoice__subscription=sold)  # ...the sold car's refunded
    assert refund.amount_minor == 999 and refund.reason.startswith("not delivered")
    assert not Entitlement.objects.filter(subscription=sold, starts_at=fleet.period_end).exists()


def test_a_batch_whose_recording_fails_is_recorded_one_by_one(local_stripe, monkeypatch):
    fleet = due_fleet(4, per_owner=1)

    def broken(**kwargs):
        raise RuntimeError("batch recording unavailable")

    monkeypatch.setattr(payments, "renewals_fulfil_paid", broken)

    report = subscriptions_renew_due(at=timezone.now())

    assert (report.renewed, report.errors) == (4, [])
    assert_converged(fleet, local_stripe)
