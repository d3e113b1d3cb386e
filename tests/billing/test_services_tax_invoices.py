"""Invoices carry their VAT: rates from data per market, category and date; gross for consumers,
net for fleets that ask for it; reverse charge across borders; a Factur-X XML that passes the
EN 16931 schema."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import facturx
import pytest

from billing.models import CustomerTaxProfile, Feature, InvoiceKind, TaxRate
from billing.services.documents import cii_xml, invoice_document, invoice_pdf
from billing.services.invoices import LineSpec, invoice_create
from tests.factories import FeatureFactory, MarketFactory, OfferFactory, OwnerFactory, VehicleFactory
from vehicles.models import Owner

pytestmark = pytest.mark.django_db

AT = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)
SINCE = dt.datetime(2007, 1, 1, tzinfo=dt.UTC)


def rate(market, value: str, *, category: str = "default", kind: str = "standard", **validity) -> TaxRate:
    return TaxRate.objects.create(
        market=market,
        category=category,
        kind=kind,
        rate=Decimal(value),
        valid_from=validity.get("valid_from", SINCE),
        valid_to=validity.get("valid_to"),
    )


def offer_in(category: str, code: str):
    return OfferFactory(code=code, features=[FeatureFactory(code=f"{code}_feature", category=category)])


def invoice_for(owner, vehicle, *amounts_and_offers, at=AT, **kwargs):
    lines = [
        LineSpec(description=f"line {i}", amount_minor=a, offer_id=o.pk if o else None)
        for i, (a, o) in enumerate(amounts_and_offers)
    ]
    return invoice_create(
        owner=owner, vehicle=vehicle, kind=InvoiceKind.PURCHASE, currency="EUR", lines=lines, at=at, **kwargs
    )


@pytest.fixture
def germany():
    market = MarketFactory()  # DE, EUR
    rate(market, "0.19")
    return market


def test_a_consumer_invoice_is_gross_and_charges_exactly_the_catalog_price(germany):
    owner = OwnerFactory()
    vehicle = VehicleFactory(owner=owner, market=germany)

    invoice = invoice_for(owner, vehicle, (999, offer_in("comfort", "seats")))

    assert (invoice.total_minor, invoice.tax_minor, invoice.subtotal_minor) == (999, 160, 839)
    assert invoice.prices_include_tax is True
    [tax] = invoice.tax_lines.all()
    assert (tax.vat_category, tax.rate, tax.net_minor, tax.tax_minor, tax.gross_minor) == (
        "S",
        Decimal("0.19"),
        839,
        160,
        999,
    )
    line = invoice.lines.get()
    assert (line.amount_minor, line.net_minor, line.tax_rate, line.vat_category) == (
        999,
        839,
        Decimal("0.19"),
        "S",
    )


def test_an_invoice_with_two_rates_has_one_breakdown_per_rate_computed_once(germany):
    rate(germany, "0.07", category=Feature.Category.SERVICE, kind="reduced")
    owner = OwnerFactory()
    vehicle = VehicleFactory(owner=owner, market=germany)
    seats, boost, service = (
        offer_in("comfort", "seats"),
        offer_in("performance", "boost"),
        offer_in("service", "svc"),
    )

    invoice = invoice_for(owner, vehicle, (999, seats), (1_999, boost), (500, service))

    rates = {
        (t.vat_category, t.rate): (t.net_minor, t.tax_minor, t.gross_minor) for t in invoice.tax_lines.all()
    }
    assert rates == {
        ("S", Decimal("0.19")): (2_519, 479, 2_998),  # once on 29.98, not 1.60 + 3.19 per line
        ("S", Decimal("0.07")): (467, 33, 500),
    }
    assert (invoice.subtotal_minor, invoice.tax_minor, invoice.total_minor) == (2_986, 512, 3_498)
    assert sum(line.net_minor for line in invoice.lines.all()) == invoice.subtotal_minor


def test_the_rate_valid_on_the_invoice_date_applies(germany):
    TaxRate.objects.filter(market=germany).update(valid_to=dt.datetime(2020, 7, 1, tzinfo=dt.UTC))
    rate(
        germany,
        "0.16",
        valid_from=dt.datetime(2020, 7, 1, tzinfo=dt.UTC),
        valid_to=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    rate(germany, "0.19", valid_from=dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    owner = OwnerFactory()
    vehicle = VehicleFactory(owner=owner, market=germany)

    in_2020 = invoice_for(owner, vehicle, (1_160, None), at=dt.datetime(2020, 9, 1, tzinfo=dt.UTC))
    in_2026 = invoice_for(owner, vehicle, (1_190, None))

    assert (in_2020.tax_minor, in_2026.tax_minor) == (160, 190)


def test_a_market_without_a_rate_invoices_not_subject_to_vat():
    us = MarketFactory(code="US", name="United States", country="US", currency="USD")
    owner = OwnerFactory(billing_country="US", currency="USD")
    vehicle = VehicleFactory(owner=owner, market=us)

    invoice = invoice_create(
        owner=owner,
        vehicle=vehicle,
        kind=InvoiceKind.PURCHASE,
        currency="USD",
        lines=[LineSpec(description="unlock", amount_minor=2_500)],
        at=AT,
    )

    assert (invoice.total_minor, invoice.tax_minor) == (2_500, 0)
    assert invoice.tax_lines.get().vat_category == "O"


def fleet(country: str, vat_id: str, *, prices_include_tax: bool = True) -> Owner:
    owner = OwnerFactory(
        kind=Owner.Kind.FLEET, billing_country=country, is_consumer=False, display_name="Flotte SAS"
    )
    CustomerTaxProfile.objects.create(
        owner=owner,
        vat_id=vat_id,
        prices_include_tax=prices_include_tax,
        address_line="1 rue de la Paix",
        postcode="75002",
        city="Paris",
    )
    return owner


def test_reverse_charge_for_a_foreign_fleet_with_a_vat_id(germany):
    owner = fleet("FR", "FR40303265045")
    vehicle = VehicleFactory(owner=owner, market=germany)

    invoice = invoice_for(owner, vehicle, (999, offer_in("comfort", "seats")))

    assert (invoice.total_minor, invoice.tax_minor, invoice.subtotal_minor) == (999, 0, 999)
    assert invoice.buyer_vat_id == "FR40303265045"
    [tax] = invoice.tax_lines.all()
    assert (tax.vat_category, tax.rate, tax.reverse_charge, tax.net_minor) == ("AE", Decimal(0), True, 999)
    assert "Reverse charge" in " ".join(invoice_document(invoice).notes)


def test_a_domestic_fleet_pays_vat_and_a_fleet_billed_net_gets_it_on_top(germany):
    gross_fleet = fleet("DE", "DE136695976")
    net_fleet = fleet("DE", "DE136695976", prices_include_tax=False)
    seats = offer_in("comfort", "seats")

    gross = invoice_for(gross_fleet, VehicleFactory(owner=gross_fleet, market=germany), (1_000, seats))
    net = invoice_for(net_fleet, VehicleFactory(owner=net_fleet, market=germany), (1_000, seats))

    assert (gross.subtotal_minor, gross.tax_minor, gross.total_minor) == (840, 160, 1_000)
    assert (net.subtotal_minor, net.tax_minor, net.total_minor, net.prices_include_tax) == (
        1_000,
        190,
        1_190,
        False,
    )


def test_the_factur_x_xml_of_a_fleet_invoice_passes_the_en16931_schema(germany):
    rate(germany, "0.07", category=Feature.Category.SERVICE, kind="reduced")
    owner = fleet("DE", "DE136695976")
    vehicle = VehicleFactory(owner=owner, market=germany)
    invoice = invoice_for(
        owner, vehicle, (1_999, offer_in("comfort", "seats")), (500, offer_in("service", "svc")), (-300, None)
    )

    xml = cii_xml(invoice_document(invoice))
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931") is True

    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    filename, embedded = facturx.get_xml_from_pdf(pdf, check_xsd=True)
    assert filename == "factur-x.xml"
    assert embedded == xml


def test_the_factur_x_xml_of_a_reverse_charge_invoice_passes_the_schema(germany):
    owner = fleet("FR", "FR40303265045")
    invoice = invoice_for(
        owner, VehicleFactory(owner=owner, market=germany), (999, offer_in("comfort", "seats"))
    )

    xml = cii_xml(invoice_document(invoice))

    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931") is True
    assert b"<ram:CategoryCode>AE</ram:CategoryCode>" in xml
    assert b'<ram:ID schemeID="VA">FR40303265045</ram:ID>' in xml


def test_a_consumer_gets_a_plain_pdf_without_xml(germany):
    owner = OwnerFactory()
    invoice = invoice_for(owner, VehicleFactory(owner=owner, market=germany), (999, None))

    pdf = invoice_pdf(invoice)

    assert pdf.startswith(b"%PDF")
    assert b"factur-x.xml" not in pdf
