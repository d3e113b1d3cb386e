"""Shared last step of a purchase, a subscription start or an upgrade: charge the invoice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from billing.models import (
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    PaymentAttempt,
    PaymentMethod,
    Purchase,
    Subscription,
)
from billing.services.fulfilment import invoice_fulfil_paid, invoice_undeliverable_reason
from billing.services.payments import payment_attempt_charge, payment_attempt_create
from billing.services.transitions import invoice_transition
from core.errors import BillingError, BusinessRuleViolation, ErrorCode, PaymentError


@dataclass(frozen=True)
class CheckoutOutcome:
    """What the app needs after checkout. `status`: succeeded | trialing | requires_action | processing."""

    status: str
    purchase: Purchase | None = None
    subscription: Subscription | None = None
    invoice: Invoice | None = None
    attempt: PaymentAttempt | None = None

    @property
    def client_secret(self) -> str | None:
        return self.attempt.client_secret if self.status == "requires_action" and self.attempt else None


def invoice_charge(
    *, invoice: Invoice, payment_method: PaymentMethod, at: datetime | None = None
) -> tuple[str, PaymentAttempt | None]:
    """Charge a committed open invoice. A decline raises `payment_declined` (402) after the
    outcome is recorded; an unknown outcome is `processing`, settled later by the reconciler."""
    if invoice.total_minor == 0:  # a free plan, or an upgrade whose lines round to 0: nothing to charge
        moment = at or timezone.now()
        reason = None
        try:
            with transaction.atomic():
                locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
                reason = invoice_undeliverable_reason(invoice=locked, owner_id=locked.owner_id, at=moment)
                if reason is not None:
                    invoice_transition(invoice=locked, to=InvoiceStatus.VOID, at=moment)
                elif locked.status != InvoiceStatus.PAID:
                    invoice_fulfil_paid(invoice=locked, at=moment)
        except BillingError:  # nothing was charged: close the invoice so it blocks nothing, then say why
            with transaction.atomic():
                locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
                if locked.status == InvoiceStatus.OPEN:
                    invoice_transition(invoice=locked, to=InvoiceStatus.VOID, at=moment)
            raise
        invoice.refresh_from_db()
        if reason is not None:
            raise BusinessRuleViolation(f"Nothing to deliver: {reason}.", code=ErrorCode.INVALID_STATE)
        return "succeeded", None
    attempt = payment_attempt_create(invoice=invoice, payment_method=payment_method)
    attempt = payment_attempt_charge(attempt_id=attempt.pk, at=at)
    invoice.refresh_from_db()
    if attempt.status == AttemptStatus.DECLINED:
        raise PaymentError(
            "The card was declined; nothing was charged. Try another payment method.",
            code=ErrorCode.PAYMENT_DECLINED,
            details={"decline_code": attempt.error_code, "payment": str(attempt.pk)},
        )
    statuses: dict[str, str] = {
        AttemptStatus.SUCCEEDED: "succeeded",
        AttemptStatus.REQUIRES_ACTION: "requires_action",
    }
    status = statuses.get(attempt.status, "processing")
    return status, attempt
