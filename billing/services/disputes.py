"""Disputes: open a case, suspend what the disputed payment paid for, close it on the outcome.

`dispute_record` is called with what Stripe holds of a dispute (re-read from Stripe; localstripe
has no disputes, so there the verified webhook's copy) for `charge.dispute.created`, `.updated`
and `.closed` alike. It is idempotent and order-independent:

1. The dispute must be for one of our payments (its PaymentIntent is an attempt of ours, whose
   re-read PaymentIntent carries our attempt id), in the payment's currency and for no more than
   it; otherwise `DisputeRefused` and nothing changes. Stripe data is untrusted input.
2. Unknown dispute: a case opens (`open`) and, where the offer's `dispute_policy` is `suspend`,
   the payment's entitlements end now; each remembers its original end (`DisputeSuspension`).
3. Stripe says it is over: `won` puts the original ends back (except where the rights have
   ended for another reason since: refunded, subscription ended, car sold under an "ends on
   transfer" offer); `lost` leaves them ended and books the disputed amount as lost.
   A `closed` that arrives before `created` therefore ends in the same state, and a closed case
   never reopens (its transition table has no way back; a stale event changes nothing).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import structlog
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    Dispute,
    DisputeStatus,
    DisputeSuspension,
    Entitlement,
    Invoice,
    InvoiceKind,
    Offer,
    PaymentAttempt,
    PurchaseStatus,
)
from billing.services import outbound_events
from billing.services.entitlements import entitlement_restore, entitlements_suspend
from billing.services.transitions import dispute_transition
from core.errors import BillingError, ErrorCode
from core.money import Money
from vehicles.models import Ownership, Vehicle

log = structlog.get_logger(__name__)

# Stripe's dispute statuses that close it. `warning_closed`: an inquiry closed without a
# chargeback (the money stays); `prevented`: stopped before it became a dispute.
_WON = frozenset({"won", "warning_closed", "prevented"})
_LOST = frozenset({"lost"})


class DisputeRefused(BillingError):
    """The dispute is not provably about one of our payments: nothing changes."""

    status_code = 422
    default_code = ErrorCode.VALIDATION_ERROR


def dispute_outcome(stripe_status: str) -> str:
    """Our status for Stripe's: won, lost, or still open."""
    if stripe_status in _WON:
        return DisputeStatus.WON
    if stripe_status in _LOST:
        return DisputeStatus.LOST
    return DisputeStatus.OPEN


def dispute_record(*, info: gateway.DisputeInfo, at: datetime | None = None) -> Dispute:
    """Record what Stripe holds of a dispute (see the module docstring). Raises `DisputeRefused`."""
    at = at or timezone.now()
    if not info.id.startswith(("dp_", "du_")):
        raise DisputeRefused("not a Stripe dispute id")
    attempt = _our_disputed_payment(info)
    target = dispute_outcome(info.status)
    with transaction.atomic():
        if attempt.invoice.vehicle_id is not None:  # locks: vehicle first, as everywhere
            list(Vehicle.objects.select_for_update().filter(pk=attempt.invoice.vehicle_id).values_list("pk"))
        dispute = Dispute.objects.select_for_update().filter(stripe_dispute_id=info.id).first()
        if dispute is None:
            dispute = _open(info=info, attempt=attempt, at=at)
        elif dispute.payment_attempt_id != attempt.pk:
            raise DisputeRefused("the dispute is recorded for another payment")
        if dispute.status != DisputeStatus.OPEN:
            return dispute  # closed once and for all: a late or stale event changes nothing
        if dispute.stripe_status != info.status:
            dispute.stripe_status = info.status[:32]
            dispute.save(update_fields=["stripe_status", "updated_at"])
        if target == DisputeStatus.WON:
            _close_won(dispute=dispute, at=at)
        elif target == DisputeStatus.LOST:
            _close_lost(dispute=dispute, at=at)
    return dispute


def _our_disputed_payment(info: gateway.DisputeInfo) -> PaymentAttempt:
    """R27: the dispute's PaymentIntent is one of our payments, re-read at Stripe; same currency,
    amount above zero and not above the payment's. A payment whose success we missed is recorded
    first (the dispute proves the charge went through only once Stripe confirms it)."""
    from billing.services.payments import PaymentResultMismatch, payment_attempt_record

    if not info.payment_intent_id:
        raise DisputeRefused("the dispute names no PaymentIntent")
    attempt = (
        PaymentAttempt.objects.select_related("invoice")
        .filter(stripe_payment_intent_id=info.payment_intent_id)
        .first()
    )
    if attempt is None:
        raise DisputeRefused("the disputed PaymentIntent is not one of our payments")
    if info.amount is None or info.amount.currency != attempt.currency:
        raise DisputeRefused("the dispute's currency differs from the payment's")
    if not 0 < info.amount.amount_minor <= attempt.amount_minor:
        raise DisputeRefused("the disputed amount is not within the payment's")
    try:
        intent = gateway.payment_intent_retrieve(payment_intent_id=info.payment_intent_id)
    except gateway.InvalidRequest as exc:  # 404: Stripe has no such PaymentIntent
        raise DisputeRefused("the disputed PaymentIntent is not at Stripe") from exc
    if intent.metadata.get("payment_attempt_id") != str(attempt.pk) or intent.amount != Money(
        attempt.amount_minor, attempt.currency
    ):
        raise DisputeRefused("the PaymentIntent at Stripe is not this payment's")
    if attempt.status != AttemptStatus.SUCCEEDED and intent.status == "succeeded":
        try:
            attempt = payment_attempt_record(attempt_id=attempt.pk, result=intent)
        except PaymentResultMismatch as exc:
            raise DisputeRefused(exc.message) from exc
    if attempt.status != AttemptStatus.SUCCEEDED:
        raise DisputeRefused(f"the disputed payment is {attempt.status}, not succeeded")
    return attempt


def _open(*, info: gateway.DisputeInfo, attempt: PaymentAttempt, at: datetime) -> Dispute:
    offer = _offer_of(attempt.invoice)
    policy = offer.dispute_policy if offer is not None else Offer.DisputePolicy.KEEP
    assert info.amount is not None  # a dispute always disputes an amount
    dispute = Dispute.objects.create(
        stripe_dispute_id=info.id,
        payment_attempt=attempt,
        stripe_charge_id=info.charge_id or "",
        amount_minor=info.amount.amount_minor,
        currency=attempt.currency,
        reason=info.reason[:64],
        stripe_status=info.status[:32],
        policy=policy,
        opened_at=at,
    )
    if policy == Offer.DisputePolicy.SUSPEND:
        ids = list(_entitlements_paid_by(attempt.invoice).values_list("pk", flat=True))
        DisputeSuspension.objects.bulk_create(
            DisputeSuspension(
                dispute=dispute,
                entitlement=entitlement,
                original_ends_at=original,
                suspended_ends_at=cast(datetime, entitlement.ends_at),  # the suspension ended it
            )
            for entitlement, original in entitlements_suspend(entitlement_ids=ids, at=at)
        )
    outbound_events.dispute_opened(dispute)  # outbox
    log.warning(
        "dispute_opened",
        dispute=info.id,
        payment=str(attempt.pk),
        policy=policy,
        suspended=dispute.suspensions.count(),
    )
    return dispute


def _close_won(*, dispute: Dispute, at: datetime) -> None:
    attempt = dispute.payment_attempt
    suspensions = dispute.suspensions.filter(restored_at__isnull=True).select_related(
        "entitlement__purchase__offer", "entitlement__subscription__offer"
    )
    for suspension in suspensions:
        if _ended_for_another_reason(suspension.entitlement, attempt=attempt):
            continue
        if entitlement_restore(
            entitlement_id=suspension.entitlement_id,
            suspended_ends_at=suspension.suspended_ends_at,
            ends_at=_end_to_restore(suspension),
        ):
            suspension.restored_at = at
            suspension.save(update_fields=["restored_at"])
    dispute_transition(dispute=dispute, to=DisputeStatus.WON, closed_at=at)
    outbound_events.dispute_closed(dispute)  # outbox
    log.info("dispute_won", dispute=dispute.stripe_dispute_id, payment=str(attempt.pk))


def _close_lost(*, dispute: Dispute, at: datetime) -> None:
    dispute_transition(dispute=dispute, to=DisputeStatus.LOST, closed_at=at, lost_minor=dispute.amount_minor)
    outbound_events.dispute_closed(dispute)  # outbox
    log.warning(
        "dispute_lost",
        dispute=dispute.stripe_dispute_id,
        payment=str(dispute.payment_attempt_id),
        lost_minor=dispute.amount_minor,
        currency=dispute.currency,
    )


def _ended_for_another_reason(entitlement: Entitlement, *, attempt: PaymentAttempt) -> bool:
    """While the dispute was open: the purchase was refunded, or the car was sold under an offer
    whose rights end on resale."""
    purchase, subscription = entitlement.purchase, entitlement.subscription
    if purchase is not None and purchase.status == PurchaseStatus.REFUNDED:
        return True
    offer = purchase.offer if purchase is not None else getattr(subscription, "offer", None)
    if offer is None or offer.transfer_policy != Offer.TransferPolicy.ENDS_ON_TRANSFER:
        return False
    owner_now = (
        Ownership.objects.filter(vehicle_id=entitlement.vehicle_id, ends_at__isnull=True)
        .values_list("owner_id", flat=True)
        .first()
    )
    return owner_now != attempt.owner_id


def _end_to_restore(suspension: DisputeSuspension) -> datetime | None:
    """The original end (None: perpetual), cut where the subscription has ended since."""
    ends_at, subscription = suspension.original_ends_at, suspension.entitlement.subscription
    if subscription is None or subscription.ended_at is None:
        return ends_at
    return subscription.ended_at if ends_at is None else min(ends_at, subscription.ended_at)


def _offer_of(invoice: Invoice) -> Offer | None:
    if invoice.kind == InvoiceKind.PURCHASE and invoice.purchase is not None:
        return invoice.purchase.offer
    if invoice.kind == InvoiceKind.PLAN_CHANGE and invoice.change_to_price is not None:
        return invoice.change_to_price.offer
    return invoice.subscription.offer if invoice.subscription is not None else None


def _entitlements_paid_by(invoice: Invoice) -> QuerySet[Entitlement]:
    """The rows the invoice's payment paid for: the purchase's, the period's, or those the plan
    change granted when it was paid."""
    if invoice.kind == InvoiceKind.PURCHASE:
        assert invoice.purchase_id is not None  # a purchase's invoice
        return Entitlement.objects.filter(purchase_id=invoice.purchase_id)
    if invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD and invoice.period_start and invoice.period_end:
        assert invoice.subscription_id is not None  # a period's invoice
        return Entitlement.objects.filter(
            subscription_id=invoice.subscription_id,
            starts_at__gte=invoice.period_start,
            starts_at__lt=invoice.period_end,
        )
    if invoice.kind == InvoiceKind.PLAN_CHANGE and invoice.paid_at:
        assert invoice.subscription_id is not None  # a plan change's invoice
        return Entitlement.objects.filter(subscription_id=invoice.subscription_id, starts_at=invoice.paid_at)
    return Entitlement.objects.none()
