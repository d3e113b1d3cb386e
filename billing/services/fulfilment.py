"""What a settled invoice does: paid -> rights granted, failed -> nothing granted.

Called only from `payments.payment_attempt_record`, inside its transaction, with the invoice
locked: so a payment is fulfilled exactly once, however often its outcome is recorded.
"""

from __future__ import annotations

from datetime import datetime

from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.models.subscriptions import SUBSCRIPTION_TRANSITIONS
from billing.services.entitlements import (
    entitlements_end,
    entitlements_grant_for_purchase,
    entitlements_grant_for_subscription_period,
)
from billing.services.invoices import invoice_transition
from core.errors import BusinessRuleViolation, ErrorCode


def subscription_transition(*, subscription: Subscription, to: str) -> None:
    """Move a locked subscription to `to` if the state machine allows it."""
    if to != subscription.status and to not in SUBSCRIPTION_TRANSITIONS[subscription.status]:
        raise BusinessRuleViolation(
            f"A subscription cannot go from {subscription.status} to {to}.", code=ErrorCode.INVALID_STATE
        )
    subscription.status = to


def invoice_fulfil_paid(*, invoice: Invoice, at: datetime) -> None:
    invoice_transition(invoice=invoice, to=InvoiceStatus.PAID, at=at)
    if invoice.kind == InvoiceKind.PURCHASE:
        purchase = Purchase.objects.select_for_update().get(pk=invoice.purchase_id)
        purchase.status, purchase.paid_at = PurchaseStatus.PAID, at
        purchase.save(update_fields=["status", "paid_at"])
        entitlements_grant_for_purchase(purchase=purchase, starts_at=at)
        return
    subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
    if invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD:
        subscription_transition(subscription=subscription, to=SubscriptionStatus.ACTIVE)
        subscription.save(update_fields=["status", "updated_at"])
        entitlements_grant_for_subscription_period(
            subscription=subscription, period_start=invoice.period_start, period_end=invoice.period_end
        )
    elif invoice.kind == InvoiceKind.PLAN_CHANGE:
        _apply_plan_change(subscription=subscription, invoice=invoice, at=at)


def _apply_plan_change(*, subscription: Subscription, invoice: Invoice, at: datetime) -> None:
    """An upgrade takes effect the second it is paid: old features end, new ones start."""
    new_price = invoice.change_to_price
    entitlements_end(subscription=subscription, at=at)
    subscription.offer_id, subscription.price = new_price.offer_id, new_price
    subscription.pending_offer = subscription.pending_price = None
    subscription.save(update_fields=["offer", "price", "pending_offer", "pending_price", "updated_at"])
    subscription.refresh_from_db(fields=["offer"])
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=at, period_end=subscription.current_period_end
    )


def invoice_fulfil_failed(*, invoice: Invoice, at: datetime) -> None:
    """A declined payment grants nothing: a first payment closes what it was for, a renewal
    leaves the subscription past due."""
    if invoice.kind == InvoiceKind.PURCHASE:
        Purchase.objects.filter(pk=invoice.purchase_id, status=PurchaseStatus.PENDING).update(
            status=PurchaseStatus.FAILED
        )
        invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
    elif invoice.kind == InvoiceKind.PLAN_CHANGE:
        invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
    elif invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD:
        subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
        if subscription.status == SubscriptionStatus.INCOMPLETE:
            subscription.status, subscription.canceled_at, subscription.ended_at = "canceled", at, at
            subscription.save(update_fields=["status", "canceled_at", "ended_at", "updated_at"])
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
        elif subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
            # A renewal was declined: the invoice stays open for dunning, no new period is granted.
            subscription_transition(subscription=subscription, to=SubscriptionStatus.PAST_DUE)
            subscription.save(update_fields=["status", "updated_at"])
