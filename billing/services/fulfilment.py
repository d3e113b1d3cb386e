"""What a settled invoice does: paid -> rights granted, failed -> nothing granted.

Called only from `payments.payment_attempt_record`, inside its transaction, with the invoice
locked: so a payment is fulfilled exactly once, however often its outcome is recorded.
`invoice_undeliverable_reason` is asked first: a payment that settles after what it paid for
can no longer be delivered is refunded by the caller, never applied to anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services import outbound_events
from billing.services.dunning import dunning_clear, dunning_retry_failed, dunning_start
from billing.services.entitlements import (
    entitlements_end,
    entitlements_grant_for_purchase,
    entitlements_grant_for_renewals,
    entitlements_grant_for_subscription_period,
)
from billing.services.transitions import (
    invoice_transition,
    invoices_transition,
    purchase_transition,
    subscription_transition,
    subscriptions_transition,
)
from vehicles.models import Ownership


def _current_owner_id(vehicle_id: UUID | str) -> int | None:
    return (
        Ownership.objects.filter(vehicle_id=vehicle_id, ends_at__isnull=True)
        .values_list("owner_id", flat=True)
        .first()
    )


def invoice_undeliverable_reason(*, invoice: Invoice, owner_id: int, at: datetime) -> str | None:
    """Why what `invoice` paid for can no longer be delivered (None: it can). Read under the
    invoice lock, before anything is granted."""
    if invoice.status == InvoiceStatus.PAID:
        return None  # fulfilled already (a replayed outcome)
    if invoice.vehicle_id is not None and _current_owner_id(invoice.vehicle_id) != owner_id:
        return "the vehicle changed hands before the payment settled"
    if invoice.kind == InvoiceKind.PURCHASE:
        assert invoice.purchase_id is not None  # a purchase's invoice
        purchase = Purchase.objects.get(pk=invoice.purchase_id)
        if purchase.status != PurchaseStatus.PENDING:
            return f"the purchase is {purchase.status}"
        return None
    assert invoice.subscription_id is not None  # the other kinds are a subscription's
    subscription = Subscription.objects.get(pk=invoice.subscription_id)
    payable = (*LIVE_SUBSCRIPTION_STATUSES, SubscriptionStatus.UNPAID)  # unpaid: paying restores it
    if subscription.status not in payable or (
        subscription.status == SubscriptionStatus.UNPAID and invoice.kind != InvoiceKind.SUBSCRIPTION_PERIOD
    ):
        return f"the subscription is {subscription.status}"
    if invoice.kind == InvoiceKind.PLAN_CHANGE:
        target = invoice.change_to_price
        assert target is not None  # a plan change names its price
        if subscription.status != SubscriptionStatus.ACTIVE:
            return f"plans change only on an active subscription, this one is {subscription.status}"
        if subscription.offer_id == target.offer_id:
            return "the subscription is already on that plan"
        if subscription.current_period_end != invoice.period_end:
            return "the period the change was priced for is over"
        clash = Subscription.objects.filter(
            vehicle_id=subscription.vehicle_id,
            offer_id=target.offer_id,
            status__in=LIVE_SUBSCRIPTION_STATUSES,
        ).exclude(pk=subscription.pk)
        if clash.exists():
            return "the vehicle already has that plan"
    return None


def invoice_fulfil_paid(*, invoice: Invoice, at: datetime) -> None:
    invoice_transition(invoice=invoice, to=InvoiceStatus.PAID, at=at)
    if invoice.kind == InvoiceKind.PURCHASE:
        assert invoice.purchase_id is not None  # a purchase's invoice
        purchase = Purchase.objects.select_for_update().get(pk=invoice.purchase_id)
        purchase_transition(purchase=purchase, to=PurchaseStatus.PAID, paid_at=at)
        entitlements_grant_for_purchase(purchase=purchase, starts_at=at)
        outbound_events.invoice_paid(invoice)  # outbox
        return
    assert invoice.subscription_id is not None  # the other kinds are a subscription's
    subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
    if invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD:
        subscription_transition(
            subscription=subscription,
            to=SubscriptionStatus.ACTIVE,
            **dunning_clear(subscription=subscription),
        )
        assert invoice.period_start is not None and invoice.period_end is not None  # a period's invoice
        entitlements_grant_for_subscription_period(
            subscription=subscription, period_start=invoice.period_start, period_end=invoice.period_end
        )
    elif invoice.kind == InvoiceKind.PLAN_CHANGE:
        _apply_plan_change(subscription=subscription, invoice=invoice, at=at)
    outbound_events.invoice_paid(invoice)  # outbox


def renewals_fulfil_paid(*, invoices: Sequence[Invoice], payers: Mapping[Any, int], at: datetime) -> set[Any]:
    """`invoice_fulfil_paid` for a batch of renewal invoices paid at once, in a constant number of
    statements: each invoice paid, a trial that ends becomes active, the new period's
    entitlements granted, per car `entitlement.granted` then `invoice.paid`.

    The caller holds the cars and the invoices locked (in that order); the subscriptions are
    locked here. Only what is plainly deliverable is fulfilled: an open renewal invoice whose
    subscription is renewing (active or trialing) and whose car is still the payer's (`payers`:
    invoice id -> owner id). Returns the ids of the invoices fulfilled; the caller records the
    others one by one (`payment_attempt_record`, which refunds what cannot be delivered)."""
    subscriptions: dict[Any, Subscription] = {
        subscription.pk: subscription
        for subscription in Subscription.objects.select_for_update(of=("self",))
        .select_related("offer", "price", "pending_offer")
        .filter(pk__in={invoice.subscription_id for invoice in invoices})
        .order_by("pk")
    }
    vehicle_owner = dict(
        Ownership.objects.filter(
            vehicle_id__in={invoice.vehicle_id for invoice in invoices}, ends_at__isnull=True
        ).values_list("vehicle_id", "owner_id")
    )
    renewing = (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
    deliverable = [
        invoice
        for invoice in invoices
        if invoice.status == InvoiceStatus.OPEN
        and invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD
        and invoice.subscription_id in subscriptions
        and subscriptions[invoice.subscription_id].status in renewing
        and invoice.vehicle_id is not None
        and vehicle_owner.get(invoice.vehicle_id) == payers.get(invoice.pk)
        and invoice.period_start is not None
        and invoice.period_end is not None
    ]
    if not deliverable:
        return set()
    invoices_transition(invoices=deliverable, to=InvoiceStatus.PAID, at=at)
    trials = [
        subscriptions[invoice.subscription_id]
        for invoice in deliverable
        if subscriptions[invoice.subscription_id].status == SubscriptionStatus.TRIALING
    ]
    if trials:
        subscriptions_transition(
            subscriptions=trials, to=SubscriptionStatus.ACTIVE, changes=dunning_clear(subscription=trials[0])
        )
    granted = entitlements_grant_for_renewals(
        [
            (subscriptions[invoice.subscription_id], invoice.period_start, invoice.period_end)
            for invoice in deliverable
            if invoice.period_start is not None and invoice.period_end is not None  # checked above
        ]
    )
    outbound_events.renewals_paid(invoices=deliverable, subscriptions=subscriptions, entitlements=granted)
    return {invoice.pk for invoice in deliverable}


def _apply_plan_change(*, subscription: Subscription, invoice: Invoice, at: datetime) -> None:
    """An upgrade takes effect the second it is paid: old features end, new ones start."""
    new_price = invoice.change_to_price
    assert new_price is not None  # a plan change names its price
    entitlements_end(subscription=subscription, at=at)
    subscription.offer_id, subscription.price = new_price.offer_id, new_price
    subscription.pending_offer = subscription.pending_price = None
    subscription.save(update_fields=["offer", "price", "pending_offer", "pending_price", "updated_at"])
    subscription.refresh_from_db(fields=["offer"])
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=at, period_end=subscription.current_period_end
    )
    outbound_events.subscription_updated(subscription, change="plan_changed")  # outbox


def invoice_fulfil_failed(*, invoice: Invoice, at: datetime) -> None:
    """A declined payment grants nothing: a first payment closes what it was for, a renewal
    leaves the subscription past due."""
    if invoice.kind == InvoiceKind.PURCHASE:
        assert invoice.purchase_id is not None  # a purchase's invoice
        purchase = Purchase.objects.select_for_update().get(pk=invoice.purchase_id)
        if purchase.status == PurchaseStatus.PENDING:
            purchase_transition(purchase=purchase, to=PurchaseStatus.FAILED)
        if invoice.status == InvoiceStatus.OPEN:
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
    elif invoice.kind == InvoiceKind.PLAN_CHANGE:
        if invoice.status == InvoiceStatus.OPEN:
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
    elif invoice.kind == InvoiceKind.SUBSCRIPTION_PERIOD:
        assert invoice.subscription_id is not None  # a period's invoice
        subscription = Subscription.objects.select_for_update().get(pk=invoice.subscription_id)
        if subscription.status == SubscriptionStatus.INCOMPLETE:
            subscription_transition(
                subscription=subscription, to=SubscriptionStatus.CANCELED, canceled_at=at, ended_at=at
            )
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
            outbound_events.subscription_canceled(subscription)  # outbox
        elif subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
            # A renewal was declined: the invoice stays open for dunning, no paid period is granted.
            dunning_start(subscription=subscription, invoice=invoice, at=at)
        elif subscription.status == SubscriptionStatus.PAST_DUE:
            dunning_retry_failed(subscription=subscription, at=at)
        elif subscription.status == SubscriptionStatus.CANCELED and invoice.status == InvoiceStatus.OPEN:
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
    outbound_events.payment_failed(invoice)  # outbox
