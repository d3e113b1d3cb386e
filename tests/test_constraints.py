"""Every invariant that can be a database constraint is one: violations raise at the database,
even when the ORM's validation is bypassed."""

import datetime as dt

import pytest
from django.db import DataError, IntegrityError, connection, transaction

from billing.models import Invoice, PaymentAttempt, Price, Subscription
from tests.factories import (
    MarketFactory,
    OfferFactory,
    OwnerFactory,
    OwnershipFactory,
    PriceFactory,
    VehicleFactory,
)
from vehicles.models import Ownership, Vehicle

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)


def violates(callable_):
    with pytest.raises((IntegrityError, DataError)), transaction.atomic():
        callable_()


@pytest.mark.parametrize(
    "vin", ["WVWZZZ1JZXW00000", "WVWZZZ1JZXW0000001", "WVWZZZ1JZXW00000I", "wvwzzz1jzxw000001"]
)
def test_invalid_vins_are_refused_by_the_database(vin):
    market = MarketFactory()
    violates(
        lambda: Vehicle.objects.create(
            vin=vin, brand="B", model="M", model_year=2025, market=market, software_version="1"
        )
    )


def test_one_current_owner_per_vehicle():
    ownership = OwnershipFactory()
    violates(lambda: Ownership.objects.create(vehicle=ownership.vehicle, owner=OwnerFactory(), starts_at=NOW))
    ownership.ends_at = ownership.starts_at + dt.timedelta(days=1)
    ownership.save()
    Ownership.objects.create(vehicle=ownership.vehicle, owner=OwnerFactory(), starts_at=ownership.ends_at)
    assert ownership.vehicle.ownerships.filter(ends_at__isnull=True).count() == 1


def test_ownership_period_cannot_be_empty():
    ownership = OwnershipFactory()
    violates(lambda: Ownership.objects.filter(pk=ownership.pk).update(ends_at=ownership.starts_at))


def test_currency_codes_must_be_iso_4217():
    violates(lambda: PriceFactory(currency="EUX"))
    violates(lambda: OwnerFactory(currency="ABC"))


def test_prices_cannot_be_negative_and_versions_are_unique():
    price = PriceFactory()
    violates(lambda: Price.objects.filter(pk=price.pk).update(amount_minor=-1))
    violates(
        lambda: Price.objects.create(
            offer=price.offer,
            market=price.market,
            currency="EUR",
            amount_minor=1,
            version=price.version,
            valid_from=NOW,
        )
    )


def make_subscription(vehicle=None, offer=None, status="active"):
    vehicle = vehicle or VehicleFactory()
    offer = offer or OfferFactory(subscription=True)
    price = Price.objects.filter(offer=offer, market=vehicle.market).first() or PriceFactory(
        offer=offer, market=vehicle.market
    )
    return Subscription.objects.create(
        owner=OwnerFactory(),
        vehicle=vehicle,
        offer=offer,
        price=price,
        status=status,
        billing_anchor=NOW,
        current_period_start=NOW,
        current_period_end=NOW + dt.timedelta(days=30),
    )


def test_one_live_subscription_per_vehicle_and_plan():
    live = make_subscription()
    violates(lambda: make_subscription(vehicle=live.vehicle, offer=live.offer, status="trialing"))
    Subscription.objects.filter(pk=live.pk).update(status="canceled")
    assert make_subscription(vehicle=live.vehicle, offer=live.offer).status == "active"


def make_invoice(subscription, period_start=NOW, kind="subscription_period"):
    return Invoice.objects.create(
        kind=kind,
        owner=subscription.owner,
        subscription=subscription,
        period_start=period_start,
        period_end=period_start + dt.timedelta(days=30),
        currency="EUR",
        status="open",
        total_minor=999,
    )


def test_one_invoice_per_subscription_period():
    subscription = make_subscription()
    make_invoice(subscription)
    violates(lambda: make_invoice(subscription))
    make_invoice(subscription, kind="plan_change")  # a plan change in the same period is another invoice


def test_one_live_payment_attempt_per_invoice_and_positive_amounts():
    invoice = make_invoice(make_subscription())

    def attempt(status="pending", amount=999):
        return PaymentAttempt.objects.create(
            invoice=invoice, owner=invoice.owner, amount_minor=amount, currency="EUR", status=status
        )

    attempt(status="declined")
    first = attempt()
    violates(lambda: attempt(status="unknown"))
    violates(lambda: PaymentAttempt.objects.filter(pk=first.pk).update(amount_minor=0))
    violates(lambda: Invoice.objects.filter(pk=invoice.pk).update(total_minor=-5))


def test_the_migrations_create_the_named_constraints():
    with connection.cursor() as cursor:
        names = {
            name
            for table in (
                "billing_invoice",
                "billing_paymentattempt",
                "billing_subscription",
                "vehicles_ownership",
            )
            for name in connection.introspection.get_constraints(cursor, table)
        }
    assert {
        "one_invoice_per_subscription_period",
        "one_live_attempt_per_invoice",
        "one_live_subscription_per_vehicle_and_offer",
        "one_current_owner_per_vehicle",
    } <= names
