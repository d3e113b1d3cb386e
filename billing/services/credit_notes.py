"""Credit notes: one for every refund that returned money, whatever its reason (withdrawal,
goodwill, resale proration, a payment that could not be delivered).

When: in the transaction that records the refund as `succeeded` (`refunds.refund_execute`, the
only place a refund succeeds, also for the reconciler). A credit note documents money actually
returned, and its number is gapless: issuing it when the refund row is prepared would leave a
numbered credit note for a refund Stripe may still refuse (a `failed` refund), and a number once
issued cannot be taken back. Issued on success, a refused refund leaves nothing to reverse, and
the database holds "succeeded refund <=> one credit note" (a one-to-one on the refund).

What: the refunded gross split over the VAT rates of the invoice in proportion to what is left
to credit of each (`core.tax.credit_breakdown`), so credit notes that together refund the whole
invoice give back exactly its net and VAT per rate.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum

from billing.models import CreditNote, CreditNoteLine, Invoice, InvoiceTaxLine, Refund, VatCategory
from billing.services.invoices import invoice_number_take
from core.tax import RateTotal, credit_breakdown


def credit_note_series(at: datetime) -> str:
    return f"CN{at:%Y}"


def _invoice_rates(invoice: Invoice) -> list[RateTotal]:
    rows = list(InvoiceTaxLine.objects.filter(invoice=invoice).order_by("id"))
    if not rows:  # an invoice issued before VAT was recorded: its totals as one rate
        return [
            RateTotal(
                category=VatCategory.OUTSIDE_SCOPE if invoice.tax_minor == 0 else VatCategory.STANDARD,
                rate=Decimal(0),
                net_minor=invoice.total_minor - invoice.tax_minor,
                tax_minor=invoice.tax_minor,
                gross_minor=invoice.total_minor,
            )
        ]
    return [
        RateTotal(
            category=row.vat_category,
            rate=row.rate.normalize(),
            net_minor=row.net_minor,
            tax_minor=row.tax_minor,
            gross_minor=row.gross_minor,
        )
        for row in rows
    ]


def invoice_rates_left_to_credit(*, invoice: Invoice) -> list[RateTotal]:
    """The invoice's per-rate figures minus what its credit notes credited already."""
    credited = {
        (row["vat_category"], row["rate"].normalize()): row
        for row in CreditNoteLine.objects.filter(credit_note__invoice=invoice)
        .values("vat_category", "rate")
        .annotate(net=Sum("net_minor"), tax=Sum("tax_minor"), gross=Sum("gross_minor"))
    }
    left = []
    for rate in _invoice_rates(invoice):
        done = credited.get((rate.category, rate.rate), {"net": 0, "tax": 0, "gross": 0})
        left.append(
            RateTotal(
                category=rate.category,
                rate=rate.rate,
                net_minor=rate.net_minor - done["net"],
                tax_minor=rate.tax_minor - done["tax"],
                gross_minor=rate.gross_minor - done["gross"],
            )
        )
    return left


def _describe(rate: RateTotal, invoice: Invoice) -> str:
    labels: dict[str, str] = {
        VatCategory.REVERSE_CHARGE: "reverse charge",
        VatCategory.OUTSIDE_SCOPE: "not subject to VAT",
    }
    what = labels.get(rate.category, f"VAT {rate.rate * 100:g} %")
    return f"Credit on invoice {invoice.number} ({what})"


def credit_note_for_refund_create(*, refund: Refund, at: datetime) -> CreditNote:
    """The credit note of a succeeded refund (idempotent: the existing one if there is one).
    Runs in the transaction that records the success; the invoice row is locked so two refunds of
    one invoice settling at once split what is left one after the other."""
    with transaction.atomic():
        existing = CreditNote.objects.filter(refund_id=refund.pk).first()
        if existing is not None:
            return existing
        attempt = refund.payment_attempt
        invoice = Invoice.objects.select_for_update().get(pk=attempt.invoice_id)
        rates = credit_breakdown(refund.amount_minor, invoice_rates_left_to_credit(invoice=invoice))
        note = CreditNote.objects.create(
            number=invoice_number_take(prefix=credit_note_series(at)),
            invoice=invoice,
            refund=refund,
            owner_id=invoice.owner_id,
            currency=refund.currency,
            reason=refund.reason,
            subtotal_minor=sum(r.net_minor for r in rates),
            tax_minor=sum(r.tax_minor for r in rates),
            total_minor=sum(r.gross_minor for r in rates),
            issued_at=at,
        )
        CreditNoteLine.objects.bulk_create(
            CreditNoteLine(
                credit_note=note,
                description=_describe(rate, invoice),
                vat_category=rate.category,
                rate=rate.rate,
                net_minor=rate.net_minor,
                tax_minor=rate.tax_minor,
                gross_minor=rate.gross_minor,
            )
            for rate in rates
        )
        return note
