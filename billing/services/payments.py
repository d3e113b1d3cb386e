"""Charging exactly once.

1. `payment_attempt_create` commits the attempt row (one live attempt per invoice: a constraint).
2. `payment_attempt_charge` calls Stripe with `idempotency_key = attempt.idempotency_key`.
3. `payment_attempt_record` stores the outcome in a new transaction, locks the row, applies the
   allowed transition and fulfils the invoice once. A timeout leaves the attempt `unknown`, never
   `declined`; the reconciler (`payment_attempts_reconcile`) settles it with the same key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import AttemptStatus, Invoice, InvoiceStatus, PaymentAttempt, PaymentMethod
from billing.models.payments import ATTEMPT_TRANSITIONS
from billing.services.customers import owner_ensure_stripe_customer
from billing.services.fulfilment import invoice_fulfil_failed, invoice_fulfil_paid
from core.errors import Conflict, ErrorCode
from core.money import Money

log = structlog.get_logger(__name__)

_RESULT_STATUS = {
    "succeeded": AttemptStatus.SUCCEEDED,
    "declined": AttemptStatus.DECLINED,
    "requires_action": AttemptStatus.REQUIRES_ACTION,
    "processing": AttemptStatus.UNKNOWN,
}
# Keys are kept by Stripe for at least 24 h: within that, replaying the create is safe.
IDEMPOTENCY_KEY_WINDOW = timedelta(hours=23)


def payment_attempt_create(*, invoice: Invoice, payment_method: PaymentMethod) -> PaymentAttempt:
    """Commit the intent to charge before Stripe hears of it."""
    try:
        with transaction.atomic():
            return PaymentAttempt.objects.create(
                invoice=invoice,
                owner_id=invoice.owner_id,
                payment_method=payment_method,
                amount_minor=invoice.total_minor,
                currency=invoice.currency,
            )
    except IntegrityError as exc:
        raise Conflict(
            "A payment for this invoice is already in progress or done.",
            code=ErrorCode.CONFLICT,
            details={"invoice": str(invoice.pk)},
        ) from exc


def payment_attempt_charge(*, attempt_id, off_session: bool = True) -> PaymentAttempt:
    """Call Stripe for a committed attempt (step 2) and record what came back (step 3)."""
    attempt = PaymentAttempt.objects.select_related("owner", "payment_method").get(pk=attempt_id)
    if attempt.status not in (AttemptStatus.PENDING, AttemptStatus.UNKNOWN):
        return attempt
    customer_id = owner_ensure_stripe_customer(owner=attempt.owner)
    try:
        result = gateway.payment_intent_create(
            amount=Money(attempt.amount_minor, attempt.currency),
            customer_id=customer_id,
            payment_method_id=attempt.payment_method.stripe_payment_method_id,
            idempotency_key=attempt.idempotency_key,
            metadata={"payment_attempt_id": str(attempt.pk), "invoice_id": str(attempt.invoice_id)},
            off_session=off_session,
        )
    except gateway.InvalidRequest as exc:
        # Stripe refused the request itself (400): nothing was charged. A bug of ours, logged loudly.
        log.error("payment_request_refused", attempt=str(attempt.pk), error=str(exc))
        refused = gateway.ChargeResult(
            status="declined", payment_intent_id=None, decline_code="provider_rejected", message=str(exc)
        )
        return payment_attempt_record(attempt_id=attempt.pk, result=refused)
    except gateway.PaymentGatewayError as exc:  # timeout, 5xx, 429, key conflict: outcome unknown
        log.warning("payment_outcome_unknown", attempt=str(attempt.pk), error=str(exc))
        return payment_attempt_mark_unknown(attempt_id=attempt.pk, reason=str(exc))
    return payment_attempt_record(attempt_id=attempt.pk, result=result)


def payment_attempt_mark_unknown(*, attempt_id, reason: str) -> PaymentAttempt:
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().get(pk=attempt_id)
        if attempt.status == AttemptStatus.PENDING:
            attempt.status = AttemptStatus.UNKNOWN
            attempt.error_message = reason[:500]
            attempt.save(update_fields=["status", "error_message", "updated_at"])
        return attempt


def payment_attempt_record(
    *, attempt_id, result: gateway.ChargeResult, at: datetime | None = None
) -> PaymentAttempt:
    """Record a Stripe outcome once; fulfil or fail the invoice in the same transaction."""
    at = at or timezone.now()
    target = _RESULT_STATUS[result.status]
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().get(pk=attempt_id)
        if attempt.status == target or target not in ATTEMPT_TRANSITIONS[attempt.status]:
            return attempt  # already recorded, or a stale outcome: nothing to do
        if not _matches_attempt(attempt, result):
            log.error("payment_result_mismatch", attempt=str(attempt.pk), amount=str(result.amount))
            return attempt  # Stripe data is untrusted input: never fulfil on a mismatch (R27)
        attempt.status = target
        attempt.stripe_payment_intent_id = result.payment_intent_id or attempt.stripe_payment_intent_id
        requires_action, declined = target == AttemptStatus.REQUIRES_ACTION, target == AttemptStatus.DECLINED
        attempt.client_secret = (result.client_secret or "") if requires_action else ""
        attempt.error_code = (result.decline_code or "card_declined") if declined else ""
        attempt.error_message = (result.message or "")[:500] if declined else ""
        attempt.save()
        if target in (AttemptStatus.SUCCEEDED, AttemptStatus.DECLINED):
            invoice = Invoice.objects.select_for_update().get(pk=attempt.invoice_id)
            if target == AttemptStatus.SUCCEEDED and invoice.status != InvoiceStatus.PAID:
                invoice_fulfil_paid(invoice=invoice, at=at)
            elif target == AttemptStatus.DECLINED:
                invoice_fulfil_failed(invoice=invoice, at=at)
        log.info("payment_attempt_recorded", attempt=str(attempt.pk), status=target)
        return attempt


def _matches_attempt(attempt: PaymentAttempt, result: gateway.ChargeResult) -> bool:
    """The PaymentIntent is for this attempt: same amount and currency, our id in its metadata."""
    if result.amount is not None and result.amount != Money(attempt.amount_minor, attempt.currency):
        return False
    claimed = result.metadata.get("payment_attempt_id")
    return claimed is None or claimed == str(attempt.pk)


def payment_attempt_refresh(*, attempt_id) -> PaymentAttempt:
    """Ask Stripe where an attempt stands (after 3-D Secure, or for an unknown outcome)."""
    attempt = PaymentAttempt.objects.get(pk=attempt_id)
    if attempt.status not in (AttemptStatus.REQUIRES_ACTION, AttemptStatus.UNKNOWN, AttemptStatus.PENDING):
        return attempt
    if attempt.stripe_payment_intent_id:
        result = gateway.payment_intent_retrieve(payment_intent_id=attempt.stripe_payment_intent_id)
    elif timezone.now() - attempt.created_at < IDEMPOTENCY_KEY_WINDOW:
        return payment_attempt_charge(attempt_id=attempt.pk)  # same key: Stripe replays its answer
    else:
        result = gateway.payment_intent_find_by_metadata(
            key="payment_attempt_id",
            value=str(attempt.pk),
            created_after=attempt.created_at - timedelta(hours=1),
        )
        if result is None:
            return attempt  # never reached Stripe: stays for an operator (reported by the reconciler)
    if result.status == "requires_action" and attempt.status == AttemptStatus.REQUIRES_ACTION:
        return attempt
    return payment_attempt_record(attempt_id=attempt.pk, result=result)


def payment_attempts_reconcile(*, older_than: timedelta = timedelta(minutes=2), limit: int = 100) -> dict:
    """Settle attempts left pending (crash before the call) or unknown (timeout). Safe to run
    concurrently: each worker takes rows with SKIP LOCKED."""
    cutoff = timezone.now() - older_than
    settled: dict[str, int] = {}
    with transaction.atomic():
        ids = list(
            PaymentAttempt.objects.select_for_update(skip_locked=True)
            .filter(status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN], updated_at__lt=cutoff)
            .order_by("updated_at")
            .values_list("pk", flat=True)[:limit]
        )
    for attempt_id in ids:
        try:
            attempt = payment_attempt_refresh(attempt_id=attempt_id)
        except gateway.PaymentGatewayError as exc:
            log.warning("reconcile_attempt_failed", attempt=str(attempt_id), error=str(exc))
            continue
        settled[attempt.status] = settled.get(attempt.status, 0) + 1
    return settled


def payment_attempts_abandon_for(*, invoices) -> None:
    """Before a new checkout of the same thing: give up earlier attempts still waiting for the
    customer (3-D Secure never completed). Their PaymentIntents are canceled at Stripe first, so a
    late authentication cannot charge; one that succeeded meanwhile is recorded as paid instead.
    An attempt whose outcome is still unknown blocks the new checkout (409)."""
    attempts = PaymentAttempt.objects.filter(invoice__in=invoices)
    if attempts.filter(status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN]).exists():
        raise Conflict(
            "An earlier payment for this is still being confirmed; try again in a few minutes.",
            code=ErrorCode.CONFLICT,
        )
    for attempt in attempts.filter(status=AttemptStatus.REQUIRES_ACTION):
        result = gateway.payment_intent_cancel(payment_intent_id=attempt.stripe_payment_intent_id)
        if result.status == "declined":
            result = gateway.ChargeResult(
                status="declined",
                payment_intent_id=result.payment_intent_id,
                decline_code="authentication_abandoned",
                message="Abandoned: a new checkout of the same offer was started.",
                amount=result.amount,
                metadata=result.metadata,
            )
        payment_attempt_record(attempt_id=attempt.pk, result=result)
