"""Invoices: created open with a gapless number, paid or voided through allowed transitions.

Each invoice carries its VAT: per line (rate, category, net share) and per rate (`InvoiceTaxLine`:
net, VAT and gross computed once on the sum of the lines of that rate; billing/services/tax.py)."""

from __future__ import annotations

from collections.abc import Sequence
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
from billing.services.tax import TaxLookups, invoice_tax_compute
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
    return invoice_numbers_take(prefix=prefix, count=1)[0]


def invoice_numbers_take(*, prefix: str, count: int) -> list[str]:
    """The next `count` numbers of a gapless series, in order (see `invoice_number_take`)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice_number_take must run inside the invoice's transaction")
    if count < 1:
        return []
    # One statement (an upsert): creates the series at `count` or adds `count`, and locks its row.
    table = InvoiceNumberSequence._meta.db_table
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" ("prefix", "last_value") VALUES (%s, %s) '
            f'ON CONFLICT ("prefix") DO UPDATE SET "last_value" = "{table}"."last_value" + %s '
            'RETURNING "last_value"',
            [prefix, count, count],
        )
        (last,) = cursor.fetchone()
    return [f"{prefix}-{value:06d}" for value in range(last - count + 1, last + 1)]


@dataclass(frozen=True)
class InvoiceDraft:
    """An invoice about to be created (`invoice_create`'s arguments but `at`)."""

    owner: Owner
    vehicle: Vehicle | None
    kind: InvoiceKind
    currency: str
    lines: list[LineSpec]
    subscription: Subscription | None = None
    purchase: Purchase | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    change_to_price: Price | None = None
    prices_include_tax: bool | None = None


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
    draft = InvoiceDraft(
        owner=owner,
        vehicle=vehicle,
        kind=kind,
        currency=currency,
        lines=lines,
        subscription=subscription,
        purchase=purchase,
        period_start=period_start,
        period_end=period_end,
        change_to_price=change_to_price,
        prices_include_tax=prices_include_tax,
    )
    return invoices_create([draft], at=at)[0]


@transaction.atomic
def invoices_create(
    drafts: Sequence[InvoiceDraft], *, at: datetime, lookups: TaxLookups | None = None
) -> list[Invoice]:
    """`invoice_create` for many invoices (a batch of renewals): consecutive numbers in the
    order given, a constant number of statements. `lookups`: tax data read once for the batch.
    A unique constraint refusing one invoice refuses them all (IntegrityError)."""
    lookups = lookups or TaxLookups(owner_ids={draft.owner.pk for draft in drafts})
    taxes = []
    for draft in drafts:
        tax = invoice_tax_compute(
            owner=draft.owner,
            vehicle=draft.vehicle,
            lines=[(line.amount_minor, line.offer_id) for line in draft.lines],
            at=at,
            prices_include_tax=draft.prices_include_tax,
            lookups=lookups,
        )
        if tax.breakdown.gross_minor < 0:
            raise ValidationError("An invoice total cannot be negative.", code=ErrorCode.INVALID_AMOUNT)
        taxes.append(tax)
    numbers = invoice_numbers_take(prefix=f"INV{at:%Y}", count=len(drafts))
    invoices = Invoice.objects.bulk_create(
        Invoice(
            kind=draft.kind,
            number=number,
            owner=draft.owner,
            vehicle=draft.vehicle,
            subscription=draft.subscription,
            purchase=draft.purchase,
            period_start=draft.period_start,
            period_end=draft.period_end,
            change_to_price=draft.change_to_price,
            currency=draft.currency,
            status=InvoiceStatus.OPEN,
            subtotal_minor=tax.breakdown.net_minor,
            tax_minor=tax.breakdown.tax_minor,
            total_minor=tax.breakdown.gross_minor,
            prices_include_tax=tax.prices_include_tax,
            buyer_vat_id=tax.buyer_vat_id,
            finalized_at=at,
        )
        for draft, tax, number in zip(drafts, taxes, numbers, strict=True)
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
        for invoice, draft, tax in zip(invoices, drafts, taxes, strict=True)
        for line, line_tax, net in zip(draft.lines, tax.lines, tax.breakdown.line_nets, strict=True)
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
        for invoice, tax in zip(invoices, taxes, strict=True)
        for rate in tax.breakdown.rates
    )
    return invoices


def subscription_period_invoice_create(
    *, subscription: Subscription, period_start: datetime, period_end: datetime, at: datetime
) -> Invoice:
    """The invoice of one subscription period, at the subscription's price. The database allows
    one per (subscription, period_start): a second attempt raises IntegrityError."""
    return invoices_create([subscription_period_draft(subscription, period_start, period_end)], at=at)[0]


def subscription_period_draft(
    subscription: Subscription, period_start: datetime, period_end: datetime
) -> InvoiceDraft:
    """The draft of one subscription period's invoice, at the subscription's price."""
    offer, price = subscription.offer, subscription.price
    return InvoiceDraft(
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
        subscription=subscription,
        period_start=period_start,
        period_end=period_end,
    )
