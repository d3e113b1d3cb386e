"""Refunds, exactly once and never more than was paid (the payment row is locked while summing)."""

from __future__ import annotations

from datetime import timedelta

import structlog
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import AttemptStatus, PaymentAttempt, Refund, RefundStatus
from core.errors import BillingError, BusinessRuleViolation, ErrorCode
from core.money import Money

log = structlog.get_logger(__name__)


def refundable_minor(*, payment_attempt: PaymentAttempt) -> int:
    refunded = (
        payment_attempt.refunds.exclude(status=RefundStatus.FAILED).aggregate(total=Sum("amount_minor"))[
            "total"
        ]
        or 0
    )
    return payment_attempt.amount_minor - refunded


def refund_create(*, payment_attempt: PaymentAttempt, amount_minor: int, reason: str) -> Refund:
    """Commit the refund row, then call Stripe with a key derived from it."""
    refund = refund_prepare(payment_attempt=payment_attempt, amount_minor=amount_minor, reason=reason)
    return refund_execute(refund_id=refund.pk)


def refund_prepare(*, payment_attempt: PaymentAttempt, amount_minor: int, reason: str) -> Refund:
    """The refund row (status pending), inside the caller's transaction when there is one.
    The payment row is locked while summing, so concurrent refunds never exceed what was paid."""
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().get(pk=payment_attempt.pk)
        if attempt.status != AttemptStatus.SUCCEEDED:
            raise BusinessRuleViolation("Only a succeeded payment can be refunded.")
        if amount_minor <= 0 or amount_minor > refundable_minor(payment_attempt=attempt):
            raise BusinessRuleViolation(
                "The refund would exceed what was paid.",
                code=ErrorCode.REFUND_EXCEEDS_PAYMENT,
                details={"refundable_minor": refundable_minor(payment_attempt=attempt)},
            )
        return Refund.objects.create(
            payment_attempt=attempt, amount_minor=amount_minor, currency=attempt.currency, reason=reason
        )


def refund_execute(*, refund_id) -> Refund:
    """Call Stripe for a committed refund row; an unknown outcome stays `unknown`."""
    refund = Refund.objects.select_related("payment_attempt").get(pk=refund_id)
    if refund.status not in (RefundStatus.PENDING, RefundStatus.UNKNOWN):
        return refund
    try:
        result = gateway.refund_create(
            payment_intent_id=refund.payment_attempt.stripe_payment_intent_id,
            amount=Money(refund.amount_minor, refund.currency),
            idempotency_key=refund.idempotency_key,
            metadata={"refund_id": str(refund.pk)},
        )
        status = {"succeeded": RefundStatus.SUCCEEDED, "pending": RefundStatus.PENDING}.get(
            result.status, RefundStatus.FAILED
        )
        stripe_id = result.id
    except gateway.InvalidRequest as exc:  # refused outright (e.g. 400/404): nothing was refunded
        log.error("refund_refused", refund=str(refund.pk), error=str(exc))
        status, stripe_id = RefundStatus.FAILED, refund.stripe_refund_id
    except gateway.PaymentGatewayError as exc:
        log.warning("refund_outcome_unknown", refund=str(refund.pk), error=str(exc))
        status, stripe_id = RefundStatus.UNKNOWN, refund.stripe_refund_id
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        if refund.status in (RefundStatus.PENDING, RefundStatus.UNKNOWN):
            refund.status, refund.stripe_refund_id = status, stripe_id or ""
            refund.save(update_fields=["status", "stripe_refund_id"])
    return refund


def refunds_reconcile(*, older_than: timedelta = timedelta(minutes=2), limit: int = 100) -> int:
    """Finish refunds left pending (crash after commit) or unknown (timeout), same key."""
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        ids = list(
            Refund.objects.select_for_update(skip_locked=True)
            .filter(status__in=[RefundStatus.PENDING, RefundStatus.UNKNOWN], created_at__lt=cutoff)
            .values_list("pk", flat=True)[:limit]
        )
    for refund_id in ids:
        refund_execute(refund_id=refund_id)
    return len(ids)


def refund_in_full_or_raise(*, payment_attempt: PaymentAttempt, reason: str) -> Refund | None:
    """Refund what is left of a payment. A refund Stripe refused raises (the caller keeps the
    rights it was about to end); pending or unknown refunds are finished by the reconciler."""
    remaining = refundable_minor(payment_attempt=payment_attempt)
    if remaining <= 0:
        return None
    refund = refund_create(payment_attempt=payment_attempt, amount_minor=remaining, reason=reason)
    if refund.status == RefundStatus.FAILED:
        raise BillingError(
            "The refund was refused by the payment provider; nothing was changed. Try again later.",
            code=ErrorCode.PAYMENT_PROVIDER_ERROR,
            status_code=502,
            details={"refund": str(refund.pk)},
        )
    return refund
