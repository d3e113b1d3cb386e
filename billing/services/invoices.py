"""Invoices: created open with a gapless number, paid or voided through allowed transitions.

Each invoice carries its VAT: per line (rate, category, net share) and per rate (`InvoiceTaxLine`:
net, VAT and gross computed once on the sum of the lines of that rate; billing/services/tax.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceNumberSequence,
    InvoiceStatus,
    InvoiceTaxLine,
    Price,
    Purchase,
    Subscription,
    VatCategory,
)
from billing.services.tax import invoice_tax_compute
from core.errors import ErrorCode, ValidationError
from vehicles.models import Owner, Vehicle


@dataclass(frozen=True)
class LineSpec:
    description: str
    amount_minor: int
    offer_id: int | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


def invoice_number_take(*, prefix: str) -> str:
    """The next number of a gapless series. Must run inside the invoice's transaction: the
    counter row stays locked until commit, and a rollback gives the number back."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice_number_take must run inside the invoice's transaction")
    # One statement (an upsert): creates the series at 1 or increments it, and locks its row.
    table = InvoiceNumberSequence._meta.db_table
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" ("prefix", "last_value") VALUES (%s, 1) '
            f'ON CONFLICT ("prefix") DO UPDATE SET "last_value" = "{table}"."last_value" + 1 '
            'RETURNING "last_value"',
            [prefix],
        )
        (value,) = cursor.fetchone()
    return f"{prefix}-{value:06d}"


@transaction.atomic
def invoice_create(
    *,
    owner: Owner,
    vehicle: Vehicle | None,
    kind: InvoiceKind,
    currency: str,
    lines: list[LineSpec],
    at: datetime,
    subscription: Subscription | None = None,
    purchase: Purchase | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    change_to_price: Price | None = None,
    prices_include_tax: bool | None = None,
) -> Invoice:
    """An open (finalized) invoice with its VAT. Line amounts are gross (VAT included, what a
    consumer pays) unless `prices_include_tax` is False, or None and the customer is a business
    billed net prices (its tax profile): then VAT is added on top and the total is net + VAT."""
    tax = invoice_tax_compute(
        owner=owner,
        vehicle=vehicle,
        lines=[(line.amount_minor, line.offer_id) for line in lines],
        at=at,
        prices_include_tax=prices_include_tax,
    )
    total = tax.breakdown.gross_minor
    if total < 0:
        raise ValidationError("An invoice total cannot be negative.", code=ErrorCode.INVALID_AMOUNT)
    invoice = Invoice.objects.create(
        kind=kind,
        number=invoice_number_take(prefix=f"INV{at:%Y}"),
        owner=owner,
        vehicle=vehicle,
        subscription=subscription,
        purchase=purchase,
        period_start=period_start,
        period_end=period_end,
        change_to_price=change_to_price,
        currency=currency,
        status=InvoiceStatus.OPEN,
        subtotal_minor=tax.breakdown.net_minor,
        tax_minor=tax.breakdown.tax_minor,
        total_minor=total,
        prices_include_tax=tax.prices_include_tax,
        buyer_vat_id=tax.buyer_vat_id,
        finalized_at=at,
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            description=line.description,
            amount_minor=line.amount_minor,
            offer_id=line.offer_id,
            period_start=line.period_start,
            period_end=line.period_end,
            tax_rate=line_tax.rate,
            vat_category=line_tax.vat_category,
            net_minor=net,
        )
        for line, line_tax, net in zip(lines, tax.lines, tax.breakdown.line_nets, strict=True)
    )
    InvoiceTaxLine.objects.bulk_create(
        InvoiceTaxLine(
            invoice=invoice,
            vat_category=rate.category,
            rate=rate.rate,
            tax_rate=tax.tax_rate_of(rate.category, rate.rate),
            net_minor=rate.net_minor,
            tax_minor=rate.tax_minor,
            gross_minor=rate.gross_minor,
            reverse_charge=rate.category == VatCategory.REVERSE_CHARGE,
        )
        for rate in tax.breakdown.rates
    )
    return invoice


def subscription_period_invoice_create(
    *, subscription: Subscription, period_start: datetime, period_end: datetime, at: datetime
) -> Invoice:
    """The invoice of one subscription period, at the subscription's price. The database allows
    one per (subscription, period_start): a second attempt raises IntegrityError."""
    offer, price = subscription.offer, subscription.price
    return invoice_create(
        owner=subscription.owner,
        vehicle=subscription.vehicle,
        kind=InvoiceKind.SUBSCRIPTION_PERIOD,
        currency=price.currency,
        lines=[
            LineSpec(
                description=f"{offer.name} {period_start:%Y-%m-%d} to {period_end:%Y-%m-%d}",
                amount_minor=price.amount_minor,
                offer_id=offer.pk,
                period_start=period_start,
                period_end=period_end,
            )
        ],
        at=at,
        subscription=subscription,
        period_start=period_start,
        period_end=period_end,
    )
