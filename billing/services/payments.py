"""Charging exactly once.

1. `payment_attempt_create` commits the attempt row (one live attempt per invoice: a constraint).
2. `payment_attempt_charge` calls Stripe with `idempotency_key = attempt.idempotency_key`.
3. `payment_attempt_record` stores the outcome in a new transaction, locks the row, applies the
   allowed transition and fulfils the invoice once (the renewal sweep records a batch of plain
   successes at once: `renewal_answers_record`). A timeout leaves the attempt `unknown`, never
   `declined`; the reconciler (`payment_attempts_reconcile`) settles it with the same key.

Money taken is never lost: the attempt's `succeeded` is saved before fulfilment runs, in a
savepoint of its own. Fulfilment that can no longer deliver (the subscription ended, the car was
sold, a clash with a live plan), or that fails for any reason, refunds the payment in full
through the refund service instead of raising.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import AttemptStatus, Invoice, InvoiceStatus, PaymentAttempt, PaymentMethod
from billing.models.payments import ATTEMPT_TRANSITIONS
from billing.services.customers import owner_ensure_stripe_customer
from billing.services.fulfilment import (
    invoice_fulfil_failed,
    invoice_fulfil_paid,
    invoice_undeliverable_reason,
    renewals_fulfil_paid,
)
from billing.services.reconcile import reconcile_failure_record, reconcile_retry_now
from billing.services.refunds import refund_execute_safely, refund_prepare, refundable_minor
from billing.services.transitions import (
    invoice_transition,
    payment_attempt_transition,
    payment_attempts_transition,
)
from core.errors import BillingError, Conflict, ErrorCode
from core.money import Money
from vehicles.models import Vehicle

log = structlog.get_logger(__name__)

_RESULT_STATUS = {
    "succeeded": AttemptStatus.SUCCEEDED,
    "declined": AttemptStatus.DECLINED,
    "requires_action": AttemptStatus.REQUIRES_ACTION,
    "processing": AttemptStatus.UNKNOWN,
}
# Keys are kept by Stripe for at least 24 h: within that, replaying the create is safe.
IDEMPOTENCY_KEY_WINDOW = timedelta(hours=23)
# Recording an outcome after Stripe charged must not be lost to a busy database: retried.
RECORD_TRIES = 4


class PaymentResultMismatch(BillingError):
    """Stripe's answer is not for this attempt (amount, currency or our id in its metadata differ,
    or are missing). Nothing is recorded; the reconciler retries and dead-letters the row."""

    status_code = 502
    default_code = ErrorCode.PAYMENT_PROVIDER_ERROR


def _requires_action_check_after() -> timedelta:
    return timedelta(minutes=getattr(settings, "PAYMENTS_REQUIRES_ACTION_CHECK_MINUTES", 15))


def requires_action_cancel_after() -> timedelta:
    """How long a payment may wait for 3-D Secure before it is canceled at Stripe."""
    return timedelta(hours=getattr(settings, "PAYMENTS_REQUIRES_ACTION_CANCEL_HOURS", 24))


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


def payment_attempt_charge(
    *, attempt_id: UUID | str, off_session: bool = True, at: datetime | None = None
) -> PaymentAttempt:
    """Call Stripe for a committed attempt (step 2) and record what came back (step 3)."""
    attempt = PaymentAttempt.objects.select_related("owner", "payment_method").get(pk=attempt_id)
    if attempt.status not in (AttemptStatus.PENDING, AttemptStatus.UNKNOWN):
        return attempt
    return payment_attempt_answer_record(
        attempt=attempt, answer=payment_attempt_call_stripe(attempt=attempt, off_session=off_session), at=at
    )


@dataclass(frozen=True)
class StripeAnswer:
    """What one PaymentIntent create gave: a result, an unknown outcome, or nothing charged."""

    result: gateway.ChargeResult | None = None
    unknown: str | None = None  # the outcome is unknown: why (the reconciler replays the key)
    not_charged: tuple[str, str] | None = None  # (code, message): refused before or by Stripe


def payment_attempt_call_stripe(*, attempt: PaymentAttempt, off_session: bool = True) -> StripeAnswer:
    """Step 2 alone: create and confirm the attempt's PaymentIntent (its key from the row).
    Never raises; reads the owner and the card from `attempt` (select them with it)."""
    try:
        customer_id = owner_ensure_stripe_customer(owner=attempt.owner)
        result = gateway.payment_intent_create(
            amount=Money(attempt.amount_minor, attempt.currency),
            customer_id=customer_id,
            # a card deleted meanwhile (SET_NULL) raises AttributeError: the reconciler records it
            payment_method_id=attempt.payment_method.stripe_payment_method_id,  # type: ignore[union-attr]
            idempotency_key=attempt.idempotency_key,
            metadata={"payment_attempt_id": str(attempt.pk), "invoice_id": str(attempt.invoice_id)},
            off_session=off_session,
        )
    except gateway.InvalidRequest as exc:
        # Stripe refused the request itself (400): nothing was charged. A bug of ours, logged loudly.
        log.error("payment_request_refused", attempt=str(attempt.pk), error=str(exc))
        return StripeAnswer(not_charged=("provider_rejected", str(exc)))
    except gateway.PaymentGatewayError as exc:  # timeout, 5xx, 429, key conflict: outcome unknown
        log.warning("payment_outcome_unknown", attempt=str(attempt.pk), error=str(exc))
        return StripeAnswer(unknown=str(exc))
    except BillingError as exc:  # refused before any call (e.g. an amount Stripe cannot take)
        log.error("payment_not_sendable", attempt=str(attempt.pk), error=exc.message)
        return StripeAnswer(not_charged=(str(exc.code), exc.message))
    return StripeAnswer(result=result)


def payment_attempt_answer_record(
    *, attempt: PaymentAttempt, answer: StripeAnswer, at: datetime | None = None
) -> PaymentAttempt:
    """Step 3 for one attempt: record `answer` (see `payment_attempt_record`)."""
    if answer.not_charged is not None:
        return _record_not_charged(attempt, *answer.not_charged, at=at)
    if answer.result is None:
        return payment_attempt_mark_unknown(attempt_id=attempt.pk, reason=answer.unknown or "no answer")
    return _record_after_charge(attempt, answer.result, at=at)


def renewal_answers_record(
    answers: Sequence[tuple[PaymentAttempt, StripeAnswer]], *, at: datetime
) -> list[PaymentAttempt]:
    """Step 3 for a batch of renewal charges (the sweep's), in order of `answers`.

    The plain case, a succeeded PaymentIntent that is provably the attempt's and a renewal still
    deliverable, is recorded and fulfilled for the whole batch in one transaction with a constant
    number of statements. Everything else (declines, 3-D Secure, unknown outcomes, mismatches,
    what can no longer be delivered) and the whole batch if that transaction fails, goes through
    `payment_attempt_answer_record`, one by one, exactly as a single charge does. Never raises.
    """
    plain = {
        attempt.pk: answer.result
        for attempt, answer in answers
        if answer.result is not None
        and answer.result.status == "succeeded"
        and answer.result.payment_intent_id
        and _mismatch(attempt, answer.result) is None
    }
    recorded: dict[Any, PaymentAttempt] = {}
    if plain:
        try:
            recorded = _renewals_record_succeeded(plain, at=at)
        except Exception:
            log.exception("renewal_batch_record_failed", attempts=len(plain))
            recorded = {}
    outcomes = []
    for attempt, answer in answers:
        if attempt.pk in recorded:
            outcomes.append(recorded[attempt.pk])
            continue
        try:
            outcomes.append(payment_attempt_answer_record(attempt=attempt, answer=answer, at=at))
        except Exception:  # never raise after a charge: the reconciler replays the key
            log.exception("payment_record_failed", attempt=str(attempt.pk))
            outcomes.append(attempt)
    return outcomes


def _renewals_record_succeeded(
    results: Mapping[Any, gateway.ChargeResult], *, at: datetime
) -> dict[Any, PaymentAttempt]:
    """Record succeeded renewal charges in one transaction; returns the attempts it recorded
    (the rest are left untouched for the one-by-one path). Locks as every payment does: cars,
    then attempts, then invoices (then subscriptions, in `renewals_fulfil_paid`), each in id order."""
    with transaction.atomic():
        invoice_of = dict(PaymentAttempt.objects.filter(pk__in=list(results)).values_list("pk", "invoice_id"))
        vehicle_ids = Invoice.objects.filter(pk__in=set(invoice_of.values()), vehicle_id__isnull=False)
        list(
            Vehicle.objects.select_for_update()
            .filter(pk__in=vehicle_ids.values("vehicle_id"))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        locked = PaymentAttempt.objects.select_for_update().filter(pk__in=list(results)).order_by("pk")
        attempts = [
            attempt
            for attempt in locked
            if attempt.status in (AttemptStatus.PENDING, AttemptStatus.UNKNOWN)
            and _mismatch(attempt, results[attempt.pk]) is None
        ]
        invoices = list(
            Invoice.objects.select_for_update().filter(pk__in=[a.invoice_id for a in attempts]).order_by("pk")
        )
        payers = {attempt.invoice_id: attempt.owner_id for attempt in attempts}
        fulfilled = renewals_fulfil_paid(invoices=invoices, payers=payers, at=at)
        succeeded = [attempt for attempt in attempts if attempt.invoice_id in fulfilled]
        payment_attempts_transition(
            attempts=succeeded,
            to=AttemptStatus.SUCCEEDED,
            changes=[
                {
                    "stripe_payment_intent_id": results[attempt.pk].payment_intent_id,
                    "client_secret": "",
                    "error_code": "",
                    "error_message": "",
                    "next_reconcile_at": None,
                }
                for attempt in succeeded
            ],
        )
        log.info("renewal_payments_recorded", succeeded=len(succeeded), of=len(results))
        return {attempt.pk: attempt for attempt in succeeded}


def _record_not_charged(
    attempt: PaymentAttempt, code: str, message: str, *, at: datetime | None
) -> PaymentAttempt:
    refused = gateway.ChargeResult(
        status="declined", payment_intent_id=None, decline_code=code, message=message
    )
    return payment_attempt_record(attempt_id=attempt.pk, result=refused, at=at)


def _record_after_charge(
    attempt: PaymentAttempt, result: gateway.ChargeResult, *, at: datetime | None
) -> PaymentAttempt:
    """Stripe has answered: record it, retrying a busy database; never raise (the money moved).
    What cannot be recorded now stays pending/unknown for the reconciler, which replays the key."""
    for attempt_no in range(RECORD_TRIES):
        try:
            return payment_attempt_record(attempt_id=attempt.pk, result=result, at=at)
        except PaymentResultMismatch as exc:
            return payment_attempt_mark_unknown(attempt_id=attempt.pk, reason=exc.message)
        except DatabaseError as exc:
            log.warning("payment_record_retry", attempt=str(attempt.pk), error=str(exc), try_no=attempt_no)
            time.sleep(2**attempt_no / 20)  # 50, 100, 200 ms
    log.error("payment_record_deferred", attempt=str(attempt.pk), status=result.status)
    try:
        return payment_attempt_mark_unknown(
            attempt_id=attempt.pk, reason="outcome not recorded: database busy"
        )
    except DatabaseError:
        return attempt  # still pending: the reconciler replays the same key and records it


def payment_attempt_mark_unknown(*, attempt_id: UUID | str, reason: str) -> PaymentAttempt:
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().get(pk=attempt_id)
        if attempt.status == AttemptStatus.PENDING:
            payment_attempt_transition(attempt=attempt, to=AttemptStatus.UNKNOWN, error_message=reason[:500])
        return attempt


def payment_attempt_record(
    *, attempt_id: UUID | str, result: gateway.ChargeResult, at: datetime | None = None
) -> PaymentAttempt:
    """Record a Stripe outcome once; fulfil or fail the invoice in the same transaction.

    Raises `PaymentResultMismatch` (and records nothing) when the result is not provably this
    attempt's: Stripe data is untrusted input, so the check fails closed.
    """
    at = at or timezone.now()
    target = _RESULT_STATUS[result.status]
    with transaction.atomic():
        _lock_vehicle_of(attempt_id)
        attempt = PaymentAttempt.objects.select_for_update().get(pk=attempt_id)
        if attempt.status == target or target not in ATTEMPT_TRANSITIONS[attempt.status]:
            return attempt  # already recorded, or a stale outcome: nothing to do
        mismatch = _mismatch(attempt, result)
        if mismatch:
            log.error("payment_result_mismatch", attempt=str(attempt.pk), reason=mismatch)
            raise PaymentResultMismatch(f"The payment provider's answer does not match: {mismatch}.")
        requires_action, declined = target == AttemptStatus.REQUIRES_ACTION, target == AttemptStatus.DECLINED
        payment_attempt_transition(
            attempt=attempt,
            to=target,
            stripe_payment_intent_id=result.payment_intent_id or attempt.stripe_payment_intent_id,
            client_secret=(result.client_secret or "") if requires_action else "",
            error_code=(result.decline_code or "card_declined") if declined else "",
            error_message=(result.message or "")[:500] if declined else "",
            next_reconcile_at=None,
        )
        if target == AttemptStatus.SUCCEEDED:
            _fulfil_or_refund(attempt=attempt, at=at)
        elif target == AttemptStatus.DECLINED:
            _fail_quietly(attempt=attempt, at=at)
        log.info("payment_attempt_recorded", attempt=str(attempt.pk), status=target)
        return attempt


def _lock_vehicle_of(attempt_id: UUID | str) -> None:
    """Locks are always taken vehicle first (then payment, invoice, subscription), as checkouts,
    plan changes and resale claims do: fulfilment racing a checkout of the same car cannot deadlock."""
    vehicle_id = (
        PaymentAttempt.objects.filter(pk=attempt_id).values_list("invoice__vehicle_id", flat=True).first()
    )
    if vehicle_id is not None:
        list(Vehicle.objects.select_for_update().filter(pk=vehicle_id).values_list("pk", flat=True))


def _fulfil_or_refund(*, attempt: PaymentAttempt, at: datetime) -> None:
    """Deliver what was paid for; if that is no longer possible, refund in full. Never raises:
    the attempt's `succeeded` is already saved in the enclosing transaction."""
    try:
        with transaction.atomic():
            invoice = Invoice.objects.select_for_update().get(pk=attempt.invoice_id)
            reason = invoice_undeliverable_reason(invoice=invoice, owner_id=attempt.owner_id, at=at)
            if reason is None:
                if invoice.status != InvoiceStatus.PAID:
                    invoice_fulfil_paid(invoice=invoice, at=at)
                return
            if invoice.status == InvoiceStatus.OPEN:
                invoice_transition(invoice=invoice, to=InvoiceStatus.PAID, at=at)
    except Exception as exc:
        log.exception("fulfilment_failed", attempt=str(attempt.pk), invoice=str(attempt.invoice_id))
        reason = f"it could not be delivered ({type(exc).__name__})"
    log.warning("payment_undeliverable", attempt=str(attempt.pk), reason=reason)
    payment_attempt_refund_undelivered(attempt=attempt, reason=reason)


def payment_attempt_refund_undelivered(*, attempt: PaymentAttempt, reason: str) -> None:
    """Refund a payment whose purchase cannot be delivered: a recorded refund row (exactly once:
    it takes what is left to refund), sent to Stripe after commit, finished by the reconciler."""
    remaining = refundable_minor(payment_attempt=attempt)
    if remaining <= 0:
        return
    refund = refund_prepare(
        payment_attempt=attempt, amount_minor=remaining, reason=f"not delivered: {reason}"
    )
    transaction.on_commit(lambda: refund_execute_safely(refund_id=refund.pk))


def _fail_quietly(*, attempt: PaymentAttempt, at: datetime) -> None:
    """A decline grants nothing; closing what it was for must not undo recording the decline."""
    try:
        with transaction.atomic():
            invoice = Invoice.objects.select_for_update().get(pk=attempt.invoice_id)
            invoice_fulfil_failed(invoice=invoice, at=at)
    except Exception:
        log.exception("decline_fulfilment_failed", attempt=str(attempt.pk))


def _mismatch(attempt: PaymentAttempt, result: gateway.ChargeResult) -> str | None:
    """Why `result` is not provably this attempt's PaymentIntent (None: it is).

    A decline we made up ourselves (no PaymentIntent: nothing reached Stripe) moves no money and
    needs no proof. Anything else must carry our amount, currency and attempt id.
    """
    if result.payment_intent_id is None and result.status == "declined":
        return None
    if result.amount is None:
        return "amount unknown"
    if result.amount != Money(attempt.amount_minor, attempt.currency):
        return f"amount {result.amount} instead of {Money(attempt.amount_minor, attempt.currency)}"
    claimed = result.metadata.get("payment_attempt_id")
    if claimed is None:
        return "our payment id is missing from its metadata"
    if claimed != str(attempt.pk):
        return "it belongs to another payment"
    return None


def payment_attempt_refresh(*, attempt_id: UUID | str, at: datetime | None = None) -> PaymentAttempt:
    """Ask Stripe where an attempt stands (after 3-D Secure, or for an unknown outcome).

    A payment waiting for 3-D Secure longer than `requires_action_cancel_after()` is canceled at
    Stripe (a late authentication can then no longer charge); if it succeeded meanwhile, that is
    recorded instead.
    """
    now = at or timezone.now()
    attempt = PaymentAttempt.objects.get(pk=attempt_id)
    if attempt.status not in (AttemptStatus.REQUIRES_ACTION, AttemptStatus.UNKNOWN, AttemptStatus.PENDING):
        return attempt
    result: gateway.ChargeResult | None
    if attempt.stripe_payment_intent_id:
        result = gateway.payment_intent_retrieve(payment_intent_id=attempt.stripe_payment_intent_id)
    elif now - attempt.created_at < IDEMPOTENCY_KEY_WINDOW:
        return payment_attempt_charge(attempt_id=attempt.pk, at=at)  # same key: Stripe replays its answer
    else:
        result = gateway.payment_intent_find_by_metadata(
            key="payment_attempt_id",
            value=str(attempt.pk),
            created_after=attempt.created_at - timedelta(hours=1),
        )
        if result is None:
            # A day after the attempt, Stripe holds no PaymentIntent carrying its id (the search
            # is eventually consistent within a minute): it never reached Stripe, nothing was
            # charged. Recorded as declined, which frees the invoice for a new checkout.
            result = gateway.ChargeResult(
                status="declined",
                payment_intent_id=None,
                decline_code="never_reached_provider",
                message="The payment never reached the payment provider; nothing was charged.",
            )
    if result.status == "requires_action":
        if (
            attempt.status == AttemptStatus.REQUIRES_ACTION
            and now - attempt.created_at >= requires_action_cancel_after()
        ):
            return _cancel_at_stripe(attempt=attempt, reason="authentication_expired", at=at)
        if attempt.status == AttemptStatus.REQUIRES_ACTION:
            return attempt
    return payment_attempt_record(attempt_id=attempt.pk, result=result, at=at)


def _cancel_at_stripe(*, attempt: PaymentAttempt, reason: str, at: datetime | None = None) -> PaymentAttempt:
    """Cancel a PaymentIntent still waiting for the customer, then record what Stripe says: a
    cancellation (no money moved) or a success that happened meanwhile."""
    result = gateway.payment_intent_cancel(payment_intent_id=attempt.stripe_payment_intent_id)
    if result.status == "declined":
        result = gateway.ChargeResult(
            status="declined",
            payment_intent_id=result.payment_intent_id,
            decline_code=reason,
            message="The payment was waiting for 3-D Secure and was canceled.",
            amount=result.amount,
            metadata=result.metadata,
        )
    return payment_attempt_record(attempt_id=attempt.pk, result=result, at=at)


def _reconcilable(at: datetime, older_than: timedelta) -> Q:
    return (
        (
            Q(status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN], updated_at__lt=at - older_than)
            | Q(status=AttemptStatus.REQUIRES_ACTION, updated_at__lt=at - _requires_action_check_after())
        )
        & Q(dead_lettered_at__isnull=True)
        & (Q(next_reconcile_at__isnull=True) | Q(next_reconcile_at__lte=at))
    )


def payment_attempts_reconcile(
    *, older_than: timedelta = timedelta(minutes=2), limit: int = 100, at: datetime | None = None
) -> dict:
    """Settle attempts left pending (crash before the call), unknown (timeout) or waiting for
    3-D Secure that the app never confirmed. Oldest first; each row in its own transaction, held
    locked while it is worked on (concurrent runs skip it); a row that raises is recorded with
    its error and backed off, and the others go on. Returns counts per resulting status."""
    at = at or timezone.now()
    settled: dict[str, int] = {}
    ids = list(
        PaymentAttempt.objects.filter(_reconcilable(at, older_than))
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    for attempt_id in ids:
        try:
            with transaction.atomic():
                claimed = (
                    PaymentAttempt.objects.select_for_update(skip_locked=True)
                    .filter(_reconcilable(at, older_than), pk=attempt_id)
                    .first()
                )
                if claimed is None:
                    continue  # another worker has it, or it settled meanwhile
                attempt = payment_attempt_refresh(attempt_id=attempt_id, at=at)
                if attempt.status == AttemptStatus.REQUIRES_ACTION:  # still waiting: look again later
                    PaymentAttempt.objects.filter(pk=attempt_id).update(
                        next_reconcile_at=at + _requires_action_check_after()
                    )
        except Exception as exc:  # noqa: BLE001 - one row never stalls the others
            reconcile_failure_record(model=PaymentAttempt, pk=attempt_id, error=exc, at=at)
            settled["failed"] = settled.get("failed", 0) + 1
            continue
        settled[attempt.status] = settled.get(attempt.status, 0) + 1
    return settled


def payment_attempt_retry_now(*, attempt_id: UUID | str) -> PaymentAttempt:
    """An operator's "retry now" on a dead-lettered or backed-off row."""
    return reconcile_retry_now(
        model=PaymentAttempt, pk=attempt_id, work=lambda: payment_attempt_refresh(attempt_id=attempt_id)
    )


def payment_attempts_abandon_for(*, invoices: Iterable[Invoice], block_on_unknown: bool = True) -> None:
    """Before a new checkout of the same thing (or ending what it was for): give up earlier
    attempts still waiting for the customer (3-D Secure never completed). Their PaymentIntents
    are canceled at Stripe first, so a late authentication cannot charge; one that succeeded
    meanwhile is recorded as paid instead. An attempt whose outcome is still unknown blocks
    (409) unless `block_on_unknown` is False; it is then settled by the reconciler, whose
    fulfilment refunds what can no longer be delivered."""
    attempts = PaymentAttempt.objects.filter(invoice__in=invoices)
    if (
        block_on_unknown
        and attempts.filter(status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN]).exists()
    ):
        raise Conflict(
            "An earlier payment for this is still being confirmed; try again in a few minutes.",
            code=ErrorCode.CONFLICT,
        )
    for attempt in attempts.filter(status=AttemptStatus.REQUIRES_ACTION):
        _cancel_at_stripe(attempt=attempt, reason="authentication_abandoned")
