"""Regression tests for the holes where money and rights disagreed (issue "Money and rights
always agree"). Each test is named after what it proves; the hole it closes is in its docstring."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
import time_machine
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    Entitlement,
    Invoice,
    InvoiceKind,
    PaymentAttempt,
    Purchase,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.services import payments
from billing.services.customers import payment_method_add
from billing.services.invoices import LineSpec, invoice_create
from billing.services.subscriptions import (
    subscription_change_apply,
    subscription_end_now,
    subscription_start,
)
from billing.services.transfers import transfer_claim, transfer_start
from core.errors import BillingError
from core.money import Money
from tests.billing.api_helpers import (
    CARD_3DS,
    add_card,
    catalog_world,
    heated_seats_plan,
    localstripe_card,
    owner_client,
    post,
    vehicle_feature_codes,
)
from tests.concurrency import run_concurrently
from tests.factories import (
    FeatureFactory,
    MarketFactory,
    OfferFactory,
    OwnerFactory,
    PriceFactory,
)

pytestmark = [pytest.mark.stripe]
PI = "/v1/payment_intents"


def _stripe(base: str, method: str, path: str, form: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        data=urllib.parse.urlencode(form).encode() if form is not None else None,
        method=method,
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _authenticate(base: str, attempt: PaymentAttempt) -> None:
    """The customer passes 3-D Secure at Stripe; the app never tells us."""
    _stripe(
        base,
        "POST",
        f"/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        {"success": "true", "client_secret": attempt.client_secret},
    )


def _pi_creates(stripe_proxy) -> int:
    return len([c for c in stripe_proxy.calls(method="POST", path=PI) if c.reached_upstream])


def _bundle_world(*, plan_amount: int = 1_999):
    """A car with a paid comfort bundle (heated seats + heated wheel, 15.00) and a live trial of
    another heated-seats plan: the setting of the upgrade-into-a-live-plan hole."""
    owner, vehicle = catalog_world()
    wheel = FeatureFactory(code="heated_wheel")
    seats = FeatureFactory(code="heated_seats")
    bundle = OfferFactory(code="comfort_bundle_monthly", subscription=True, features=[seats, wheel])
    PriceFactory(offer=bundle, market=vehicle.market, amount_minor=1_500)
    heated_seats_plan(vehicle, amount_minor=plan_amount, trial_days=14)
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    now = timezone.now()
    trial = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_premium_monthly",
        payment_method_id=None,
        use_trial=True,
        at=now,
    ).subscription
    paid = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="comfort_bundle_monthly",
        payment_method_id=None,
        use_trial=False,
        at=now,
    ).subscription
    assert (trial.status, paid.status) == ("trialing", "active")
    return owner, vehicle, paid


@pytest.mark.django_db
def test_upgrade_into_a_plan_the_car_already_has_live_is_refused_before_stripe(stripe_proxy):
    """Hole 1: the change answered 500 after charging; now a 4xx, and Stripe never hears of it."""
    owner, _vehicle, bundle = _bundle_world()
    creates = _pi_creates(stripe_proxy)

    response = post(
        owner_client(owner),
        f"/api/v1/me/subscriptions/{bundle.pk}/change/",
        {"offer": "heated_seats_premium_monthly"},
    )

    assert response.status_code in (409, 422), response.json()
    assert response.json()["code"] == "already_subscribed"
    assert _pi_creates(stripe_proxy) == creates
    assert not Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).exists()


@pytest.mark.django_db
def test_downgrade_into_a_plan_the_car_already_has_live_is_refused(stripe_proxy):
    """Hole 1, second half: the same clash must not wait for the renewal."""
    owner, _vehicle, bundle = _bundle_world(plan_amount=1_000)  # cheaper than the bundle: a downgrade

    with pytest.raises(BillingError) as refused:
        subscription_change_apply(
            owner=owner,
            subscription_id=bundle.pk,
            offer_code="heated_seats_premium_monthly",
            at=timezone.now(),
        )

    assert refused.value.code == "already_subscribed"
    bundle.refresh_from_db()
    assert bundle.pending_price_id is None


@pytest.mark.django_db
def test_subscribing_to_a_plan_whose_features_a_live_bundle_gives_is_refused(stripe_proxy):
    """Hole 9: the owner would pay twice for one feature."""
    owner, vehicle, _bundle = _bundle_world()
    heated_seats_plan(vehicle, code="heated_seats_basic_monthly", amount_minor=500)
    creates = _pi_creates(stripe_proxy)

    response = post(
        owner_client(owner),
        f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/",
        {"offer": "heated_seats_basic_monthly", "trial": False},
    )

    assert response.status_code == 422, response.json()
    assert response.json()["code"] == "already_entitled"
    assert _pi_creates(stripe_proxy) == creates


@pytest.mark.django_db
def test_canceling_an_incomplete_subscription_cancels_its_payment_intent_at_stripe(
    stripe_proxy, localstripe_url
):
    """Hole 2: a late 3-D Secure after the cancel charged the card with no record."""
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    started = post(
        client,
        f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/",
        {"offer": "heated_seats_monthly", "trial": False},
    )
    assert started.json()["status"] == "requires_action", started.json()
    attempt = PaymentAttempt.objects.get()

    canceled = post(client, f"/api/v1/me/subscriptions/{started.json()['subscription']['id']}/cancel/")

    assert canceled.status_code == 200, canceled.json()
    intent = _stripe(localstripe_url, "GET", f"/v1/payment_intents/{attempt.stripe_payment_intent_id}")
    assert intent["status"] == "canceled"
    with pytest.raises(urllib.error.HTTPError):  # the late authentication can no longer charge
        _authenticate(localstripe_url, attempt)
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.DECLINED
    assert attempt.error_code == "authentication_abandoned"
    assert Subscription.objects.get().status == SubscriptionStatus.CANCELED
    assert not Entitlement.objects.filter(ends_at__gt=timezone.now()).exists()


@pytest.mark.django_db
def test_a_payment_authenticated_at_stripe_is_settled_by_the_reconciler_without_the_app(
    stripe_proxy, localstripe_url
):
    """Hole 3: requires_action attempts were never reconciled."""
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    attempt = PaymentAttempt.objects.get()
    assert attempt.status == AttemptStatus.REQUIRES_ACTION
    _authenticate(localstripe_url, attempt)

    assert payments.payment_attempts_reconcile(older_than=dt.timedelta(0)) == {}  # too young to look up
    with time_machine.travel(timezone.now() + dt.timedelta(minutes=20)):
        assert payments.payment_attempts_reconcile(older_than=dt.timedelta(0)) == {"succeeded": 1}
        assert "heated_seats" in vehicle_feature_codes(vehicle)


@pytest.mark.django_db
def test_a_payment_left_at_3ds_for_a_day_is_canceled_at_stripe_by_the_reconciler(
    stripe_proxy, localstripe_url
):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    attempt = PaymentAttempt.objects.get()

    result = payments.payment_attempts_reconcile(
        older_than=dt.timedelta(0), at=timezone.now() + dt.timedelta(hours=25)
    )

    assert result == {"declined": 1}
    intent = _stripe(localstripe_url, "GET", f"/v1/payment_intents/{attempt.stripe_payment_intent_id}")
    assert intent["status"] == "canceled"
    assert Purchase.objects.get().status == "failed"


def _purchase_invoices(count: int):
    owner, vehicle = catalog_world()
    method = payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    price = vehicle.market.prices.get(offer__code="heated_seats_unlock")
    invoices = []
    for i in range(count):
        offer = OfferFactory(code=f"unlock_{i}", features=[FeatureFactory(code=f"feature_{i}")])
        item_price = PriceFactory(offer=offer, market=vehicle.market, amount_minor=price.amount_minor + i)
        purchase = Purchase.objects.create(owner=owner, vehicle=vehicle, offer=offer, price=item_price)
        invoices.append(
            invoice_create(
                owner=owner,
                vehicle=vehicle,
                kind="purchase",
                currency="EUR",
                lines=[LineSpec(offer.code, item_price.amount_minor, offer.pk)],
                at=timezone.now(),
                purchase=purchase,
            )
        )
    return invoices, method


@pytest.mark.django_db
def test_a_poisoned_row_never_stalls_the_reconciler_and_ends_in_the_dead_letter(stripe_proxy):
    """Hole 4: one row raising stopped every later run; 50 healthy rows behind it now settle."""
    invoices, method = _purchase_invoices(51)
    poisoned = payments.payment_attempt_create(invoice=invoices[0], payment_method=method)
    PaymentAttempt.objects.filter(pk=poisoned.pk).update(payment_method=None)  # charging it raises
    for invoice in invoices[1:]:  # Stripe timed out: the outcome of each is unknown
        healthy = payments.payment_attempt_create(invoice=invoice, payment_method=method)
        payments.payment_attempt_mark_unknown(attempt_id=healthy.pk, reason="timeout")

    first = payments.payment_attempts_reconcile(older_than=dt.timedelta(0))

    assert first == {"failed": 1, "succeeded": 50}
    poisoned.refresh_from_db()
    assert (poisoned.status, poisoned.reconcile_failures) == (AttemptStatus.PENDING, 1)
    assert "AttributeError" in poisoned.reconcile_error
    at = timezone.now()
    for _ in range(4):  # backed off each time, dead-lettered at the fifth failure
        at += dt.timedelta(hours=1)  # within the key window: the same key is replayed
        payments.payment_attempts_reconcile(older_than=dt.timedelta(0), at=at)
    poisoned.refresh_from_db()
    assert poisoned.dead_lettered_at is not None
    assert payments.payment_attempts_reconcile(older_than=dt.timedelta(0), at=at + dt.timedelta(days=9)) == {}
    PaymentAttempt.objects.filter(pk=poisoned.pk).update(payment_method=method)  # an operator fixes it
    assert payments.payment_attempt_retry_now(attempt_id=poisoned.pk).status == AttemptStatus.SUCCEEDED
    poisoned.refresh_from_db()
    assert (poisoned.dead_lettered_at, poisoned.reconcile_failures) == (None, 0)


def _active_plan_world():
    owner, vehicle = catalog_world()
    heated_seats_plan(vehicle, amount_minor=1_999)
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    subscription = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_monthly",
        payment_method_id=None,
        use_trial=False,
        at=timezone.now(),
    ).subscription
    return owner, vehicle, subscription


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_upgrades_with_distinct_keys_charge_once(stripe_proxy):
    """Hole 5: a check-then-act without lock or constraint charged twice."""
    owner, _vehicle, subscription = _active_plan_world()
    creates = _pi_creates(stripe_proxy)
    at = timezone.now() + dt.timedelta(days=3)

    def upgrade(_i: int) -> str:
        try:
            subscription_change_apply(
                owner=owner, subscription_id=subscription.pk, offer_code="heated_seats_premium_monthly", at=at
            )
        except BillingError as exc:
            return str(exc.code)
        return "charged"

    outcomes = run_concurrently(upgrade, threads=10)

    assert outcomes.count("charged") == 1, outcomes
    assert set(outcomes) <= {"charged", "conflict", "already_subscribed"}, outcomes
    assert _pi_creates(stripe_proxy) == creates + 1
    assert Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).count() == 1


@pytest.mark.django_db
def test_an_upgrade_left_at_3ds_for_a_day_is_canceled_at_stripe_before_the_next(
    stripe_proxy, localstripe_url
):
    owner, _vehicle, subscription = _active_plan_world()
    card = payment_method_add(
        owner=owner, stripe_payment_method_id=localstripe_card(localstripe_url, CARD_3DS), make_default=True
    )
    assert card.is_default
    now = timezone.now()
    first = subscription_change_apply(
        owner=owner, subscription_id=subscription.pk, offer_code="heated_seats_premium_monthly", at=now
    )
    assert first.status == "requires_action"
    with pytest.raises(BillingError) as waiting:
        subscription_change_apply(
            owner=owner,
            subscription_id=subscription.pk,
            offer_code="heated_seats_premium_monthly",
            at=now + dt.timedelta(hours=1),
        )
    assert waiting.value.code == "conflict"

    with time_machine.travel(now + dt.timedelta(hours=25)):
        second = subscription_change_apply(
            owner=owner,
            subscription_id=subscription.pk,
            offer_code="heated_seats_premium_monthly",
            at=now + dt.timedelta(hours=25),
        )

    assert second.status == "requires_action"
    intent = _stripe(localstripe_url, "GET", f"/v1/payment_intents/{first.attempt.stripe_payment_intent_id}")
    assert intent["status"] == "canceled"
    assert Invoice.objects.get(pk=first.invoice.pk).status == "void"


@pytest.mark.django_db
def test_three_decimal_upgrade_and_resale_refund_are_amounts_stripe_can_move(
    stripe_proxy, django_capture_on_commit_callbacks
):
    """Hole 6: proration in BHD raised inside charge and refund."""
    market = MarketFactory(code="BH", name="Bahrain", country="BH", currency="BHD", withdrawal_period_days=0)
    owner, vehicle = catalog_world(market=market)
    basic = OfferFactory(
        code="heated_seats_bhd_basic", subscription=True, features=[FeatureFactory(code="heated_seats")]
    )
    premium = OfferFactory(
        code="heated_seats_bhd_premium", subscription=True, features=[FeatureFactory(code="heated_seats")]
    )
    PriceFactory(offer=basic, market=market, amount_minor=3_770)  # BHD 3.770
    PriceFactory(offer=premium, market=market, amount_minor=5_130)
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    start = timezone.now().replace(microsecond=0)
    subscription = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_bhd_basic",
        payment_method_id=None,
        use_trial=False,
        at=start,
    ).subscription

    at = start + dt.timedelta(days=9, hours=7, seconds=13)
    with time_machine.travel(at, tick=False):
        upgraded = subscription_change_apply(
            owner=owner, subscription_id=subscription.pk, offer_code="heated_seats_bhd_premium", at=at
        )
        assert upgraded.status == "succeeded"
        assert upgraded.invoice.total_minor % 10 == 0
        code = transfer_start(owner=owner, vehicle_id=vehicle.pk, at=at).code
        with django_capture_on_commit_callbacks(execute=True):
            transfer_claim(
                new_owner=OwnerFactory(currency="BHD"),
                vin=vehicle.vin,
                code=code,
                at=at + dt.timedelta(hours=1),
            )

    refunds = list(Refund.objects.all())
    assert refunds and all(r.amount_minor % 10 == 0 for r in refunds)
    assert {r.status for r in refunds} == {RefundStatus.SUCCEEDED}
    for call in stripe_proxy.calls(method="POST"):
        if "amount" in call.form:
            assert int(call.form["amount"]) % 10 == 0, call


@pytest.mark.django_db
def test_a_resale_refund_that_fails_after_commit_does_not_fail_the_claim(
    stripe_proxy, django_capture_on_commit_callbacks
):
    """Hole 6, second half: the refund raised inside on_commit and the claim answered 500."""
    from billing.services import refunds

    owner, vehicle, _subscription = _active_plan_world()
    at = timezone.now() + dt.timedelta(days=3)
    code = transfer_start(owner=owner, vehicle_id=vehicle.pk, at=at).code

    def broken(**_kwargs):
        raise RuntimeError("database went away")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refunds, "refund_execute", broken)
        with django_capture_on_commit_callbacks(execute=True):
            transfer_claim(new_owner=OwnerFactory(), vin=vehicle.vin, code=code, at=at)

    refund = Refund.objects.get()
    assert refund.status == RefundStatus.PENDING
    assert refunds.refunds_reconcile(older_than=dt.timedelta(0)) == 1  # finished later, same key
    refund.refresh_from_db()
    assert refund.status == RefundStatus.SUCCEEDED


@pytest.mark.django_db
def test_a_plan_change_that_settles_after_the_car_was_sold_is_refunded_not_applied(
    stripe_proxy, django_capture_on_commit_callbacks
):
    """Hole 7 (and hole 1's ending): the buyer's car got the seller's paid feature."""
    owner, vehicle, subscription = _active_plan_world()
    at = timezone.now() + dt.timedelta(days=3)
    stripe_proxy.inject("drop_after_forward", path=PI)  # Stripe charged; we never heard
    outcome = subscription_change_apply(
        owner=owner, subscription_id=subscription.pk, offer_code="heated_seats_premium_monthly", at=at
    )
    assert outcome.status == "processing"
    code = transfer_start(owner=owner, vehicle_id=vehicle.pk, at=at).code
    with django_capture_on_commit_callbacks(execute=True):
        transfer_claim(new_owner=OwnerFactory(), vin=vehicle.vin, code=code, at=at)

    with django_capture_on_commit_callbacks(execute=True):
        settled = payments.payment_attempts_reconcile(
            older_than=dt.timedelta(0), at=at + dt.timedelta(minutes=5)
        )

    assert settled == {"succeeded": 1}
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.offer.code == "heated_seats_monthly"  # never applied to the ended subscription
    upgrade = PaymentAttempt.objects.get(invoice=outcome.invoice)
    refund = Refund.objects.get(payment_attempt=upgrade)
    assert (refund.amount_minor, refund.status) == (upgrade.amount_minor, RefundStatus.SUCCEEDED)
    assert refund.reason.startswith("not delivered: ")
    assert not Entitlement.objects.filter(subscription=subscription, starts_at__gte=at).exists()


@pytest.mark.django_db
def test_a_plan_change_that_settles_after_a_cancel_is_refunded_not_applied(stripe_proxy):
    owner, _vehicle, subscription = _active_plan_world()
    at = timezone.now() + dt.timedelta(days=20)  # after the withdrawal period: cancel at period end
    stripe_proxy.inject("drop_after_forward", path=PI)
    outcome = subscription_change_apply(
        owner=owner, subscription_id=subscription.pk, offer_code="heated_seats_premium_monthly", at=at
    )
    subscription_end_now(subscription=subscription, at=at)  # e.g. an operator ends it meanwhile
    payments.payment_attempts_reconcile(older_than=dt.timedelta(0), at=at + dt.timedelta(minutes=5))

    subscription.refresh_from_db()
    assert subscription.offer.code == "heated_seats_monthly"
    assert Refund.objects.get(payment_attempt__invoice=outcome.invoice).reason.startswith("not delivered")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "result",
    [
        gateway.ChargeResult(status="succeeded", payment_intent_id="pi_x", amount=None, metadata={}),
        gateway.ChargeResult(status="succeeded", payment_intent_id="pi_x", amount=Money(19_900, "EUR")),
    ],
    ids=["amount-unknown", "metadata-missing"],
)
def test_a_stripe_result_without_amount_or_our_id_is_never_recorded(stripe_proxy, result):
    """Hole 8: the check passed when the amount was unknown or the metadata missing."""
    invoices, method = _purchase_invoices(1)
    attempt = payments.payment_attempt_create(invoice=invoices[0], payment_method=method)
    PaymentAttempt.objects.filter(pk=attempt.pk).update(amount_minor=19_900)

    with pytest.raises(payments.PaymentResultMismatch):
        payments.payment_attempt_record(attempt_id=attempt.pk, result=result)

    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING
    assert not Entitlement.objects.exists()


@pytest.mark.django_db
def test_fulfilment_that_raises_after_a_charge_refunds_instead(stripe_proxy, monkeypatch):
    """Rule 1: fulfilment after a successful charge never raises; what it cannot deliver is refunded."""

    def broken(**_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(payments, "invoice_fulfil_paid", broken)
    invoices, method = _purchase_invoices(1)
    attempt = payments.payment_attempt_create(invoice=invoices[0], payment_method=method)

    charged = payments.payment_attempt_charge(attempt_id=attempt.pk)

    assert charged.status == AttemptStatus.SUCCEEDED
    refund = Refund.objects.get(payment_attempt=attempt)
    assert refund.amount_minor == attempt.amount_minor
    assert "RuntimeError" in refund.reason


@pytest.mark.django_db
def test_an_upgrade_of_a_subscription_due_for_renewal_is_refused_and_leaves_no_invoice(stripe_proxy):
    """Found by the model-based test: the upgrade answered 400 and left an open plan-change
    invoice of 0 that blocked every later plan change with 409."""
    owner, _vehicle, subscription = _active_plan_world()
    overdue = subscription.current_period_end + dt.timedelta(days=1)  # the sweep has not run yet

    with pytest.raises(BillingError) as refused:
        subscription_change_apply(
            owner=owner,
            subscription_id=subscription.pk,
            offer_code="heated_seats_premium_monthly",
            at=overdue,
        )

    assert refused.value.code == "conflict"
    assert not Invoice.objects.filter(kind=InvoiceKind.PLAN_CHANGE).exists()


@pytest.mark.django_db
def test_an_attempt_that_never_reached_stripe_first_reconciled_after_a_day_is_declined(stripe_proxy):
    """Found by the model-based test: 'not found at Stripe' was raised on every run, then the row
    was dead-lettered and the offer could not be bought again."""
    invoices, method = _purchase_invoices(1)
    stripe_proxy.inject("status_500", path=PI)  # refused before Stripe executed anything
    attempt = payments.payment_attempt_charge(
        attempt_id=payments.payment_attempt_create(invoice=invoices[0], payment_method=method).pk
    )
    assert attempt.status == AttemptStatus.UNKNOWN

    with time_machine.travel(timezone.now() + dt.timedelta(days=1, hours=1)):
        settled = payments.payment_attempts_reconcile(older_than=dt.timedelta(0))

    assert settled == {"declined": 1}
    attempt.refresh_from_db()
    assert (attempt.status, attempt.error_code) == (AttemptStatus.DECLINED, "never_reached_provider")
    assert Invoice.objects.get(pk=invoices[0].pk).status == "void"
    assert _pi_creates(stripe_proxy) == 0
