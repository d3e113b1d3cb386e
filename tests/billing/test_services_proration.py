"""Plan-change proration at the service level: the upgrade invoice is the credit plus the debit,
never negative and never more than the new price."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st

from billing.models import InvoiceKind, Subscription, SubscriptionStatus
from billing.services.invoices import invoice_create
from billing.services.subscriptions import subscription_change_preview
from core.errors import BusinessRuleViolation
from core.periods import Interval, add_interval
from core.rounding import prorate, upgrade_proration
from tests.factories import FeatureFactory, OfferFactory, OwnerFactory, PriceFactory, VehicleFactory

pytestmark = [pytest.mark.django_db]

START = dt.datetime(2026, 1, 31, 9, 15, 30, tzinfo=dt.UTC)  # month end: the period is Jan 31 -> Feb 28


def _subscription(*, old_minor: int, new_minor: int, interval: str = "month", start: dt.datetime = START):
    owner = OwnerFactory()
    vehicle = VehicleFactory(owner=owner)
    feature = FeatureFactory(code="proration_feature")
    basic = OfferFactory(code="plan_basic", subscription=True, interval=interval, features=[feature])
    plus = OfferFactory(code="plan_plus", subscription=True, interval=interval, features=[feature])
    old = PriceFactory(offer=basic, market=vehicle.market, amount_minor=old_minor)
    PriceFactory(offer=plus, market=vehicle.market, amount_minor=new_minor)
    end = add_interval(start, interval=Interval(interval), count=1)
    subscription = Subscription.objects.create(
        owner=owner,
        vehicle=vehicle,
        offer=basic,
        price=old,
        status=SubscriptionStatus.ACTIVE,
        billing_anchor=start,
        current_period_start=start,
        current_period_end=end,
    )
    return owner, subscription


@given(
    old_minor=st.integers(min_value=0, max_value=10_000_000),
    increase=st.integers(min_value=1, max_value=10_000_000),
    interval=st.sampled_from(["month", "year"]),
    elapsed=st.floats(min_value=0, max_value=1, exclude_max=True, allow_nan=False),  # at the end: renewal
)
def test_upgrade_invoice_total_is_credit_plus_debit_within_zero_and_the_new_price(
    old_minor, increase, interval, elapsed
):
    new_minor = old_minor + increase
    with transaction.atomic():
        owner, subscription = _subscription(old_minor=old_minor, new_minor=new_minor, interval=interval)
        start, end = subscription.current_period_start, subscription.current_period_end
        whole = int((end - start).total_seconds())
        at = start + dt.timedelta(seconds=int(whole * elapsed))
        remaining = int((end - at).total_seconds())

        preview = subscription_change_preview(
            owner=owner, subscription_id=subscription.pk, offer_code="plan_plus", at=at
        )
        invoice = invoice_create(
            owner=owner,
            vehicle=subscription.vehicle,
            kind=InvoiceKind.PLAN_CHANGE,
            currency=preview.currency,
            lines=preview.lines,
            at=at,
            subscription=subscription,
            period_start=at,
            period_end=end,
            change_to_price=preview.new_price,
        )

        credit, debit = (line.amount_minor for line in preview.lines)
        assert preview.kind == "upgrade"
        assert (credit, debit) == upgrade_proration(
            old_minor, new_minor, part_seconds=remaining, whole_seconds=whole
        )
        assert credit == -prorate(old_minor, part_seconds=remaining, whole_seconds=whole)
        assert invoice.total_minor == preview.amount_due_minor == credit + debit
        assert invoice.total_minor == sum(invoice.lines.values_list("amount_minor", flat=True))
        assert 0 <= invoice.total_minor <= new_minor
        assert abs(invoice.total_minor * whole - increase * remaining) <= whole  # within 1 minor unit
        transaction.set_rollback(True)


def test_upgrade_at_the_period_start_is_the_full_difference():
    owner, subscription = _subscription(old_minor=999, new_minor=1_999)

    preview = subscription_change_preview(
        owner=owner, subscription_id=subscription.pk, offer_code="plan_plus", at=START
    )

    assert [line.amount_minor for line in preview.lines] == [-999, 1_999]
    assert preview.amount_due_minor == 1_000
    assert all(
        (line.period_start, line.period_end) == (START, subscription.current_period_end)
        for line in preview.lines
    )


def test_an_equal_or_lower_price_is_a_downgrade_at_period_end():
    owner, subscription = _subscription(old_minor=999, new_minor=999)

    preview = subscription_change_preview(
        owner=owner, subscription_id=subscription.pk, offer_code="plan_plus", at=START + dt.timedelta(days=3)
    )

    assert (preview.kind, preview.effective_at, preview.lines) == (
        "downgrade",
        subscription.current_period_end,
        [],
    )
    assert preview.amount_due_minor == 0


def test_a_change_outside_an_active_period_is_refused():
    owner, subscription = _subscription(old_minor=999, new_minor=1_999)
    subscription.status = SubscriptionStatus.PAST_DUE
    subscription.save(update_fields=["status"])

    with pytest.raises(BusinessRuleViolation) as error:
        subscription_change_preview(
            owner=owner, subscription_id=subscription.pk, offer_code="plan_plus", at=START
        )

    assert error.value.code == "invalid_state"
