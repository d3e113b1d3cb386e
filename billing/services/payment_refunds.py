"""Refunds an operator (or a service) issues: full or partial, with the entitlement policy applied.

The refund itself is `refunds.refund_create`: its row is committed before Stripe is called (key
from the row), the payment row is locked while summing, so concurrent refunds never exceed what
was paid (`refund_exceeds_payment`, 422), and a credit note follows when it succeeds. Rights:
`revoke_rights=True` ends what the payment bought: a refunded unlock is revoked (the purchase
becomes `refunded`), a refunded subscription period or plan change ends its entitlement now.
A goodwill refund keeps them. A refund Stripe refuses raises (502) and changes no right.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from billing.models import (
    InvoiceKind,
    PaymentAttempt,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    Subscription,
)
from billing.services.entitlements import entitlements_end
from billing.services.refunds import refund_create
from billing.services.transitions import purchase_transition
from core.errors import BillingError, ErrorCode, NotFound


def payment_refund(
    *, payment_attempt_id: UUID | str, amount_minor: int, reason: str, revoke_rights: bool, at: datetime
) -> Refund:
    try:
        attempt = PaymentAttempt.objects.select_related("invoice").get(pk=payment_attempt_id)
    except (PaymentAttempt.DoesNotExist, ValueError, DjangoValidationError) as exc:
        raise NotFound("No such payment.") from exc
    refund = refund_create(payment_attempt=attempt, amount_minor=amount_minor, reason=reason)
    if refund.status == RefundStatus.FAILED:
        raise BillingError(
            "The payment provider refused the refund; nothing was changed.",
            code=ErrorCode.PAYMENT_PROVIDER_ERROR,
            status_code=502,
            details={"refund": str(refund.pk)},
        )
    if revoke_rights:
        _revoke(attempt=attempt, at=at)
    return refund


def _revoke(*, attempt: PaymentAttempt, at: datetime) -> None:
    invoice = attempt.invoice
    with transaction.atomic():
        if invoice.kind == InvoiceKind.PURCHASE:
            assert invoice.purchase_id is not None  # a purchase's invoice
            purchase = Purchase.objects.select_for_update().get(pk=invoice.purchase_id)
            if purchase.status == PurchaseStatus.PAID:
                purchase_transition(purchase=purchase, to=PurchaseStatus.REFUNDED)
            entitlements_end(purchase=purchase, at=at)
        else:
            assert invoice.subscription_id is not None  # the other kinds are a subscription's
            subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
            entitlements_end(subscription=subscription, at=at, periods_from=invoice.period_start or at)
