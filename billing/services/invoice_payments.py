"""An owner pays an open invoice themselves (dunning: another card), which ends dunning.

Checked and reserved before Stripe is called: the invoice is the owner's and open, what it pays
for can still be delivered (the car is still theirs, the subscription not canceled), no other
payment of it is in flight (one still waiting for 3-D Secure is canceled at Stripe first).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from billing.models import Invoice, InvoiceKind, InvoiceStatus, Subscription
from billing.services.checkout import CheckoutOutcome, invoice_charge
from billing.services.coverage import vehicle_reserve
from billing.services.customers import payment_method_for_charge
from billing.services.fulfilment import invoice_undeliverable_reason
from billing.services.payments import payment_attempts_abandon_for
from core.errors import BusinessRuleViolation, ErrorCode, NotFound
from vehicles.models import Owner


def invoice_pay(
    *, owner: Owner, invoice_id: UUID | str, payment_method_id: int | None, at: datetime
) -> CheckoutOutcome:
    try:
        invoice = Invoice.objects.select_related("vehicle").get(owner=owner, pk=invoice_id)
    except (Invoice.DoesNotExist, ValueError, DjangoValidationError) as exc:
        raise NotFound("No such invoice.") from exc
    if invoice.status != InvoiceStatus.OPEN or invoice.kind != InvoiceKind.SUBSCRIPTION_PERIOD:
        raise BusinessRuleViolation(
            f"Only an open subscription invoice can be paid here; this one is {invoice.status}.",
            code=ErrorCode.INVALID_STATE,
        )
    payment_method = payment_method_for_charge(owner=owner, payment_method_id=payment_method_id)
    payment_attempts_abandon_for(invoices=Invoice.objects.filter(pk=invoice.pk))  # 409 while one is unknown
    with transaction.atomic():
        assert invoice.vehicle is not None  # an owner's invoices are a vehicle's
        vehicle_reserve(vehicle=invoice.vehicle, owner=owner)
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        reason = invoice_undeliverable_reason(invoice=locked, owner_id=owner.pk, at=at)
        if reason is not None or locked.status != InvoiceStatus.OPEN:
            raise BusinessRuleViolation(
                f"This invoice can no longer be paid: {reason or 'it is ' + locked.status}.",
                code=ErrorCode.INVALID_STATE,
            )
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method, at=at)
    assert invoice.subscription_id is not None  # the other kinds are a subscription's
    subscription = Subscription.objects.get(pk=invoice.subscription_id)
    return CheckoutOutcome(status=status, subscription=subscription, invoice=invoice, attempt=attempt)
