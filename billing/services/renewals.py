"""Renewals: the scheduled sweep that starts each subscription's next period, exactly once.

For every live subscription whose period has ended: cancel it if it was set to cancel, apply a
pending downgrade, open the invoice of the next period (unique per subscription and period start),
and charge it off-session. The entitlement of the new period is granted only when the payment
succeeds (`fulfilment`); a decline leaves the subscription past due. Concurrent sweeps take
rows with SKIP LOCKED, and the invoice constraint plus the one-live-attempt constraint make a
second charge for the same period impossible even if two workers raced past the lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import (
    Invoice,
    PaymentMethod,
    Subscription,
    SubscriptionStatus,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services.checkout import invoice_charge
from billing.services.clocks import owners_on_test_clocks
from billing.services.dunning import dunning_decline_without_card
from billing.services.entitlements import entitlements_end
from billing.services.invoices import subscription_period_invoice_create
from billing.services.transitions import subscription_transition
from core.errors import BillingError, ErrorCode
from core.periods import Interval, period_at

log = structlog.get_logger(__name__)
RENEWABLE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE)
STRANDED_AFTER = timedelta(minutes=5)


@dataclass
class SweepReport:
    renewed: int = 0
    canceled: int = 0
    declined: int = 0
    pending: int = 0  # requires action or unknown outcome: settled later
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def subscriptions_renew_due(*, at: datetime, limit: int = 500, owner_ids=None) -> SweepReport:
    """Renew every subscription due at `at`. Safe to run on several workers at once.

    `owner_ids`: only these owners (a test clock advancing); by default everyone but the owners
    on test clocks. A subscription that fails is reported and not taken again in this run.
    """
    report = SweepReport()
    seen: set = set()
    due = Subscription.objects.filter(status__in=RENEWABLE, current_period_end__lte=at)
    due = (
        due.filter(owner_id__in=owner_ids)
        if owner_ids is not None
        else due.exclude(owner_id__in=owners_on_test_clocks())
    )
    while len(seen) < limit:
        with transaction.atomic():
            batch = list(
                due.select_for_update(skip_locked=True)
                .exclude(pk__in=seen)
                .order_by("current_period_end")
                .values_list("pk", flat=True)[:50]
            )
        if not batch:
            break
        for subscription_id in batch:
            seen.add(subscription_id)
            _renew_one(subscription_id=subscription_id, at=at, report=report)
    for invoice in _stranded_renewal_invoices(at=at, owner_ids=owner_ids):
        _charge(invoice=invoice, report=report, at=at)
    return report


def _stranded_renewal_invoices(*, at: datetime, owner_ids=None) -> list[Invoice]:
    """Renewal invoices opened by a sweep that died before charging them (no attempt at all)."""
    stranded = Invoice.objects.filter(
        kind="subscription_period",
        status="open",
        subscription__status__in=RENEWABLE,
        created_at__lt=timezone.now() - STRANDED_AFTER,
        attempts__isnull=True,
    )
    if owner_ids is not None:
        stranded = stranded.filter(owner_id__in=owner_ids)
    else:
        stranded = stranded.exclude(owner_id__in=owners_on_test_clocks())
    return list(stranded[:100])


def _renew_one(*, subscription_id, at: datetime, report: SweepReport) -> None:
    try:
        invoice = subscription_renew(subscription_id=subscription_id, at=at)
    except BillingError as exc:
        report.errors.append(f"{subscription_id}: {exc.code}")
        return
    except Exception as exc:  # one subscription never stops the sweep
        log.exception("renewal_failed", subscription=str(subscription_id))
        report.errors.append(f"{subscription_id}: {type(exc).__name__}")
        return
    if invoice is RenewalSkipped.ENDED:
        report.canceled += 1
        return
    if invoice is RenewalSkipped.NOT_DUE:
        report.skipped += 1
        return
    _charge(invoice=invoice, report=report, at=at)


def _charge(*, invoice: Invoice, report: SweepReport, at: datetime) -> None:
    subscription_id = invoice.subscription_id
    try:
        method = PaymentMethod.objects.filter(owner_id=invoice.owner_id, is_default=True).first()
        if method is None:  # counts as declined: dunning starts, the owner can add a card and pay
            dunning_decline_without_card(invoice=invoice, at=at)
            report.declined += 1
            return
        status, _ = invoice_charge(invoice=invoice, payment_method=method, at=at)
    except BillingError as exc:
        if exc.code == ErrorCode.PAYMENT_DECLINED:
            report.declined += 1
        else:
            report.errors.append(f"{subscription_id}: {exc.code}")
            log.warning("renewal_charge_failed", subscription=str(subscription_id), code=str(exc.code))
        return
    except Exception as exc:  # one subscription never stops the sweep
        log.exception("renewal_charge_failed", subscription=str(subscription_id))
        report.errors.append(f"{subscription_id}: {type(exc).__name__}")
        return
    if status == "succeeded":
        report.renewed += 1
    else:
        report.pending += 1


class RenewalSkipped(Enum):
    ENDED = "ended"  # canceled at period end instead of renewed
    NOT_DUE = "not_due"  # another worker holds it, it is not due any more, or renewed already


def subscription_renew(*, subscription_id, at: datetime) -> Invoice | RenewalSkipped:
    """Advance one due subscription to its next period and open that period's invoice.

    Returns the invoice to charge, or why there is none. A pending downgrade into a plan the car
    has meanwhile got live is dropped (the current plan renews): a car has each plan once.
    """
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("offer", "price", "pending_price__offer")
            .filter(pk=subscription_id, status__in=RENEWABLE, current_period_end__lte=at)
            .first()
        )
        if subscription is None:
            return RenewalSkipped.NOT_DUE
        period_start = subscription.current_period_end
        no_card = not PaymentMethod.objects.filter(owner_id=subscription.owner_id, is_default=True).exists()
        if subscription.cancel_at_period_end or (
            subscription.status == SubscriptionStatus.TRIALING and no_card
        ):
            # Set to cancel, or a trial ending with no card on file: the subscription ends here.
            subscription_transition(
                subscription=subscription, to=SubscriptionStatus.CANCELED, ended_at=period_start
            )
            entitlements_end(subscription=subscription, at=period_start)
            return RenewalSkipped.ENDED
        if subscription.pending_price_id:
            target = subscription.pending_price.offer
            clash = Subscription.objects.filter(
                vehicle_id=subscription.vehicle_id, offer=target, status__in=LIVE_SUBSCRIPTION_STATUSES
            ).exclude(pk=subscription.pk)
            if clash.exists():
                log.warning("pending_change_dropped", subscription=str(subscription.pk), offer=target.code)
            else:
                subscription.offer, subscription.price = target, subscription.pending_price
            subscription.pending_offer = subscription.pending_price = None
        period = period_at(subscription.billing_anchor, Interval(subscription.offer.interval), period_start)
        subscription.current_period_start, subscription.current_period_end = period.start, period.end
        subscription.save(
            update_fields=[
                "offer",
                "price",
                "pending_offer",
                "pending_price",
                "current_period_start",
                "current_period_end",
                "updated_at",
            ]
        )
        try:
            with transaction.atomic():
                return subscription_period_invoice_create(
                    subscription=subscription, period_start=period.start, period_end=period.end, at=at
                )
        except IntegrityError:  # this period's invoice exists: renewed already
            return RenewalSkipped.NOT_DUE
