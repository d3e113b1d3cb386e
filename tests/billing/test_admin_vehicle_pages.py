"""One page per question: the vehicle page (owner, rights now, subscriptions, purchases,
invoices, payments and refunds) and the owner page (cars, cards, open invoices, lifetime paid and
refunded), read-only, in a number of queries that does not grow with the history."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import (
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    Offer,
    PaymentAttempt,
    PaymentMethod,
    Price,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from billing.services.demo_data import demo_data_seed
from vehicles.models import Market, Owner, Vehicle

pytestmark = pytest.mark.django_db

ANNA_VIN = "YV4H60DL4S1012345"


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def demo():
    demo_data_seed(now=timezone.now())
    return Vehicle.objects.get(vin=ANNA_VIN), Owner.objects.get(email="anna@example.com")


def _history(vehicle: Vehicle, owner: Owner, n: int, *, start: int = 0) -> None:
    """n paid purchase invoices on the car, each with a payment partly refunded."""
    offer = Offer.objects.get(code="premium_audio_unlock")
    price = Price.objects.get(offer=offer, market__code="DE", version=1)
    now = timezone.now()
    for index in range(start, start + n):
        purchase = Purchase.objects.create(
            owner=owner,
            vehicle=vehicle,
            offer=offer,
            price=price,
            status=PurchaseStatus.REFUNDED,
            paid_at=now,
        )
        invoice = Invoice.objects.create(
            number=f"INV-T-{index:06d}",
            kind="purchase",
            owner=owner,
            vehicle=vehicle,
            purchase=purchase,
            currency="EUR",
            status=InvoiceStatus.OPEN if index % 2 else InvoiceStatus.PAID,
            total_minor=49900,
        )
        attempt = PaymentAttempt.objects.create(
            invoice=invoice, owner=owner, amount_minor=49900, currency="EUR", status=AttemptStatus.SUCCEEDED
        )
        Refund.objects.create(
            payment_attempt=attempt, amount_minor=1000, currency="EUR", status=RefundStatus.SUCCEEDED
        )
        PaymentMethod.objects.create(
            owner=owner, stripe_payment_method_id=f"pm_t_{index}", brand="visa", last4=f"{index:04d}"[-4:]
        )


def test_vehicle_page_answers_what_the_car_has_and_what_was_paid(admin_client, demo):
    vehicle, owner = demo
    _history(vehicle, owner, 1)
    page = admin_client.get(url(Vehicle, "change", vehicle.pk)).content.decode()
    assert "Anna Schmidt" in page and "anna@example.com" in page  # current owner
    assert "May use now" in page
    for feature in ("adas_auto_park", "adas_highway_assist", "adas_lane_change", "heated_seats"):
        assert feature in page
    assert "subscription" in page and "adas_plus_bundle" in page  # the source, the subscription inline
    assert "EUR 49.00" in page  # the bundle's price, formatted
    assert "INV-T-000000" in page and "EUR 499.00" in page  # invoice and payment
    assert "EUR 10.00 (partly)" in page  # refunded of the payment, and the refund itself
    assert 'name="vin"' not in page  # the VIN cannot be edited by accident
    assert " object (" not in page
    request = RequestFactory().get("/")
    request.user = get_user_model().objects.get(username="admin")
    actions = admin.site._registry[Vehicle].get_actions(request)
    assert {"start_vehicle_transfer", "grant_included_offers", "issue_vehicle_credential"} <= set(actions)


def test_owner_page_shows_cars_cards_open_invoices_and_lifetime_money(admin_client, demo):
    vehicle, owner = demo
    _history(vehicle, owner, 2)
    page = admin_client.get(url(Owner, "change", owner.pk)).content.decode()
    assert ANNA_VIN in page  # cars
    assert "visa" in page and "0001" in page  # cards
    assert "open invoices" in page.lower() and "INV-T-000001" in page
    assert "EUR 998.00" in page and "EUR 20.00" in page and "EUR 978.00" in page  # paid, refunded, net
    assert 'name="user"' not in page


def test_payment_state_reads_refunded(admin_client, demo):
    vehicle, owner = demo
    _history(vehicle, owner, 1)
    attempt = PaymentAttempt.objects.get()
    Refund.objects.create(
        payment_attempt=attempt, amount_minor=48900, currency="EUR", status=RefundStatus.SUCCEEDED
    )
    listing = admin_client.get(url(PaymentAttempt, "changelist")).content.decode()
    assert "EUR 499.00 (in full)" in listing and "Refunded" in listing
    page = admin_client.get(url(PaymentAttempt, "change", attempt.pk)).content.decode()
    assert "Payment EUR 499.00 (succeeded)" in page  # a readable title, not "PaymentAttempt object"


@pytest.mark.parametrize("model", [Vehicle, Owner, Market, Offer, Price], ids=lambda m: m.__name__)
def test_what_holds_rights_or_money_cannot_be_deleted(admin_client, demo, model):
    obj = model.objects.first()
    assert admin_client.get(url(model, "delete", obj.pk)).status_code == 403


def test_every_registered_model_has_a_readable_title(demo):
    vehicle, owner = demo
    _history(vehicle, owner, 1)
    for model in admin.site._registry:
        obj = model.objects.first()
        if obj is not None:
            assert f"{model.__name__} object" not in str(obj), model


@pytest.mark.parametrize(
    "page",
    [
        lambda v, o: url(Vehicle, "change", v.pk),
        lambda v, o: url(Owner, "change", o.pk),
        lambda v, o: url(Vehicle, "changelist"),
        lambda v, o: url(PaymentAttempt, "changelist"),
        lambda v, o: url(Refund, "changelist"),
        lambda v, o: url(Invoice, "changelist"),
    ],
    ids=["vehicle", "owner", "vehicles", "payments", "refunds", "invoices"],
)
def test_pages_take_constant_queries(admin_client, demo, page, django_assert_max_num_queries):
    vehicle, owner = demo
    _history(vehicle, owner, 3)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(page(vehicle, owner)).status_code == 200
    _history(vehicle, owner, 27, start=3)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert admin_client.get(page(vehicle, owner)).status_code == 200
