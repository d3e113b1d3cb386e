"""The revenue dashboard: each figure against the demo data, revenue splits, currencies kept
apart, CSV, access, and a number of queries that does not grow with the data."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Offer,
    PaymentAttempt,
    Price,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.services.demo_data import demo_data_seed
from reports import selectors
from tests.factories import VehicleFactory
from vehicles.models import Owner, Ownership, Vehicle

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
# The demo's live subscriptions (billing/services/demo_data.py SUBSCRIPTIONS) at NOW:
# EUR: 9.99 + 49.00 + 11.99 + 4.99 monthly and 149.00 yearly (a twelfth: 12.4166...)
#      = 7597 + 14900 / 12 = 8838.67 -> 8839 minor units, rounded once.
# JPY: 4,400 (Highway Assist, the April 2026 price) + 1,200 (heated seats).
DEMO_MRR = {"EUR": 8839, "JPY": 5600}


@pytest.fixture
def demo():
    with time_machine.travel(NOW, tick=False):
        demo_data_seed(now=NOW)
        yield


def _moves(movements, currency):
    return {
        f"{m.month:%Y-%m}": {k: v for k, v in m.moves.items() if v}
        for m in movements
        if m.currency == currency and any(m.moves.values())
    }


def test_mrr_and_movements_of_the_demo(demo):
    assert selectors.mrr_at(at=NOW) == DEMO_MRR
    first = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    movements = selectors.mrr_movements(start=first, end=NOW, months=12)
    # Anna's Volvo: ADAS Plus from 20 May (new), heated seats after their trial in August (expansion);
    # Kenji's Nissan: heated seats after the trial in December 2025; his Toyota: Highway Assist in July.
    assert _moves(movements, "EUR") == {"2026-05": {"new": 4900}, "2026-08": {"expansion": 999}}
    assert _moves(movements, "JPY") == {"2025-12": {"new": 1200}, "2026-07": {"new": 4400}}
    last = {m.currency: m for m in movements if m.month == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}
    assert {c: m.end_minor for c, m in last.items()} == DEMO_MRR
    for m in movements:  # the movements explain the change, exactly
        moves = m.moves
        assert m.end_minor - m.start_minor == (
            moves["new"] + moves["reactivation"] + moves["expansion"] - moves["contraction"] - moves["churn"]
        )


def test_churn_and_reactivation_per_car(demo):
    renault = Subscription.objects.get(vehicle__vin="VF1RCB00772381904")
    Subscription.objects.filter(pk=renault.pk).update(
        status=SubscriptionStatus.CANCELED, ended_at=dt.datetime(2026, 3, 15, tzinfo=dt.UTC)
    )
    again = Subscription.objects.create(
        owner=renault.owner,
        vehicle=renault.vehicle,
        offer=renault.offer,
        price=renault.price,
        status=SubscriptionStatus.ACTIVE,
        billing_anchor=dt.datetime(2026, 6, 2, tzinfo=dt.UTC),
        current_period_start=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
        current_period_end=dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
    )
    Subscription.objects.filter(pk=again.pk).update(created_at=dt.datetime(2026, 6, 2, tzinfo=dt.UTC))
    movements = selectors.mrr_movements(start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), end=NOW, months=11)
    moves = _moves(movements, "EUR")
    assert moves["2026-03"] == {"churn": 499}
    assert moves["2026-06"] == {"reactivation": 499}


def test_active_subscriptions_trials_and_attach_rates_of_the_demo(demo):
    assert selectors.active_subscriptions(at=NOW) == {"active": 7}
    trials = selectors.trial_conversion(at=NOW)
    assert (trials.ended, trials.converted, trials.percent) == (3, 3, "100.0 %")
    rates = {(a.model, a.feature): (a.cars_using, a.cars, a.percent) for a in selectors.attach_rates(at=NOW)}
    full = (1, 1, "100.0 %")
    assert rates == {
        ("EX90 Twin Motor Performance", "adas_auto_park"): full,
        ("EX90 Twin Motor Performance", "adas_highway_assist"): full,
        ("EX90 Twin Motor Performance", "adas_lane_change"): full,
        ("EX90 Twin Motor Performance", "heated_seats"): full,
        ("bZ4X Z", "adas_highway_assist"): full,
        ("Ariya B6", "heated_seats"): full,
        ("eSprinter 113 kWh", "charging_flat_rate"): full,
        ("eSprinter 113 kWh", "plug_and_charge"): full,
        ("eSprinter 113 kWh", "service_package_basic"): full,
        ("Megane E-Tech EV60", "live_traffic"): full,
        ("Mustang Mach-E Premium AWD", "live_traffic"): full,
        ("Mustang Mach-E Premium AWD", "premium_connectivity"): full,
        ("Mustang Mach-E Premium AWD", "streaming"): full,
    }
    # Two more Ariyas without heated seats: one car in three (333 per mille, rounded once).
    nissan = Vehicle.objects.get(model="Ariya B6")
    VehicleFactory.create_batch(2, model="Ariya B6", market=nissan.market)
    rate = next(a for a in selectors.attach_rates(at=NOW) if a.model == "Ariya B6")
    assert (rate.cars_using, rate.cars, rate.per_mille, rate.percent) == (1, 3, 333, "33.3 %")


def _paid_invoice(*, vin: str, offer_code: str, net_minor: int, gross_minor: int) -> Invoice:
    vehicle = Vehicle.objects.select_related("market").get(vin=vin)
    owner = Ownership.objects.get(vehicle=vehicle, ends_at__isnull=True).owner
    offer = Offer.objects.get(code=offer_code)
    invoice = Invoice.objects.create(
        kind="purchase",
        owner=owner,
        vehicle=vehicle,
        currency=vehicle.market.currency,
        status=InvoiceStatus.PAID,
        subtotal_minor=net_minor,
        tax_minor=gross_minor - net_minor,
        total_minor=gross_minor,
        paid_at=NOW,
    )
    InvoiceLine.objects.create(
        invoice=invoice, description=offer.name, offer=offer, amount_minor=gross_minor, net_minor=net_minor
    )
    return invoice


def test_revenue_split_by_feature_category_market_model_and_refunds(demo):
    # ADAS Plus (three features) paid in Germany; heated seats paid in Japan.
    bundle = _paid_invoice(
        vin="YV4H60DL4S1012345", offer_code="adas_plus_bundle", net_minor=4118, gross_minor=4900
    )
    _paid_invoice(
        vin="SJNFAAZE6RU302586", offer_code="heated_seats_monthly", net_minor=1091, gross_minor=1200
    )
    attempt = PaymentAttempt.objects.create(
        invoice=bundle, owner=bundle.owner, amount_minor=4900, currency="EUR", status="succeeded"
    )
    Refund.objects.create(
        payment_attempt=attempt, amount_minor=1000, currency="EUR", status=RefundStatus.SUCCEEDED
    )
    Refund.objects.create(
        payment_attempt=attempt, amount_minor=500, currency="EUR", status=RefundStatus.FAILED
    )

    by_feature, by_category = selectors.revenue_by_feature_and_category()
    assert by_feature == {  # 4118 split in three: the parts add up to the line
        ("EUR", "adas_auto_park"): 1373,
        ("EUR", "adas_highway_assist"): 1373,
        ("EUR", "adas_lane_change"): 1372,
        ("JPY", "heated_seats"): 1091,
    }
    assert by_category == {("EUR", "driver_assistance"): 4118, ("JPY", "comfort"): 1091}
    assert selectors.revenue_by("market") == {("EUR", "DE"): 4118, ("JPY", "JP"): 1091}
    assert selectors.revenue_by("model") == {
        ("EUR", "EX90 Twin Motor Performance"): 4118,
        ("JPY", "Ariya B6"): 1091,
    }
    assert [(r.currency, r.count, r.refunded_minor, r.paid_minor) for r in selectors.refunds()] == [
        ("EUR", 1, 1000, 4900),
        ("JPY", 0, 0, 1200),
    ]


def _fleet(n: int) -> None:
    """n more cars, each with a paying subscription, an entitlement-free history and a paid invoice."""
    offer = Offer.objects.get(code="heated_seats_monthly")
    price = Price.objects.filter(offer=offer, market__code="DE").order_by("-version").first()
    owner = Owner.objects.get(email="anna@example.com")
    for _ in range(n):
        vehicle = VehicleFactory(market=price.market, model="Fleet model")
        Ownership.objects.create(vehicle=vehicle, owner=owner, starts_at=NOW - dt.timedelta(days=90))
        Subscription.objects.create(
            owner=owner,
            vehicle=vehicle,
            offer=offer,
            price=price,
            status=SubscriptionStatus.ACTIVE,
            billing_anchor=NOW - dt.timedelta(days=60),
            current_period_start=NOW - dt.timedelta(days=5),
            current_period_end=NOW + dt.timedelta(days=25),
        )
        _paid_invoice(vin=vehicle.vin, offer_code=offer.code, net_minor=839, gross_minor=999)


def _dashboard_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("reports-revenue")).status_code == 200
    return len(queries)


def test_dashboard_page_csv_and_constant_queries(demo, admin_client):
    with time_machine.travel(NOW, tick=False):
        page = admin_client.get(reverse("reports-revenue")).content.decode()
        assert 'data-mrr="EUR">EUR 88.39<' in page
        assert 'data-mrr="JPY">JPY 5,600<' in page
        assert page.count("<svg") >= 5 and "cdn" not in page.lower()
        index = admin_client.get(reverse("admin:index")).content.decode()
        assert reverse("reports-revenue") in index and "Revenue dashboard" in index

        rows = list(
            csv.reader(io.StringIO(admin_client.get(reverse("reports-revenue-csv")).content.decode()))
        )
        assert rows[0] == ["section", "currency", "key", "value", "shown"]
        assert ["mrr", "EUR", "now", "8839", "EUR 88.39"] in rows
        assert ["mrr_new", "JPY", "2026-07", "4400", "JPY 4,400"] in rows
        assert ["trials_converted", "", "", "3", "100.0 %"] in rows

        _fleet(3)
        few = _dashboard_queries(admin_client)
        _fleet(27)
        many = _dashboard_queries(admin_client)
    assert few == many, f"{few} queries with 3 more cars, {many} with 30"


def test_dashboard_needs_staff(demo, client, django_user_model):
    assert client.get(reverse("reports-revenue")).status_code == 302  # to the admin login
    staff = django_user_model.objects.create_user("viewer", password="pw-123456789", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("reports-revenue")).status_code == 403
    assert client.get(reverse("reports-revenue-csv")).status_code == 403
