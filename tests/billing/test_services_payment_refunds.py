"""Refunds issued by an operator or a service: partial plus partial up to the total, never more
than paid even under concurrency, the entitlement policy applied, and the admin refund form."""

import datetime as dt

import pytest
from django.utils import timezone

from billing.models import Entitlement, PaymentAttempt, Purchase, Refund, RefundStatus
from billing.selectors import features_active_at
from billing.services.customers import payment_method_add
from billing.services.payment_refunds import payment_refund
from billing.services.purchases import purchase_create
from billing.services.subscriptions import subscription_start
from core.errors import BillingError
from tests.billing.api_helpers import catalog_world
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.stripe


def paid_unlock():
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    outcome = purchase_create(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_unlock",
        payment_method_id=None,
        at=timezone.now(),
    )
    return vehicle, outcome.attempt  # 199.00 EUR


def refund(attempt, amount, *, revoke=False):
    return payment_refund(
        payment_attempt_id=attempt.pk,
        amount_minor=amount,
        reason="goodwill",
        revoke_rights=revoke,
        at=timezone.now(),
    )


@pytest.mark.django_db
def test_partial_plus_partial_up_to_the_total_succeed_and_one_more_is_refused(stripe_proxy):
    vehicle, attempt = paid_unlock()

    first, second = refund(attempt, 5_000), refund(attempt, attempt.amount_minor - 5_000)
    with pytest.raises(BillingError) as refused:
        refund(attempt, 1)

    assert (first.status, second.status) == (RefundStatus.SUCCEEDED, RefundStatus.SUCCEEDED)
    assert refused.value.code == "refund_exceeds_payment"
    assert refused.value.details == {"refundable_minor": 0}
    assert [c.form["amount"] for c in stripe_proxy.calls(method="POST", path="/v1/refunds")] == [
        "5000",
        "14900",
    ]
    assert "heated_seats" in [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=timezone.now())]


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_refunds_never_exceed_the_paid_amount(stripe_proxy):
    _vehicle, attempt = paid_unlock()

    def one(_i: int) -> str:
        try:
            return refund(attempt, 3_000).status
        except BillingError as exc:
            return str(exc.code)

    outcomes = run_concurrently(one, threads=10)

    assert outcomes.count(RefundStatus.SUCCEEDED) == 6  # 6 x 30.00 <= 199.00 < 7 x 30.00
    assert outcomes.count("refund_exceeds_payment") == 4
    total = sum(Refund.objects.filter(payment_attempt=attempt).values_list("amount_minor", flat=True))
    assert total == 18_000 <= attempt.amount_minor
    assert len(stripe_proxy.calls(method="POST", path="/v1/refunds")) == 6


@pytest.mark.django_db
def test_a_refunded_unlock_is_revoked(stripe_proxy):
    vehicle, attempt = paid_unlock()

    refund(attempt, attempt.amount_minor, revoke=True)

    assert Purchase.objects.get().status == "refunded"
    assert features_active_at(vehicle_id=vehicle.pk, at=timezone.now() + dt.timedelta(seconds=1)) == []


@pytest.mark.django_db
def test_a_refunded_subscription_period_ends_its_entitlement(stripe_proxy):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    start = timezone.now()
    subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_monthly",
        payment_method_id=None,
        use_trial=False,
        at=start,
    )
    attempt = PaymentAttempt.objects.get()

    refund(attempt, 500, revoke=True)  # part of the period refunded, the operator ends it

    now = timezone.now()
    assert Entitlement.objects.get(vehicle=vehicle).ends_at <= now
    assert features_active_at(vehicle_id=vehicle.pk, at=now + dt.timedelta(seconds=1)) == []


@pytest.mark.django_db
def test_a_three_decimal_refund_must_be_an_amount_stripe_can_move(stripe_proxy):
    _vehicle, attempt = paid_unlock()
    PaymentAttempt.objects.filter(pk=attempt.pk).update(currency="BHD")

    with pytest.raises(BillingError) as refused:
        refund(attempt, 1_005)

    assert refused.value.code == "invalid_amount"
    assert not Refund.objects.exists()


@pytest.mark.django_db
def test_the_admin_refund_form_refunds_part_and_keeps_the_feature(stripe_proxy, admin_client):
    vehicle, attempt = paid_unlock()
    url = f"/admin/billing/paymentattempt/{attempt.pk}/refund/"

    page = admin_client.get(url)
    done = admin_client.post(url, {"amount": "20.00", "reason": "app outage"})
    too_much = admin_client.post(url, {"amount": "500.00", "reason": "oops"})

    assert page.status_code == 200 and b"at most" in page.content
    assert done.status_code == 302
    refund_row = Refund.objects.get()
    assert (refund_row.amount_minor, refund_row.reason, refund_row.status) == (
        2_000,
        "app outage",
        "succeeded",
    )
    assert too_much.status_code == 200 and b"exceed" in too_much.content
    assert "heated_seats" in [f.code for f in features_active_at(vehicle_id=vehicle.pk, at=timezone.now())]
    change = admin_client.get(f"/admin/billing/paymentattempt/{attempt.pk}/change/")
    assert b"Refund (full or partial)" in change.content
