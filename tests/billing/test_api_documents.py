"""Credit notes for every refund that returned money (withdrawal, goodwill, resale proration,
not delivered), numbered gaplessly in their own series; invoice and credit-note PDFs for the owner
only; for fleets a Factur-X e-invoice whose XML passes the EN 16931 schema."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import facturx
import pytest
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import CreditNote, CustomerTaxProfile, Invoice, PaymentAttempt, Purchase, Refund, TaxRate
from billing.services.refunds import refund_create, refund_execute, refund_prepare
from tests.billing.api_helpers import (
    add_card,
    buy,
    catalog_world,
    owner_client,
    post,
    results,
    subscribe_paid,
)
from tests.factories import OwnerFactory
from vehicles.models import Owner

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

SINCE = dt.datetime(2007, 1, 1, tzinfo=dt.UTC)


def _world(*, owner_kind: str = Owner.Kind.PERSON):
    owner, vehicle = catalog_world()
    TaxRate.objects.get_or_create(
        market=vehicle.market, category="default", valid_from=SINCE, defaults={"rate": Decimal("0.19")}
    )
    if owner_kind == Owner.Kind.FLEET:
        Owner.objects.filter(pk=owner.pk).update(kind=Owner.Kind.FLEET, is_consumer=False)
        owner.refresh_from_db()
        CustomerTaxProfile.objects.create(
            owner=owner, vat_id="DE136695976", address_line="Hafenstr. 1", postcode="20457", city="Hamburg"
        )
    client = owner_client(owner)
    add_card(client)
    return owner, vehicle, client


def test_a_credit_note_for_every_refund_kind_numbered_gaplessly(
    stripe_proxy, django_capture_on_commit_callbacks
):
    _, vehicle, client = _world()
    purchase = Purchase.objects.get(pk=buy(client, vehicle)["id"])
    # withdrawal (the owner's right, through the API)
    withdrawn = post(client, f"/api/v1/me/purchases/{purchase.pk}/withdraw/")
    assert withdrawn.status_code == 200, withdrawn.json()
    subscription = subscribe_paid(client, vehicle)
    plan_payment = PaymentAttempt.objects.get(invoice__subscription_id=subscription["id"])
    # goodwill (the admin action's service), partial
    refund_create(payment_attempt=plan_payment, amount_minor=300, reason="goodwill: app outage")
    # not delivered (what fulfilment does when it cannot deliver: prepare, then execute after commit)
    not_delivered = refund_prepare(
        payment_attempt=plan_payment, amount_minor=200, reason="not delivered: car sold"
    )
    refund_execute(refund_id=not_delivered.pk)
    # resale proration (the buyer claims the car: the seller's unused plan time is refunded)
    started = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/transfer/").json()
    with django_capture_on_commit_callbacks(execute=True):
        claimed = owner_client(OwnerFactory()).post(
            "/api/v1/me/transfers/claim/", {"vin": vehicle.vin, "code": started["code"]}, format="json"
        )
    assert claimed.status_code == 200, claimed.json()

    refunds = list(Refund.objects.order_by("created_at"))
    notes = list(CreditNote.objects.order_by("number"))
    year = timezone.now().year
    assert [n.number for n in notes] == [f"CN{year}-{i:06d}" for i in range(1, len(refunds) + 1)]
    assert len(refunds) == 4
    assert {n.refund_id for n in notes} == {r.pk for r in refunds}
    for note in notes:
        refund = note.refund
        assert note.invoice_id == refund.payment_attempt.invoice_id
        assert (note.total_minor, note.currency, note.reason) == (
            refund.amount_minor,
            refund.currency,
            refund.reason,
        )
        assert note.subtotal_minor + note.tax_minor == note.total_minor
        assert sum(line.gross_minor for line in note.lines.all()) == note.total_minor
    withdrawal = next(n for n in notes if n.invoice.purchase_id == purchase.pk)
    invoice = withdrawal.invoice
    # a full refund gives back exactly the invoice's net and VAT
    assert (withdrawal.subtotal_minor, withdrawal.tax_minor) == (invoice.subtotal_minor, invoice.tax_minor)


def test_a_refund_stripe_refuses_leaves_no_credit_note(stripe_proxy, monkeypatch):
    _, vehicle, client = _world()
    buy(client, vehicle)
    payment = PaymentAttempt.objects.get()

    def refused(**kwargs):
        raise gateway.InvalidRequest("charge already refunded", retryable=False)

    monkeypatch.setattr(gateway, "refund_create", refused)
    refund = refund_create(payment_attempt=payment, amount_minor=100, reason="goodwill")

    assert refund.status == "failed"
    assert not CreditNote.objects.exists()


def _pdf(response):
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    return response.content


def test_the_invoice_pdf_is_served_to_its_owner_and_is_a_404_for_another(stripe_proxy):
    owner, vehicle, client = _world()
    buy(client, vehicle)
    invoice = Invoice.objects.get(owner=owner)

    mine = client.get(f"/api/v1/me/invoices/{invoice.pk}/pdf/")
    as_pdf = client.get(f"/api/v1/me/invoices/{invoice.pk}/pdf/", HTTP_ACCEPT="application/pdf")
    other = owner_client(OwnerFactory()).get(
        f"/api/v1/me/invoices/{invoice.pk}/pdf/", HTTP_ACCEPT="application/pdf"
    )

    assert invoice.number.encode() in _pdf(mine) or b"/Title" in mine.content
    _pdf(as_pdf)
    assert other.status_code == 404
    assert other["Content-Type"].startswith("application/json")
    assert other.json()["code"] == "not_found"
    assert b"factur-x.xml" not in mine.content  # a consumer gets a plain PDF


def test_credit_notes_are_listed_and_their_pdf_served_to_the_owner_only(stripe_proxy):
    _, vehicle, client = _world()
    purchase = Purchase.objects.get(pk=buy(client, vehicle)["id"])
    assert post(client, f"/api/v1/me/purchases/{purchase.pk}/withdraw/").status_code == 200

    [listed] = results(client.get("/api/v1/me/credit-notes/"))
    note = CreditNote.objects.get()
    assert (listed["id"], listed["number"], listed["invoice"]) == (
        str(note.pk),
        note.number,
        str(note.invoice_id),
    )
    assert listed["total"]["amount_minor"] == 19_900
    _pdf(client.get(listed["pdf"]))
    stranger = owner_client(OwnerFactory())
    assert stranger.get(listed["pdf"]).status_code == 404
    assert results(stranger.get("/api/v1/me/credit-notes/")) == []


def test_a_fleet_gets_a_factur_x_invoice_and_credit_note_whose_xml_passes_the_schema(stripe_proxy):
    owner, vehicle, client = _world(owner_kind=Owner.Kind.FLEET)
    buy(client, vehicle)
    invoice = Invoice.objects.get(owner=owner)
    refund_create(payment_attempt=PaymentAttempt.objects.get(), amount_minor=5_000, reason="goodwill")

    invoice_pdf = _pdf(client.get(f"/api/v1/me/invoices/{invoice.pk}/pdf/"))
    note_pdf = _pdf(client.get(f"/api/v1/me/credit-notes/{CreditNote.objects.get().pk}/pdf/"))

    for pdf, type_code in ((invoice_pdf, b"380"), (note_pdf, b"381")):
        filename, xml = facturx.get_xml_from_pdf(pdf, check_xsd=False)
        assert filename == "factur-x.xml"
        assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931") is True
        assert b"<ram:TypeCode>" + type_code + b"</ram:TypeCode>" in xml
    assert invoice.number.encode() in xml  # the credit note references the invoice
