"""The operator admin: every page renders, money is formatted, money state is read-only,
changelists do a constant number of queries, and secrets never reach a page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import (
    AttemptStatus,
    Entitlement,
    EntitlementSource,
    Feature,
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    InvoiceStatus,
    Offer,
    PaymentAttempt,
    PaymentMethod,
    Price,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.services.demo_data import demo_data_seed
from billing.services.entitlements import (
    entitlement_grant_admin,
    entitlements_grant_for_purchase,
    entitlements_grant_for_subscription_period,
)
from billing.services.signing_keys import signing_key_create
from core.models import IdempotencyRecord, SigningKey
from tests.factories import (
    FeatureFactory,
    MarketFactory,
    OfferFactory,
    OwnerFactory,
    PriceFactory,
    VehicleFactory,
)
from vehicles.models import Owner, Vehicle, VehicleTransfer

pytestmark = pytest.mark.django_db

# Every model the operators need, by label; VehicleCredential is registered by its own module.
EXPECTED_MODELS = {
    "core.IdempotencyRecord",
    "core.SigningKey",
    "vehicles.Market",
    "vehicles.Capability",
    "vehicles.Owner",
    "vehicles.Vehicle",
    "vehicles.Ownership",
    "vehicles.VehicleTransfer",
    "billing.Feature",
    "billing.Offer",
    "billing.Price",
    "billing.Subscription",
    "billing.TrialUsage",
    "billing.Purchase",
    "billing.Invoice",
    "billing.InvoiceNumberSequence",
    "billing.PaymentMethod",
    "billing.PaymentAttempt",
    "billing.Refund",
    "billing.Entitlement",
}
REGISTERED = sorted(admin.site._registry, key=lambda m: m._meta.label)
ANNA_VIN = "YV4H60DL4S1012345"
RESOLD_VIN = "VF1RCB00772381904"
PAYMENT_INTENT = "pi_3AdminTest000000000001"
CLIENT_SECRET = "pi_3AdminTest000000000001_secret_DoNotShowMe"


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def admin_data(admin_user):
    """The demo seed plus one of every money record the seed does not create."""
    now = timezone.now()
    demo_data_seed(now=now)
    anna = Owner.objects.get(email="anna@example.com")
    volvo = Vehicle.objects.get(vin=ANNA_VIN)
    offer = Offer.objects.get(code="premium_audio_unlock")
    price = Price.objects.get(offer=offer, market__code="DE", version=1)
    purchase = Purchase.objects.create(
        owner=anna, vehicle=volvo, offer=offer, price=price, status=PurchaseStatus.PAID, paid_at=now
    )
    entitlements_grant_for_purchase(purchase=purchase, starts_at=now)
    InvoiceNumberSequence.objects.create(prefix="INV-2026-", last_value=1)
    invoice = Invoice.objects.create(
        number="INV-2026-000001",
        owner=anna,
        vehicle=volvo,
        purchase=purchase,
        currency="EUR",
        status=InvoiceStatus.PAID,
        subtotal_minor=41933,
        tax_minor=7967,
        total_minor=49900,
        finalized_at=now,
        paid_at=now,
    )
    InvoiceLine.objects.create(
        invoice=invoice, description="Premium Audio (unlock)", offer=offer, amount_minor=49900
    )
    method = PaymentMethod.objects.create(
        owner=anna, stripe_payment_method_id="pm_admin_test_1", brand="visa", last4="4242", is_default=True
    )
    attempt = PaymentAttempt.objects.create(
        invoice=invoice,
        owner=anna,
        payment_method=method,
        amount_minor=49900,
        currency="EUR",
        status=AttemptStatus.SUCCEEDED,
        stripe_payment_intent_id=PAYMENT_INTENT,
        client_secret=CLIENT_SECRET,
    )
    Refund.objects.create(
        payment_attempt=attempt,
        amount_minor=1000,
        currency="EUR",
        status=RefundStatus.SUCCEEDED,
        stripe_refund_id="re_admin_test_1",
        reason="goodwill",
    )
    entitlement_grant_admin(
        vehicle=volvo,
        feature=Feature.objects.get(code="acceleration_boost"),
        granted_by=admin_user,
        starts_at=now,
        ends_at=now + dt.timedelta(days=30),
        reason="Test drive weekend",
    )
    signing_key_create(published_at=now, active_from=now)
    IdempotencyRecord.objects.create(
        user=admin_user, key="idem-1", method="POST", path="/api/v1/purchases", fingerprint="f" * 64
    )
    VehicleTransfer.objects.create(
        vehicle=volvo, from_owner=anna, code_hash="h" * 64, expires_at=now + dt.timedelta(days=7)
    )
    return {"purchase": purchase, "invoice": invoice, "attempt": attempt}


def test_every_operator_model_is_registered():
    assert {m._meta.label for m in REGISTERED} >= EXPECTED_MODELS


@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_changelist_add_and_change_pages_render(admin_client, admin_data, model):
    model_admin = admin.site._registry[model]
    response = admin_client.get(admin_url(model, "changelist"))
    assert response.status_code == 200
    if model._meta.label in EXPECTED_MODELS:
        assert response.context["cl"].result_count >= 1, "the page shows data"

    # Every sortable column at once, and the search box (catches bad lookups on UUIDs etc.).
    columns = ".".join(str(i) for i in range(1, len(model_admin.list_display) + 1))
    assert admin_client.get(admin_url(model, "changelist"), {"o": columns}).status_code == 200
    if model_admin.search_fields:
        assert admin_client.get(admin_url(model, "changelist"), {"q": "example 1a2b"}).status_code == 200

    if model_admin.has_add_permission(response.wsgi_request):
        assert admin_client.get(admin_url(model, "add")).status_code == 200
    obj = model.objects.first()
    if obj is not None:
        assert admin_client.get(admin_url(model, "change", obj.pk)).status_code == 200


def test_money_is_formatted_in_lists(admin_client, admin_data):
    prices = admin_client.get(admin_url(Price, "changelist"), {"q": "heated_seats_monthly"}).content.decode()
    assert "EUR 9.99" in prices
    assert "USD 9.99" in prices
    assert "JPY 1,200" in prices
    assert ">999<" not in prices and ">1200<" not in prices

    subscriptions = admin_client.get(admin_url(Subscription, "changelist")).content.decode()
    assert "JPY 4,400" in subscriptions  # Kenji's highway assist at the current (v2) price

    invoices = admin_client.get(admin_url(Invoice, "changelist")).content.decode()
    assert "EUR 499.00" in invoices and "EUR 79.67" in invoices
    lines = admin_client.get(admin_url(Invoice, "change", admin_data["invoice"].pk)).content.decode()
    assert lines.count("EUR 499.00") >= 2  # total, the line and the attempt

    refunds = admin_client.get(admin_url(Refund, "changelist")).content.decode()
    assert "EUR 10.00" in refunds and PAYMENT_INTENT in refunds


def test_signing_key_pages_never_show_the_private_key(admin_client, admin_data):
    key = SigningKey.objects.get()
    secret = key.private_jwk["d"]
    for url in (admin_url(SigningKey, "changelist"), admin_url(SigningKey, "change", key.pk)):
        content = admin_client.get(url).content.decode()
        assert secret not in content
        assert "private_jwk" not in content
    assert key.public_jwk["x"] in admin_client.get(admin_url(SigningKey, "change", key.pk)).content.decode()


def test_payment_attempt_page_hides_the_client_secret(admin_client, admin_data):
    content = admin_client.get(admin_url(PaymentAttempt, "change", admin_data["attempt"].pk)).content.decode()
    assert PAYMENT_INTENT in content
    assert CLIENT_SECRET not in content


@pytest.mark.parametrize("model", [Subscription, Purchase, Invoice, PaymentAttempt, Refund, Entitlement])
def test_money_state_is_read_only(admin_client, admin_data, model):
    obj = model.objects.first()
    content = admin_client.get(admin_url(model, "change", obj.pk)).content.decode()
    assert 'name="_save"' not in content
    assert admin_client.get(admin_url(model, "delete", obj.pk)).status_code == 403
    response = admin_client.post(admin_url(model, "change", obj.pk), {"status": "canceled"})
    assert response.status_code == 403


def test_price_amount_is_immutable_after_creation(admin_client, admin_data):
    price = Price.objects.get(offer__code="heated_seats_monthly", market__code="DE", version=1)
    url = admin_url(Price, "change", price.pk)
    content = admin_client.get(url).content.decode()
    assert 'name="amount_minor"' not in content
    assert 'name="valid_from_0"' in content  # the rest stays editable
    admin_client.post(
        url,
        {"amount_minor": "1", "currency": "USD", "valid_from_0": "2025-01-01", "valid_from_1": "00:00:00"},
    )
    price.refresh_from_db()
    assert (price.amount_minor, price.currency) == (999, "EUR")


def test_new_price_version_is_added_on_the_offer_page(admin_client, admin_data):
    offer = Offer.objects.get(code="winter_bundle")
    url = admin_url(Offer, "change", offer.pk)
    page = admin_client.get(url)
    data = {
        "code": offer.code,
        "name": offer.name,
        "kind": offer.kind,
        "interval": offer.interval,
        "trial_days": offer.trial_days,
        "tier": offer.tier,
        "dunning_retry_days": offer.dunning_retry_days,
        "unpaid_cancel_days": offer.unpaid_cancel_days,
        "transfer_policy": offer.transfer_policy,
        "dispute_policy": offer.dispute_policy,
        "included_months_with_new_car": 0,
        "is_active": "on",
        "features": [f.pk for f in offer.features.all()],
    }
    history, new = (inline.formset for inline in page.context["inline_admin_formsets"])
    for formset in (history, new):
        data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
    de = offer.prices.get(market__code="DE", version=1).market
    data.update(
        {
            f"{new.prefix}-TOTAL_FORMS": 1,
            f"{new.prefix}-0-market": de.pk,
            f"{new.prefix}-0-currency": "EUR",
            f"{new.prefix}-0-amount_minor": 1699,
            f"{new.prefix}-0-version": 2,
            f"{new.prefix}-0-valid_from_0": "2027-01-01",
            f"{new.prefix}-0-valid_from_1": "00:00:00",
        }
    )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert offer.prices.get(market=de, version=2).amount_minor == 1699
    assert offer.prices.get(market=de, version=1).amount_minor == 1499


def test_price_currency_must_match_the_market(admin_client):
    de = MarketFactory()
    offer = OfferFactory()
    response = admin_client.post(
        admin_url(Price, "add"),
        {
            "offer": offer.pk,
            "market": de.pk,
            "currency": "USD",
            "amount_minor": 999,
            "version": 1,
            "valid_from_0": "2026-01-01",
            "valid_from_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "sells in EUR" in response.content.decode()
    assert not Price.objects.exists()


def test_vehicle_page_shows_ownership_history_and_credential_actions(admin_client, admin_data):
    vehicle = Vehicle.objects.get(vin=RESOLD_VIN)
    content = admin_client.get(admin_url(Vehicle, "change", vehicle.pk)).content.decode()
    assert "Anna Schmidt" in content and "Nordfleet Logistics GmbH" in content
    changelist = admin_client.get(admin_url(Vehicle, "changelist")).content.decode()
    assert "issue_vehicle_credential" in changelist and "revoke_vehicle_credentials" in changelist
    assert "Nordfleet Logistics GmbH" in changelist  # current owner column


def test_search_by_owner_email_invoice_number_and_stripe_id(admin_client, admin_data):
    vehicles = admin_client.get(admin_url(Vehicle, "changelist"), {"q": "anna@example.com"})
    assert {v.vin for v in vehicles.context["cl"].result_list} == {ANNA_VIN, RESOLD_VIN}
    invoices = admin_client.get(admin_url(Invoice, "changelist"), {"q": "INV-2026-000001"})
    assert list(invoices.context["cl"].result_list) == [admin_data["invoice"]]
    attempts = admin_client.get(admin_url(PaymentAttempt, "changelist"), {"q": PAYMENT_INTENT})
    assert list(attempts.context["cl"].result_list) == [admin_data["attempt"]]
    by_pi = admin_client.get(admin_url(Invoice, "changelist"), {"q": PAYMENT_INTENT})
    assert list(by_pi.context["cl"].result_list) == [admin_data["invoice"]]
    subscription = Subscription.objects.first()
    found = admin_client.get(admin_url(Subscription, "changelist"), {"q": str(subscription.id)[:8]})
    assert subscription in found.context["cl"].result_list


def test_entitlements_show_their_source(admin_client, admin_data):
    content = admin_client.get(admin_url(Entitlement, "changelist")).content.decode()
    subscription = Subscription.objects.first()
    assert admin_url(Subscription, "change", subscription.pk) in content
    assert admin_url(Purchase, "change", admin_data["purchase"].pk) in content
    assert "Included: " in content and "premium_connectivity_monthly" in content
    assert "Granted by admin: Test drive weekend" in content


def _grant_form(vehicle, feature, **extra) -> dict:
    return {
        "vehicle": str(vehicle.pk),
        "feature": feature.pk,
        "starts_at_0": "2026-12-01",
        "starts_at_1": "00:00:00",
        "ends_at_0": "2026-12-31",
        "ends_at_1": "00:00:00",
        "reason": "Goodwill after a service visit",
        **extra,
    }


def test_grant_form_calls_the_grant_service(admin_client, admin_user):
    vehicle = VehicleFactory()
    feature = FeatureFactory(code="heated_seats")
    assert admin_client.get(admin_url(Entitlement, "add")).status_code == 200

    response = admin_client.post(admin_url(Entitlement, "add"), _grant_form(vehicle, feature))

    grant = Entitlement.objects.get()
    assert response.status_code == 302
    assert response["Location"] == admin_url(Entitlement, "change", grant.pk)
    assert (grant.vehicle, grant.feature, grant.source) == (vehicle, feature, EntitlementSource.GRANT)
    assert grant.granted_by == admin_user
    assert grant.reason == "Goodwill after a service visit"
    assert grant.starts_at == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert grant.ends_at == dt.datetime(2026, 12, 31, tzinfo=dt.UTC)


def test_grant_form_shows_the_service_error(admin_client):
    vehicle = VehicleFactory()
    feature = FeatureFactory()
    response = admin_client.post(
        admin_url(Entitlement, "add"), _grant_form(vehicle, feature, ends_at_0="2026-11-01")
    )
    assert response.status_code == 200
    assert "must end after it starts" in response.content.decode()
    assert not Entitlement.objects.exists()


def test_grant_form_vehicle_autocomplete_finds_by_vin(admin_client):
    vehicle = VehicleFactory()
    response = admin_client.get(
        reverse("admin:autocomplete"),
        {
            "term": vehicle.vin[:10],
            "app_label": "billing",
            "model_name": "entitlement",
            "field_name": "vehicle",
        },
    )
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [str(vehicle.pk)]


# --- changelists do not grow with their rows ------------------------------------------------------


def _prices(n: int) -> None:
    offer = OfferFactory()
    for version in range(1, n + 1):
        PriceFactory(offer=offer, version=version)


def _subscriptions(n: int) -> list[Subscription]:
    market = MarketFactory()
    offer = OfferFactory(subscription=True)
    price = PriceFactory(offer=offer, market=market)
    now = timezone.now()
    created = []
    for _ in range(n):
        owner = OwnerFactory()
        created.append(
            Subscription.objects.create(
                owner=owner,
                vehicle=VehicleFactory(market=market, owner=owner),
                offer=offer,
                price=price,
                status=SubscriptionStatus.ACTIVE,
                billing_anchor=now,
                current_period_start=now,
                current_period_end=now + dt.timedelta(days=30),
            )
        )
    return created


def _entitlements(n: int, granted_by) -> None:
    """n subscription-period rows and n comp grants (their source columns follow relations)."""
    for subscription in _subscriptions(n):
        entitlements_grant_for_subscription_period(
            subscription=subscription,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
        )
        entitlement_grant_admin(
            vehicle=subscription.vehicle,
            feature=FeatureFactory(),
            granted_by=granted_by,
            starts_at=subscription.current_period_start,
            ends_at=None,
            reason="load test",
        )


@pytest.mark.parametrize("model", [Price, Subscription, Entitlement], ids=lambda m: m.__name__)
def test_changelist_queries_do_not_grow_with_rows(
    admin_client, admin_user, django_assert_max_num_queries, model
):
    def make(n: int) -> None:
        if model is Price:
            _prices(n)
        elif model is Subscription:
            _subscriptions(n)
        else:
            _entitlements(n, admin_user)

    url = admin_url(model, "changelist")
    make(3)
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(url).status_code == 200
    make(27)
    # Filter sidebars (e.g. one choice per offer or feature) list rows but in one query each.
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = admin_client.get(url)
    assert response.context["cl"].result_count >= 30
