"""Dunning: what happens after a renewal is declined, until it is paid or the subscription ends.

1. The decline (`dunning_start`, called by fulfilment with the subscription and invoice locked)
   makes the subscription `past_due`, schedules the retries (the plan's `dunning_retry_days`,
   default 1, 3, 5 and 7 days after the decline) and grants a grace period (the plan's or the
   market's `dunning_grace_days`, default 7) during which the car keeps the plan's features.
2. Each retry (`dunning_retries_due`, the scheduled sweep) is a new payment attempt on the same
   open invoice, off-session with the default card; one live attempt at a time (a constraint),
   its Stripe key from its own row. A decline schedules the next retry (`dunning_retry_failed`).
3. After the last retry the subscription is `unpaid` and its features end at that instant; the
   invoice stays open, so the owner can still pay it with another card
   (`POST /me/invoices/{id}/pay/`), which ends dunning and restores the period (fulfilment).
   An unpaid subscription is canceled after the plan's `unpaid_cancel_days`
   (`unpaid_subscriptions_cancel_due`); its invoice becomes uncollectible.
Trials: a reminder a configurable time before the end (`trial_reminders_due`); at the end a paid
period, or the end of the subscription when no card is on file (the renewal sweep).

Due times live in the database (`next_retry_at`, `unpaid_since`), never as broker ETAs; the sweeps
take rows with SKIP LOCKED and lease them, so concurrent runs retry each subscription once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from billing.models import Invoice, InvoiceStatus, PaymentMethod, Subscription, SubscriptionStatus

if TYPE_CHECKING:
    from billing.models import TestClockOwner
from billing.services import outbound_events
from billing.services.entitlements import entitlements_end, entitlements_grant_grace
from billing.services.transitions import invoice_transition, subscription_transition
from core.errors import BillingError, BusinessRuleViolation, ErrorCode

log = structlog.get_logger(__name__)
RETRY_LEASE = timedelta(hours=1)  # a retry claimed by a worker that died is taken again after this


def _grace_days(subscription: Subscription) -> int:
    offer_days = subscription.offer.dunning_grace_days
    return offer_days if offer_days is not None else subscription.vehicle.market.dunning_grace_days


def _on_clocks() -> QuerySet[TestClockOwner, Any]:
    from billing.services.clocks import owners_on_test_clocks  # clocks imports this module's callers

    return owners_on_test_clocks()


def dunning_start(*, subscription: Subscription, invoice: Invoice, at: datetime) -> None:
    """A renewal (or trial conversion) was declined: past due, retries scheduled, grace granted."""
    schedule = subscription.offer.retry_schedule_days
    grace_until = at + timedelta(days=_grace_days(subscription))
    subscription_transition(
        subscription=subscription,
        to=SubscriptionStatus.PAST_DUE,
        dunning_invoice=invoice,
        dunning_started_at=at,
        dunning_retries=0,
        next_retry_at=at + timedelta(days=schedule[0]) if schedule else None,
        grace_until=grace_until,
    )
    outbound_events.dunning_started(subscription=subscription, invoice=invoice)  # outbox
    period_start = invoice.period_start or at
    until = min(grace_until, invoice.period_end) if invoice.period_end else grace_until
    if until > period_start:
        entitlements_grant_grace(subscription=subscription, period_start=period_start, until=until)
    log.info(
        "dunning_started",
        subscription=str(subscription.pk),
        retries=len(schedule),
        grace_until=str(grace_until),
    )
    if not schedule:
        _exhausted(subscription=subscription, at=at)


def dunning_retry_failed(*, subscription: Subscription, at: datetime) -> None:
    """A retry was declined (the subscription is locked): schedule the next, or end the rights."""
    schedule = subscription.offer.retry_schedule_days
    retries = subscription.dunning_retries + 1
    started = subscription.dunning_started_at or at
    if retries < len(schedule):
        subscription.dunning_retries, subscription.next_retry_at = (
            retries,
            started + timedelta(days=schedule[retries]),
        )
        subscription.save(update_fields=["dunning_retries", "next_retry_at", "updated_at"])
        return
    subscription.dunning_retries = retries
    subscription.save(update_fields=["dunning_retries", "updated_at"])
    _exhausted(subscription=subscription, at=at)


def _exhausted(*, subscription: Subscription, at: datetime) -> None:
    subscription_transition(
        subscription=subscription,
        to=SubscriptionStatus.UNPAID,
        unpaid_since=at,
        next_retry_at=None,
        grace_until=None,
    )
    outbound_events.subscription_updated(subscription, change="unpaid")  # outbox
    entitlements_end(subscription=subscription, at=at)
    log.info("dunning_exhausted", subscription=str(subscription.pk))


def dunning_clear(*, subscription: Subscription) -> dict:
    """The fields a paid invoice resets (saved by the caller with the status change)."""
    return {
        "dunning_invoice": None,
        "dunning_started_at": None,
        "dunning_retries": 0,
        "next_retry_at": None,
        "grace_until": None,
        "unpaid_since": None,
    }


@dataclass
class DunningReport:
    retried: int = 0
    recovered: int = 0
    declined: int = 0
    pending: int = 0
    canceled: int = 0
    reminded: int = 0
    errors: list[str] = field(default_factory=list)


def _claim_due_retries(*, at: datetime, limit: int, owner_ids: Iterable[int] | None = None) -> list[tuple]:
    with transaction.atomic():
        due = Subscription.objects.select_for_update(skip_locked=True).filter(
            status=SubscriptionStatus.PAST_DUE, next_retry_at__lte=at, dunning_invoice__isnull=False
        )
        due = (
            due.filter(owner_id__in=owner_ids)
            if owner_ids is not None
            else due.exclude(owner_id__in=_on_clocks())
        )
        rows = list(
            due.order_by("next_retry_at").values_list("pk", "dunning_invoice_id", "next_retry_at")[:limit]
        )
        if rows:  # leased: another sweep skips them until the lease ends or the outcome reschedules
            Subscription.objects.filter(pk__in=[pk for pk, _, _ in rows]).update(
                next_retry_at=at + RETRY_LEASE
            )
    return rows


def dunning_retries_due(
    *, at: datetime, limit: int = 200, owner_ids: Iterable[int] | None = None
) -> DunningReport:
    """Retry every past-due subscription whose retry is due at `at`; isolated per row."""
    report = DunningReport()
    for subscription_id, invoice_id, _due in _claim_due_retries(at=at, limit=limit, owner_ids=owner_ids):
        _retry_one(subscription_id=subscription_id, invoice_id=invoice_id, at=at, report=report)
    return report


def dunning_retry_now(*, subscription_id: UUID | str, at: datetime) -> DunningReport:
    """An operator's "retry now": charge the open invoice of a past-due or unpaid subscription
    with the owner's default card at once (a success ends dunning and restores the period)."""
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(skip_locked=True)
            .filter(pk=subscription_id, status__in=[SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID])
            .exclude(dunning_invoice__isnull=True)
            .first()
        )
        if subscription is None:
            raise BusinessRuleViolation(
                "Only a past-due or unpaid subscription with an open invoice can be retried "
                "(or a retry of it is running).",
                code=ErrorCode.INVALID_STATE,
            )
        if subscription.status == SubscriptionStatus.PAST_DUE:
            subscription.next_retry_at = at + RETRY_LEASE  # leased like a scheduled retry
            subscription.save(update_fields=["next_retry_at", "updated_at"])
    report = DunningReport()
    assert subscription.dunning_invoice_id is not None  # checked above
    _retry_one(
        subscription_id=subscription.pk, invoice_id=subscription.dunning_invoice_id, at=at, report=report
    )
    return report


def _retry_one(
    *, subscription_id: UUID | str, invoice_id: UUID | str, at: datetime, report: DunningReport
) -> None:
    report.retried += 1
    try:
        invoice = Invoice.objects.get(pk=invoice_id)
        if invoice.status != InvoiceStatus.OPEN:
            return
        outcome = subscription_invoice_charge_off_session(invoice=invoice, at=at)
    except BillingError as exc:
        report.errors.append(f"{subscription_id}: {exc.code}")
        return
    except Exception as exc:  # one subscription never stops the sweep
        log.exception("dunning_retry_failed", subscription=str(subscription_id))
        report.errors.append(f"{subscription_id}: {type(exc).__name__}")
        return
    if outcome == "succeeded":
        report.recovered += 1
    elif outcome == "declined":
        report.declined += 1
    else:
        report.pending += 1


DEFAULT_CARD: Any = object()  # `subscription_invoice_charge_off_session`: read the owner's default card


def subscription_invoice_charge_off_session(
    *, invoice: Invoice, at: datetime, method: Any = DEFAULT_CARD
) -> str:
    """Charge a renewal (or a dunning retry of it) off-session: "succeeded", "declined" (a decline,
    or no card on file: dunning starts or goes on, the owner can add a card and pay) or "pending"
    (3-D Secure or an unknown outcome, settled later). Anything else raises: the sweeps isolate it."""
    from billing.services.checkout import invoice_charge  # checkout -> payments -> fulfilment -> here

    if method is DEFAULT_CARD:
        method = PaymentMethod.objects.filter(owner_id=invoice.owner_id, is_default=True).first()
    if method is None:
        dunning_decline_without_card(invoice=invoice, at=at)
        return "declined"
    try:
        status, _attempt = invoice_charge(invoice=invoice, payment_method=method, at=at)
    except BillingError as exc:
        if exc.code == ErrorCode.PAYMENT_DECLINED:
            return "declined"
        raise
    return "succeeded" if status == "succeeded" else "pending"


def dunning_decline_without_card(*, invoice: Invoice, at: datetime) -> None:
    """A renewal or retry with no card on file counts as declined: dunning starts or goes on,
    and the owner can add a card and pay the open invoice."""
    from billing.services.fulfilment import invoice_fulfil_failed

    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        invoice_fulfil_failed(invoice=locked, at=at)


def unpaid_subscriptions_cancel_due(
    *, at: datetime, limit: int = 200, owner_ids: Iterable[int] | None = None
) -> int:
    """Cancel unpaid subscriptions whose plan's waiting time is over; their invoice becomes uncollectible."""
    canceled = 0
    with transaction.atomic():
        rows = (
            Subscription.objects.select_for_update(skip_locked=True)
            .select_related("offer")
            .filter(status=SubscriptionStatus.UNPAID, unpaid_since__isnull=False)
        )
        rows = (
            rows.filter(owner_id__in=owner_ids)
            if owner_ids is not None
            else rows.exclude(owner_id__in=_on_clocks())
        )
        for subscription in rows.order_by("unpaid_since")[:limit]:
            assert subscription.unpaid_since is not None  # filtered on it
            if subscription.unpaid_since + timedelta(days=subscription.offer.unpaid_cancel_days) > at:
                continue
            subscription_transition(
                subscription=subscription, to=SubscriptionStatus.CANCELED, canceled_at=at, ended_at=at
            )
            for invoice in subscription.invoices.select_for_update().filter(status=InvoiceStatus.OPEN):
                invoice_transition(invoice=invoice, to=InvoiceStatus.UNCOLLECTIBLE, at=at)
            entitlements_end(subscription=subscription, at=at)
            outbound_events.subscription_canceled(subscription)  # outbox
            canceled += 1
    return canceled


def trial_reminder_lead() -> timedelta:
    return timedelta(hours=getattr(settings, "TRIAL_REMINDER_HOURS", 72))


def trial_reminders_due(*, at: datetime, limit: int = 500, owner_ids: Iterable[int] | None = None) -> int:
    """Mark (once) the trials ending within the reminder lead time; the event goes to the outbox
    once it exists, and to the log now."""
    with transaction.atomic():
        rows = Subscription.objects.select_for_update(skip_locked=True).filter(
            status=SubscriptionStatus.TRIALING,
            trial_end__isnull=False,
            trial_end__lte=at + trial_reminder_lead(),
            trial_end__gt=at,
            trial_reminder_sent_at__isnull=True,
        )
        rows = (
            rows.filter(owner_id__in=owner_ids)
            if owner_ids is not None
            else rows.exclude(owner_id__in=_on_clocks())
        )
        ids = list(rows.values_list("pk", flat=True)[:limit])
        Subscription.objects.filter(pk__in=ids).update(trial_reminder_sent_at=at)
        outbound_events.trials_ending(subscription_ids=ids)  # outbox
    for subscription_id in ids:
        log.info("trial.ending", subscription=str(subscription_id))
    return len(ids)


def dunning_sweep(*, at: datetime, owner_ids: Iterable[int] | None = None) -> DunningReport:
    """Everything dunning does at `at`: trial reminders, due retries, unpaid cancellations."""
    report = dunning_retries_due(at=at, owner_ids=owner_ids)
    report.canceled = unpaid_subscriptions_cancel_due(at=at, owner_ids=owner_ids)
    report.reminded = trial_reminders_due(at=at, owner_ids=owner_ids)
    return report
