"""Invoices: created open with a gapless number, paid or voided through allowed transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from billing.models import Invoice, InvoiceKind, InvoiceLine, InvoiceNumberSequence, InvoiceStatus, Price
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
    sequence, _ = InvoiceNumberSequence.objects.get_or_create(prefix=prefix)
    sequence = InvoiceNumberSequence.objects.select_for_update().get(pk=sequence.pk)
    sequence.last_value += 1
    sequence.save(update_fields=["last_value"])
    return f"{prefix}-{sequence.last_value:06d}"


@transaction.atomic
def invoice_create(
    *,
    owner: Owner,
    vehicle: Vehicle | None,
    kind: InvoiceKind,
    currency: str,
    lines: list[LineSpec],
    at: datetime,
    subscription=None,
    purchase=None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    change_to_price: Price | None = None,
) -> Invoice:
    """An open (finalized) invoice. Prices are gross: tax is included in the line amounts."""
    total = sum(line.amount_minor for line in lines)
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
        subtotal_minor=total,
        total_minor=total,
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
        )
        for line in lines
    )
    return invoice


def subscription_period_invoice_create(
    *, subscription, period_start: datetime, period_end: datetime, at: datetime
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
