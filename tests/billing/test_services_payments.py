"""Charging exactly once: crashes between steps, replays, concurrent recorders, the reconciler."""

import datetime as dt

import pytest
import time_machine

from billing.gateways import stripe as gateway
from billing.models import AttemptStatus, Entitlement, Invoice, PaymentAttempt, Purchase
from billing.services import payments
from billing.services.checkout import invoice_charge
from billing.services.customers import owner_ensure_stripe_customer, payment_method_add
from billing.services.invoices import LineSpec, invoice_create
from core.money import Money
from tests.billing.api_helpers import catalog_world
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.stripe]
PI_CREATE = "/v1/payment_intents"


def open_purchase_invoice():
    """A committed purchase invoice for the heated-seats unlock, and the owner's saved card."""
    owner, vehicle = catalog_world()
    method = payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    price = vehicle.market.prices.get(offer__code="heated_seats_unlock")
    offer = price.offer
    purchase = Purchase.objects.create(owner=owner, vehicle=vehicle, offer=offer, price=price)
    invoice = invoice_create(
        owner=owner,
        vehicle=vehicle,
        kind="purchase",
        currency="EUR",
        lines=[LineSpec("Heated seats", price.amount_minor, offer.pk)],
        at=dt.datetime.now(dt.UTC),
        purchase=purchase,
    )
    return invoice, method


def reconcile_now():
    return payments.payment_attempts_reconcile(older_than=dt.timedelta(0))


def assert_paid_once(invoice, stripe_proxy):
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert PaymentAttempt.objects.get(invoice=invoice).status == AttemptStatus.SUCCEEDED
    assert Entitlement.objects.filter(purchase=invoice.purchase).count() == 1
    created = [c for c in stripe_proxy.calls(method="POST", path=PI_CREATE) if c.reached_upstream]
    assert len(created) == 1, created


@pytest.mark.django_db
def test_crash_after_commit_before_the_call_is_charged_by_the_reconciler(stripe_proxy):
    invoice, method = open_purchase_invoice()
    payments.payment_attempt_create(invoice=invoice, payment_method=method)  # ...then the process dies

    assert reconcile_now() == {"succeeded": 1}
    assert reconcile_now() == {}
    assert_paid_once(invoice, stripe_proxy)


@pytest.mark.django_db
def test_crash_after_stripe_succeeded_before_recording_replays_the_same_key(stripe_proxy):
    invoice, method = open_purchase_invoice()
    attempt = payments.payment_attempt_create(invoice=invoice, payment_method=method)
    gateway.payment_intent_create(  # Stripe charged, our process died before step 3
        amount=Money(attempt.amount_minor, "EUR"),
        customer_id=owner_ensure_stripe_customer(owner=attempt.owner),
        payment_method_id=method.stripe_payment_method_id,
        idempotency_key=attempt.idempotency_key,
        metadata={"payment_attempt_id": str(attempt.pk), "invoice_id": str(invoice.pk)},
    )

    assert reconcile_now() == {"succeeded": 1}
    assert_paid_once(invoice, stripe_proxy)
    keys = {c.idempotency_key for c in stripe_proxy.calls(method="POST", path=PI_CREATE)}
    assert keys == {attempt.idempotency_key}


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["status_500", "drop_after_forward", "status_429"])
def test_unknown_outcome_is_never_a_failure_and_settles_once(stripe_proxy, fault):
    invoice, method = open_purchase_invoice()
    stripe_proxy.inject(fault, path=PI_CREATE)

    status, attempt = invoice_charge(invoice=invoice, payment_method=method)

    assert (status, attempt.status) == ("processing", AttemptStatus.UNKNOWN)
    assert not Entitlement.objects.exists()
    with pytest.raises(Exception, match="already in progress"):  # one live attempt per invoice
        payments.payment_attempt_create(invoice=invoice, payment_method=method)
    assert reconcile_now() == {"succeeded": 1}
    assert_paid_once(invoice, stripe_proxy)


@pytest.mark.django_db
def test_recording_the_same_outcome_twice_fulfils_once(stripe_proxy):
    invoice, method = open_purchase_invoice()
    status, attempt = invoice_charge(invoice=invoice, payment_method=method)
    result = gateway.payment_intent_retrieve(payment_intent_id=attempt.stripe_payment_intent_id)

    for _ in range(3):
        payments.payment_attempt_record(attempt_id=attempt.pk, result=result)

    assert status == "succeeded"
    assert_paid_once(invoice, stripe_proxy)


@pytest.mark.django_db
def test_result_for_another_amount_is_not_fulfilled(stripe_proxy):
    invoice, method = open_purchase_invoice()
    attempt = payments.payment_attempt_create(invoice=invoice, payment_method=method)
    forged = gateway.ChargeResult(status="succeeded", payment_intent_id="pi_x", amount=Money(1, "EUR"))

    with pytest.raises(payments.PaymentResultMismatch):
        payments.payment_attempt_record(attempt_id=attempt.pk, result=forged)

    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING
    assert Invoice.objects.get(pk=invoice.pk).status == "open"
    assert not Entitlement.objects.exists()


@pytest.mark.django_db
def test_after_24_hours_the_reconciler_looks_up_and_never_recreates(stripe_proxy):
    invoice, method = open_purchase_invoice()
    stripe_proxy.inject("drop_after_forward", path=PI_CREATE)
    invoice_charge(invoice=invoice, payment_method=method)
    creates_before = len(stripe_proxy.calls(method="POST", path=PI_CREATE))

    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(hours=30)):
        assert reconcile_now() == {"succeeded": 1}

    assert len(stripe_proxy.calls(method="POST", path=PI_CREATE)) == creates_before
    assert stripe_proxy.calls(method="GET", path=PI_CREATE)  # looked up by metadata
    assert_paid_once(invoice, stripe_proxy)


@pytest.mark.django_db(transaction=True)
def test_concurrent_reconcilers_charge_each_attempt_once(stripe_proxy):
    invoices = []
    for _ in range(4):
        invoice, method = open_purchase_invoice()
        payments.payment_attempt_create(invoice=invoice, payment_method=method)
        invoices.append(invoice)
    run_concurrently(lambda _: reconcile_now(), threads=4)

    assert Invoice.objects.filter(status="paid").count() == 4
    assert PaymentAttempt.objects.filter(status="succeeded").count() == 4
    upstream = [c for c in stripe_proxy.calls(method="POST", path=PI_CREATE) if c.reached_upstream]
    assert len(upstream) == 4
    assert len({c.idempotency_key for c in upstream}) == 4
