"""Refunds, exactly once and never more than was paid (the payment row is locked while summing)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import structlog
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import AttemptStatus, PaymentAttempt, Refund, RefundStatus
from billing.services.credit_notes import credit_note_for_refund_create
from billing.services.reconcile import reconcile_failure_record, reconcile_retry_now
from billing.services.transitions import refund_transition
from core.errors import BillingError, BusinessRuleViolation, ErrorCode
from core.money import Money
from core.rounding import chargeable_step

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
        step = chargeable_step(attempt.currency)
        if amount_minor % step:
            raise BusinessRuleViolation(
                f"{attempt.currency} refunds must be a multiple of {step} minor units.",
                code=ErrorCode.INVALID_AMOUNT,
                details={"step_minor": step},
            )
        if amount_minor <= 0 or amount_minor > refundable_minor(payment_attempt=attempt):
            raise BusinessRuleViolation(
                "The refund would exceed what was paid.",
                code=ErrorCode.REFUND_EXCEEDS_PAYMENT,
                details={"refundable_minor": refundable_minor(payment_attempt=attempt)},
            )
        return Refund.objects.create(
            payment_attempt=attempt, amount_minor=amount_minor, currency=attempt.currency, reason=reason
        )


def refund_execute(*, refund_id: UUID | str) -> Refund:
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
            result.status or "", RefundStatus.FAILED
        )
        stripe_id = result.id
    except gateway.InvalidRequest as exc:  # refused outright (e.g. 400/404): nothing was refunded
        log.error("refund_refused", refund=str(refund.pk), error=str(exc))
        status, stripe_id = RefundStatus.FAILED, refund.stripe_refund_id
    except gateway.PaymentGatewayError as exc:
        log.warning("refund_outcome_unknown", refund=str(refund.pk), error=str(exc))
        status, stripe_id = RefundStatus.UNKNOWN, refund.stripe_refund_id
    except BillingError as exc:  # refused before any call (an amount Stripe cannot move)
        log.error("refund_not_sendable", refund=str(refund.pk), error=exc.message)
        status, stripe_id = RefundStatus.FAILED, refund.stripe_refund_id
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        settling = refund.status in (RefundStatus.PENDING, RefundStatus.UNKNOWN)
        if settling and not refund_transition(refund=refund, to=status, stripe_refund_id=stripe_id or ""):
            refund.stripe_refund_id = stripe_id or refund.stripe_refund_id  # still pending at Stripe
            refund.save(update_fields=["stripe_refund_id"])
        # -- credit note: issued with the success, in its transaction (billing/services/credit_notes.py)
        if settling and refund.status == RefundStatus.SUCCEEDED:
            credit_note_for_refund_create(refund=refund, at=timezone.now())
        # -- end credit note
    return refund


def refund_settle(*, refund_id: UUID | str, to: str, stripe_refund_id: str) -> Refund:
    """Record the state Stripe holds for a refund (a webhook, the reconciliation), once, through
    the transition table, with the credit note of a success, as `refund_execute` does."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("payment_attempt").get(pk=refund_id)
        if to != refund.status and refund_transition(
            refund=refund,
            to=to,
            stripe_refund_id=stripe_refund_id or refund.stripe_refund_id,
            next_reconcile_at=None,
        ):
            if to == RefundStatus.SUCCEEDED:
                credit_note_for_refund_create(refund=refund, at=timezone.now())
            elif refund.status == RefundStatus.FAILED and hasattr(refund, "credit_note"):
                log.error("refund_failed_after_success", refund=str(refund.pk))  # an operator reverses it
    return refund


def refund_execute_safely(*, refund_id: UUID | str) -> None:
    """`refund_execute` for `on_commit` callbacks: after a commit nothing may raise; a refund
    that could not be sent stays pending and the reconciler finishes it."""
    try:
        refund_execute(refund_id=refund_id)
    except Exception:
        log.exception("refund_execute_deferred", refund=str(refund_id))


def refunds_reconcile(*, older_than: timedelta = timedelta(minutes=2), limit: int = 100) -> int:
    """Finish refunds left pending (crash after commit) or unknown (timeout), same key."""
    now = timezone.now()
    due = Refund.objects.filter(
        Q(next_reconcile_at__isnull=True) | Q(next_reconcile_at__lte=now),
        status__in=[RefundStatus.PENDING, RefundStatus.UNKNOWN],
        created_at__lt=now - older_than,
        dead_lettered_at__isnull=True,
    )
    ids = list(due.order_by("created_at").values_list("pk", flat=True)[:limit])
    done = 0
    for refund_id in ids:
        try:
            with transaction.atomic():
                if due.select_for_update(skip_locked=True).filter(pk=refund_id).first() is None:
                    continue  # another worker has it, or it settled meanwhile
                refund_execute(refund_id=refund_id)
        except Exception as exc:  # noqa: BLE001 - one row never stalls the others
            reconcile_failure_record(model=Refund, pk=refund_id, error=exc, at=now)
            continue
        done += 1
    return done


def refund_retry_now(*, refund_id: UUID | str) -> Refund:
    """An operator's "retry now" on a dead-lettered or backed-off refund (same key)."""
    return reconcile_retry_now(model=Refund, pk=refund_id, work=lambda: refund_execute(refund_id=refund_id))


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
