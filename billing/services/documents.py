"""Invoice and credit-note documents: a PDF for everyone (fpdf2), and for business customers the
same PDF as a Factur-X / ZUGFeRD e-invoice: the EN 16931 CII XML embedded (`factur-x`).

Both are rendered from one neutral `Document` built from the stored rows, so what the PDF prints,
what the XML says and what the database holds are the same numbers: lines with their net share,
one VAT breakdown per rate (computed once per rate when the invoice was issued), totals.
Nothing here computes tax; amounts are only formatted in the currency's exponent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import facturx
from fpdf import FPDF
from lxml import etree

from billing.models import CreditNote, Invoice, InvoiceStatus, InvoiceTaxLine, VatCategory
from billing.services.tax import Seller, seller
from core.money import exponent, format_money
from core.tax import RateTotal
from vehicles.models import Owner

FACTURX_LEVEL = "en16931"
TYPE_INVOICE, TYPE_CREDIT_NOTE = "380", "381"  # UNTDID 1001
PAYMENT_MEANS_CARD = "48"  # UNTDID 4461: bank card
REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient (Art. 196 Directive 2006/112/EC)."
)
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass(frozen=True)
class Party:
    name: str
    country: str
    address_line: str = ""
    postcode: str = ""
    city: str = ""
    vat_id: str = ""


@dataclass(frozen=True)
class DocumentLine:
    description: str
    amount_minor: int  # as priced: gross, or net when the document's prices exclude VAT
    net_minor: int
    vat_category: str
    rate: Decimal
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True)
class Document:
    type_code: str
    number: str
    issued_at: datetime
    currency: str
    seller: Party
    buyer: Party
    lines: tuple[DocumentLine, ...]
    rates: tuple[RateTotal, ...]
    net_minor: int
    tax_minor: int
    total_minor: int
    prices_include_tax: bool
    settled: bool  # paid (invoice) or refunded (credit note)
    vin: str = ""
    referenced_number: str = ""
    referenced_issued_at: datetime | None = None
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return "Credit note" if self.type_code == TYPE_CREDIT_NOTE else "Invoice"

    @property
    def reverse_charge(self) -> bool:
        return any(r.category == VatCategory.REVERSE_CHARGE for r in self.rates)


def is_e_invoice_customer(owner: Owner) -> bool:
    """Business customers get the Factur-X e-invoice; consumers a plain PDF."""
    return owner.kind == Owner.Kind.FLEET


# -- building the document from the rows ---------------------------------------------------------
def _seller_party(us: Seller) -> Party:
    return Party(us.name, us.country, us.address_line, us.postcode, us.city, us.vat_id)


def _buyer_party(owner: Owner, vat_id: str) -> Party:
    profile = getattr(owner, "tax_profile", None)
    return Party(
        name=owner.display_name,
        country=owner.billing_country.upper(),
        address_line=profile.address_line if profile else "",
        postcode=profile.postcode if profile else "",
        city=profile.city if profile else "",
        vat_id=vat_id,
    )


def _rate_totals(rows: Iterable[Any]) -> tuple[RateTotal, ...]:
    return tuple(
        RateTotal(r.vat_category, r.rate.normalize(), r.net_minor, r.tax_minor, r.gross_minor) for r in rows
    )


def invoice_document(invoice: Invoice) -> Document:
    tax_rows = list(InvoiceTaxLine.objects.filter(invoice=invoice).order_by("id"))
    rates = _rate_totals(tax_rows) or (
        RateTotal(
            VatCategory.OUTSIDE_SCOPE,
            Decimal(0),
            invoice.total_minor - invoice.tax_minor,
            0,
            invoice.total_minor,
        ),
    )
    lines = tuple(
        DocumentLine(
            description=line.description,
            amount_minor=line.amount_minor,
            net_minor=line.amount_minor if line.net_minor is None else line.net_minor,
            vat_category=line.vat_category or VatCategory.OUTSIDE_SCOPE,
            rate=(line.tax_rate or Decimal(0)).normalize(),
            period_start=line.period_start,
            period_end=line.period_end,
        )
        for line in invoice.lines.order_by("id")
    )
    document = Document(
        type_code=TYPE_INVOICE,
        number=invoice.number or f"draft-{invoice.pk}",
        issued_at=invoice.finalized_at or invoice.created_at,
        currency=invoice.currency,
        seller=_seller_party(seller()),
        buyer=_buyer_party(invoice.owner, invoice.buyer_vat_id),
        lines=lines,
        rates=rates,
        net_minor=invoice.subtotal_minor,
        tax_minor=invoice.tax_minor,
        total_minor=invoice.total_minor,
        prices_include_tax=invoice.prices_include_tax,
        settled=invoice.status == InvoiceStatus.PAID,
        vin=invoice.vehicle.vin if invoice.vehicle is not None else "",
    )
    return _with_notes(document)


def credit_note_document(note: CreditNote) -> Document:
    invoice = note.invoice
    rows = list(note.lines.order_by("id"))
    document = Document(
        type_code=TYPE_CREDIT_NOTE,
        number=note.number,
        issued_at=note.issued_at,
        currency=note.currency,
        seller=_seller_party(seller()),
        buyer=_buyer_party(note.owner, invoice.buyer_vat_id),
        lines=tuple(
            DocumentLine(
                description=row.description,
                amount_minor=row.gross_minor if invoice.prices_include_tax else row.net_minor,
                net_minor=row.net_minor,
                vat_category=row.vat_category,
                rate=row.rate.normalize(),
            )
            for row in rows
        ),
        rates=_rate_totals(rows),
        net_minor=note.subtotal_minor,
        tax_minor=note.tax_minor,
        total_minor=note.total_minor,
        prices_include_tax=invoice.prices_include_tax,
        settled=True,  # issued when the refund succeeded
        vin=invoice.vehicle.vin if invoice.vehicle is not None else "",
        referenced_number=invoice.number or "",
        referenced_issued_at=invoice.finalized_at,
        notes=(f"Reason: {note.reason}",) if note.reason else (),
    )
    return _with_notes(document)


def _with_notes(document: Document) -> Document:
    notes = list(document.notes)
    if document.reverse_charge:
        notes.append(REVERSE_CHARGE_NOTE)
    notes.append("Amounts include VAT." if document.prices_include_tax else "Amounts exclude VAT.")
    if document.type_code == TYPE_CREDIT_NOTE:
        notes.append("Refunded to the card the invoice was paid with.")
    else:
        notes.append("Paid by card." if document.settled else "Charged to the card on file.")
    return Document(**{**document.__dict__, "notes": tuple(notes)})


# -- amounts as text -------------------------------------------------------------------------------
def decimal_amount(amount_minor: int, currency: str) -> str:
    """`1234` EUR -> "12.34", JPY -> "1234", BHD `5250` -> "5.250" (exact, no float)."""
    places = exponent(currency)
    return f"{Decimal(amount_minor).scaleb(-places):.{places}f}"


def percent(rate: Decimal) -> str:
    value = (rate * 100).normalize()
    return f"{value:f}"


# -- EN 16931 CII XML ------------------------------------------------------------------------------
NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "qdt": "urn:un:unece:uncefact:data:standard:QualifiedDataType:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
}


def _el(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:  # lxml elements
    prefix, name = tag.split(":")
    element = etree.SubElement(parent, f"{{{NS[prefix]}}}{name}", attrs)
    if text is not None:
        element.text = text
    return element


def _date(parent: Any, tag: str, when: datetime, *, kind: str = "udt") -> None:
    _el(_el(parent, tag), f"{kind}:DateTimeString", f"{when:%Y%m%d}", format="102")


def _party(parent: Any, tag: str, party: Party) -> None:
    node = _el(parent, tag)
    _el(node, "ram:Name", party.name)
    address = _el(node, "ram:PostalTradeAddress")
    if party.postcode:
        _el(address, "ram:PostcodeCode", party.postcode)
    if party.address_line:
        _el(address, "ram:LineOne", party.address_line)
    if party.city:
        _el(address, "ram:CityName", party.city)
    _el(address, "ram:CountryID", party.country)
    if party.vat_id:
        _el(_el(node, "ram:SpecifiedTaxRegistration"), "ram:ID", party.vat_id, schemeID="VA")


def _tax(parent: Any, category: str, rate: Decimal) -> None:
    node = _el(parent, "ram:ApplicableTradeTax")
    _el(node, "ram:TypeCode", "VAT")
    _el(node, "ram:CategoryCode", category)
    if category != VatCategory.OUTSIDE_SCOPE:
        _el(node, "ram:RateApplicablePercent", percent(rate))


def cii_xml(document: Document) -> bytes:
    """The EN 16931 Cross Industry Invoice of a document (Factur-X profile EN 16931)."""
    amount = partial(decimal_amount, currency=document.currency)
    root = etree.Element(f"{{{NS['rsm']}}}CrossIndustryInvoice", nsmap=NS)
    context = _el(root, "rsm:ExchangedDocumentContext")
    _el(_el(context, "ram:GuidelineSpecifiedDocumentContextParameter"), "ram:ID", "urn:cen.eu:en16931:2017")
    header = _el(root, "rsm:ExchangedDocument")
    _el(header, "ram:ID", document.number)
    _el(header, "ram:TypeCode", document.type_code)
    _date(header, "ram:IssueDateTime", document.issued_at)
    for note in document.notes:
        _el(_el(header, "ram:IncludedNote"), "ram:Content", note)

    transaction = _el(root, "rsm:SupplyChainTradeTransaction")
    for index, line in enumerate(document.lines, start=1):
        item = _el(transaction, "ram:IncludedSupplyChainTradeLineItem")
        _el(_el(item, "ram:AssociatedDocumentLineDocument"), "ram:LineID", str(index))
        _el(_el(item, "ram:SpecifiedTradeProduct"), "ram:Name", line.description)
        agreement = _el(item, "ram:SpecifiedLineTradeAgreement")
        # a credit line (proration of unused time) is quantity -1 at a positive price (BR-27)
        _el(_el(agreement, "ram:NetPriceProductTradePrice"), "ram:ChargeAmount", amount(abs(line.net_minor)))
        quantity = "-1" if line.net_minor < 0 else "1"
        _el(_el(item, "ram:SpecifiedLineTradeDelivery"), "ram:BilledQuantity", quantity, unitCode="C62")
        settlement = _el(item, "ram:SpecifiedLineTradeSettlement")
        _tax(settlement, line.vat_category, line.rate)
        if line.period_start and line.period_end:
            period = _el(settlement, "ram:BillingSpecifiedPeriod")
            _date(period, "ram:StartDateTime", line.period_start)
            _date(period, "ram:EndDateTime", line.period_end)
        summation = _el(settlement, "ram:SpecifiedTradeSettlementLineMonetarySummation")
        _el(summation, "ram:LineTotalAmount", amount(line.net_minor))

    agreement = _el(transaction, "ram:ApplicableHeaderTradeAgreement")
    if document.vin:
        _el(agreement, "ram:BuyerReference", document.vin)
    _party(agreement, "ram:SellerTradeParty", document.seller)
    _party(agreement, "ram:BuyerTradeParty", document.buyer)
    delivery = _el(transaction, "ram:ApplicableHeaderTradeDelivery")
    event = _el(delivery, "ram:ActualDeliverySupplyChainEvent")
    _date(event, "ram:OccurrenceDateTime", document.issued_at)

    settlement = _el(transaction, "ram:ApplicableHeaderTradeSettlement")
    _el(settlement, "ram:InvoiceCurrencyCode", document.currency)
    _el(_el(settlement, "ram:SpecifiedTradeSettlementPaymentMeans"), "ram:TypeCode", PAYMENT_MEANS_CARD)
    for rate in document.rates:
        tax = _el(settlement, "ram:ApplicableTradeTax")
        _el(tax, "ram:CalculatedAmount", amount(rate.tax_minor))
        _el(tax, "ram:TypeCode", "VAT")
        if rate.category == VatCategory.REVERSE_CHARGE:
            _el(tax, "ram:ExemptionReason", "Reverse charge")
        elif rate.category == VatCategory.OUTSIDE_SCOPE:
            _el(tax, "ram:ExemptionReason", "Not subject to VAT")
        _el(tax, "ram:BasisAmount", amount(rate.net_minor))
        _el(tax, "ram:CategoryCode", rate.category)
        if rate.category == VatCategory.REVERSE_CHARGE:
            _el(tax, "ram:ExemptionReasonCode", "VATEX-EU-AE")
        elif rate.category == VatCategory.OUTSIDE_SCOPE:
            _el(tax, "ram:ExemptionReasonCode", "VATEX-EU-O")
        if rate.category != VatCategory.OUTSIDE_SCOPE:
            _el(tax, "ram:RateApplicablePercent", percent(rate.rate))
    _el(_el(settlement, "ram:SpecifiedTradePaymentTerms"), "ram:Description", document.notes[-1])
    totals = _el(settlement, "ram:SpecifiedTradeSettlementHeaderMonetarySummation")
    _el(totals, "ram:LineTotalAmount", amount(sum(line.net_minor for line in document.lines)))
    _el(totals, "ram:TaxBasisTotalAmount", amount(document.net_minor))
    _el(totals, "ram:TaxTotalAmount", amount(document.tax_minor), currencyID=document.currency)
    _el(totals, "ram:GrandTotalAmount", amount(document.total_minor))
    prepaid = document.total_minor if document.settled else 0
    _el(totals, "ram:TotalPrepaidAmount", amount(prepaid))
    _el(totals, "ram:DuePayableAmount", amount(document.total_minor - prepaid))
    if document.referenced_number:
        reference = _el(settlement, "ram:InvoiceReferencedDocument")
        _el(reference, "ram:IssuerAssignedID", document.referenced_number)
        if document.referenced_issued_at:
            _date(reference, "ram:FormattedIssueDateTime", document.referenced_issued_at, kind="qdt")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# -- PDF -------------------------------------------------------------------------------------------
class _Pdf(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4")
        self.set_auto_page_break(auto=True, margin=20)
        if (FONT_DIR / "DejaVuSans.ttf").exists():  # embedded Unicode font: any name prints
            self.add_font("body", "", str(FONT_DIR / "DejaVuSans.ttf"))
            self.add_font("body", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
            self.body_font, self.has_unicode = "body", True
        else:  # the core font: text outside Latin-1 is replaced
            self.body_font, self.has_unicode = "helvetica", False

    def text_of(self, value: str) -> str:
        return value if self.has_unicode else value.encode("latin-1", "replace").decode("latin-1")

    def line_of(self, text: str, *, size: int = 9, bold: bool = False, height: int = 5) -> None:
        self.set_font(self.body_font, "B" if bold else "", size)
        self.multi_cell(0, height, self.text_of(text), new_x="LMARGIN", new_y="NEXT")

    def row(self, cells: list[tuple[str, int, str]], *, bold: bool = False) -> None:
        self.set_font(self.body_font, "B" if bold else "", 9)
        for text, width, align in cells:
            self.cell(width, 6, self.text_of(text), border="B", align=align)
        self.ln()


def _party_lines(party: Party) -> list[str]:
    lines = [party.name]
    if party.address_line:
        lines.append(party.address_line)
    if party.postcode or party.city:
        lines.append(f"{party.postcode} {party.city}".strip())
    lines.append(party.country)
    if party.vat_id:
        lines.append(f"VAT id: {party.vat_id}")
    return lines


def _rate_label(category: str, rate: Decimal) -> str:
    if category == VatCategory.REVERSE_CHARGE:
        return "Reverse charge"
    if category == VatCategory.OUTSIDE_SCOPE:
        return "Not subject to VAT"
    return f"VAT {percent(rate)} %"


def pdf_bytes(document: Document) -> bytes:
    """A one-page (or longer) A4 PDF of the document."""
    money = partial(format_money, currency=document.currency)
    pdf = _Pdf()
    pdf.set_title(f"{document.title} {document.number}")
    pdf.set_author(document.seller.name)
    pdf.set_creator("in-car services billing")
    pdf.add_page()
    for text in _party_lines(document.seller):
        pdf.line_of(text, size=8)
    pdf.ln(4)
    pdf.line_of(f"{document.title} {document.number}", size=16, bold=True, height=9)
    pdf.line_of(f"Date: {document.issued_at:%Y-%m-%d}")
    if document.referenced_number:
        issued = f" of {document.referenced_issued_at:%Y-%m-%d}" if document.referenced_issued_at else ""
        pdf.line_of(f"Corrects invoice {document.referenced_number}{issued}")
    if document.vin:
        pdf.line_of(f"Vehicle (VIN): {document.vin}")
    pdf.ln(2)
    pdf.line_of("Bill to:", bold=True)
    for text in _party_lines(document.buyer):
        pdf.line_of(text)
    pdf.ln(4)

    amount_head = "Amount (incl. VAT)" if document.prices_include_tax else "Amount (excl. VAT)"
    pdf.row([("Description", 110, "L"), ("VAT", 30, "R"), (amount_head, 40, "R")], bold=True)
    for line in document.lines:
        text = line.description
        if line.period_start and line.period_end:
            text += f" ({line.period_start:%Y-%m-%d} to {line.period_end:%Y-%m-%d})"
        pdf.row(
            [
                (text[:70], 110, "L"),
                (_rate_label(line.vat_category, line.rate), 30, "R"),
                (money(line.amount_minor), 40, "R"),
            ]
        )
    pdf.ln(4)
    pdf.row([("VAT breakdown", 70, "L"), ("Net", 40, "R"), ("VAT", 30, "R"), ("Gross", 40, "R")], bold=True)
    for rate in document.rates:
        pdf.row(
            [
                (_rate_label(rate.category, rate.rate), 70, "L"),
                (money(rate.net_minor), 40, "R"),
                (money(rate.tax_minor), 30, "R"),
                (money(rate.gross_minor), 40, "R"),
            ]
        )
    pdf.ln(4)
    for label, value, bold in (
        ("Total net", document.net_minor, False),
        ("Total VAT", document.tax_minor, False),
        ("Total" if document.type_code == TYPE_INVOICE else "Total credited", document.total_minor, True),
    ):
        pdf.row([(label, 140, "L"), (money(value), 40, "R")], bold=bold)
    pdf.ln(4)
    for note in document.notes:
        pdf.line_of(note, size=8)
    return bytes(pdf.output())


def document_pdf(document: Document, *, e_invoice: bool) -> bytes:
    """The PDF; with `e_invoice` the Factur-X PDF (the CII XML embedded, checked against the
    EN 16931 schema on the way)."""
    pdf = pdf_bytes(document)
    if not e_invoice:
        return pdf
    return facturx.generate_from_binary(
        pdf,
        cii_xml(document),
        flavor="factur-x",
        level=FACTURX_LEVEL,
        check_xsd=True,
        pdf_metadata={
            "author": document.seller.name,
            "keywords": "Factur-X, ZUGFeRD, e-invoice",
            "title": f"{document.title} {document.number}",
            "subject": f"{document.title} {document.number} from {document.seller.name}",
        },
        lang="en",
    )


def invoice_pdf(invoice: Invoice) -> bytes:
    return document_pdf(invoice_document(invoice), e_invoice=is_e_invoice_customer(invoice.owner))


def credit_note_pdf(note: CreditNote) -> bytes:
    return document_pdf(credit_note_document(note), e_invoice=is_e_invoice_customer(note.owner))
