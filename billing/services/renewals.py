"""Renewals: the scheduled sweep that starts each subscription's next period, exactly once.

For every live subscription whose period has ended: cancel it if it was set to cancel, apply a
pending downgrade, open the invoice of the next period (unique per subscription and period start),
and charge it off-session. The entitlement of the new period is granted only when the payment
succeeds (`fulfilment`); a decline leaves the subscription past due.

At fleet scale: the due time is the subscription's `current_period_end` in PostgreSQL (never a
broker ETA). The beat task lists due ids and fans them out in chunks to the Celery workers
(`billing.tasks`); every sweep, chunk or whole, claims a batch of rows with SKIP LOCKED and holds
the row locks while it renews them, so concurrent sweeps divide the work. The invoice constraint
(one per subscription and period start) and the one-live-attempt constraint make a second charge
for the same period impossible even if two workers raced past the lock. Stripe calls are paced by
the shared rate budget in the gateway (`core/ratebudget.py`).

Set-wise: the plain renewals of a claimed batch (same price, a card on file) are opened together
(periods, invoices, attempts: a constant number of statements), charged one PaymentIntent each,
and their plain successes recorded together (`payments.renewal_answers_record`); everything else
takes the one-by-one path, which is what a single renewal has always done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from uuid import UUID

import structlog
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
    Subscription,
    SubscriptionStatus,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services import outbound_events
from billing.services.clocks import owners_on_test_clocks
from billing.services.dunning import DEFAULT_CARD, subscription_invoice_charge_off_session
from billing.services.entitlements import entitlements_end
from billing.services.invoices import (
    invoices_create,
    subscription_period_draft,
    subscription_period_invoice_create,
)
from billing.services.payments import payment_attempt_call_stripe, renewal_answers_record
from billing.services.tax import TaxLookups
from billing.services.transitions import subscription_transition
from core.db import rows_update
from core.errors import BillingError
from core.metrics import renewal_sweep_record
from core.periods import Interval, Period, period_at
from core.redis import redis_client, redis_key

log = structlog.get_logger(__name__)
RENEWABLE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE)
STRANDED_AFTER = timedelta(minutes=5)
# Rows locked and renewed per transaction: fewer commits, and short enough that a checkout
# waiting for one of these subscriptions waits a fraction of a second.
CLAIM_BATCH_SIZE = 100
HANDED_OUT_FOR = timedelta(minutes=10)  # a chunk not done by then is handed out again


@dataclass
class SweepReport:
    renewed: int = 0
    canceled: int = 0
    declined: int = 0
    pending: int = 0  # requires action or unknown outcome: settled later
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def subscriptions_due(*, at: datetime, owner_ids: Iterable[int] | None = None) -> QuerySet[Subscription]:
    """Live subscriptions whose period has ended at `at`: `owner_ids` only (a test clock
    advancing), or by default everyone but the owners on test clocks."""
    due = Subscription.objects.filter(status__in=RENEWABLE, current_period_end__lte=at)
    if owner_ids is not None:
        return due.filter(owner_id__in=owner_ids)
    return due.exclude(owner_id__in=owners_on_test_clocks())


def renewal_chunks_hand_out(
    *, at: datetime, chunk_size: int = 50, max_ids: int = 20_000, owner_ids: Iterable[int] | None = None
) -> list[list[str]]:
    """The ids of due subscriptions in chunks (oldest first) for the workers to claim.

    Each id is handed out once per `HANDED_OUT_FOR` (a Redis mark, SET NX): a backlog longer than
    one beat interval, or a second beat started by mistake, does not enqueue it again. A chunk
    lost with its worker is handed out again when the mark expires. Only a hint: the chunk's
    claim (SKIP LOCKED, still due) is what makes a renewal happen once.
    """
    ids = [
        str(pk)
        for pk in subscriptions_due(at=at, owner_ids=owner_ids)
        .order_by("current_period_end")
        .values_list("pk", flat=True)[:max_ids]
    ]
    client = redis_client()
    if client is not None and ids:
        pipe = client.pipeline(transaction=False)
        for pk in ids:
            pipe.set(
                redis_key(f"renewal-handed-out:{pk}"), "1", nx=True, ex=int(HANDED_OUT_FOR.total_seconds())
            )
        ids = [pk for pk, fresh in zip(ids, pipe.execute(), strict=True) if fresh]
    return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]


def subscriptions_renew_due(
    *,
    at: datetime,
    limit: int = 500,
    owner_ids: Iterable[int] | None = None,
    subscription_ids: Iterable[UUID | str] | None = None,
) -> SweepReport:
    """Renew every subscription due at `at` (at most `limit`). Safe to run on many workers at once.

    Claims are held while worked on: a batch of due rows is locked with SKIP LOCKED and renewed,
    each row in a savepoint of its own, in the transaction that locked it; concurrent sweeps skip
    those rows, so N sweeps divide the work with neither duplicates nor gaps. Once the batch
    commits its rows are no longer due, and their invoices are charged outside any transaction
    (the attempt row is committed before Stripe is called). A row that fails is reported and not
    taken again in this run. `subscription_ids`: only these (a chunk fanned out by the beat task);
    without them, renewal invoices stranded by a dead worker are charged too.
    """
    report = SweepReport()
    due = subscriptions_due(at=at, owner_ids=owner_ids)
    if subscription_ids is not None:
        due = due.filter(pk__in=list(subscription_ids))
    passed_over: set = set()  # failed rows: not claimed again by this run
    taken = 0
    while taken < limit:
        size = min(CLAIM_BATCH_SIZE, limit - taken)
        claimed, batch = _claim_and_renew(due=due, at=at, size=size, passed_over=passed_over, report=report)
        if not claimed:
            break
        taken += claimed
        _charge_batch(batch=batch, report=report, at=at)
    if subscription_ids is None:
        stranded_renewal_invoices_charge(at=at, owner_ids=owner_ids, report=report)
    renewal_sweep_record(report)  # metrics: /metrics billing_renewals_total
    return report


@dataclass
class RenewalBatch:
    """What one claim renewed, to charge after its transaction committed: the plain renewals'
    attempts (committed with their invoices, charged and recorded as a batch) and the invoices
    of the others, charged one by one."""

    attempts: list[PaymentAttempt] = field(default_factory=list)
    one_by_one: list[tuple[Invoice, PaymentMethod | None]] = field(default_factory=list)


def _claim_and_renew(
    *, due: QuerySet[Subscription], at: datetime, size: int, passed_over: set[Any], report: SweepReport
) -> tuple[int, RenewalBatch]:
    """Lock up to `size` due rows (SKIP LOCKED) and renew them in this one transaction, holding
    the locks until it commits. The plain ones (renewing at the same price, a card on file) are
    renewed together, in a constant number of statements: next periods, invoices with their VAT
    and consecutive numbers, and their payment attempts; the others (set to cancel, a pending
    downgrade, a trial ending without a card, an invoice of the period already there, or the
    whole batch if that fails) one by one, each in a savepoint of its own (`subscription_renew`'s),
    so an error rolls back that row only. Returns how many rows it claimed and what to charge."""
    batch = RenewalBatch()
    with transaction.atomic():
        claimed = list(
            due.select_for_update(skip_locked=True, of=("self",))
            .exclude(pk__in=passed_over)
            .select_related("offer", "price", "owner", "vehicle")
            .order_by("current_period_end")[:size]
        )
        cards = {  # the owners' default cards, read once for the batch
            method.owner_id: method
            for method in PaymentMethod.objects.filter(
                owner_id__in={subscription.owner_id for subscription in claimed}, is_default=True
            )
        }
        plain = [
            subscription
            for subscription in claimed
            if subscription.owner_id in cards
            and not subscription.cancel_at_period_end
            and subscription.pending_price_id is None
        ]
        renewed = _renew_plain(plain, cards=cards, at=at)
        batch.attempts = renewed.attempts
        batch.one_by_one = renewed.one_by_one
        done = {attempt.invoice.subscription_id for attempt in renewed.attempts} | {
            invoice.subscription_id for invoice, _ in renewed.one_by_one
        }
        for subscription in claimed:
            if subscription.pk in done:
                continue
            invoice = _renew_one(
                subscription_id=subscription.pk, at=at, has_card=subscription.owner_id in cards, report=report
            )
            if isinstance(invoice, Invoice):
                batch.one_by_one.append((invoice, cards.get(subscription.owner_id)))
            elif invoice is not RenewalSkipped.ENDED:  # failed, or not due: never claimed again here
                passed_over.add(subscription.pk)
    return len(claimed), batch


def _renew_plain(plain: list[Subscription], *, cards: dict[int, PaymentMethod], at: datetime) -> RenewalBatch:
    """Renew `plain` subscriptions (locked by the caller) together, in a savepoint: on any error
    nothing of it stays and the caller renews them one by one. A subscription whose next
    period's invoice exists already is left to the one-by-one path too."""
    if not plain:
        return RenewalBatch()
    try:
        with transaction.atomic():
            existing = set(
                Invoice.objects.filter(
                    subscription_id__in=[subscription.pk for subscription in plain],
                    period_start__in={subscription.current_period_end for subscription in plain},
                ).values_list("subscription_id", "period_start")
            )
            fresh = [s for s in plain if (s.pk, s.current_period_end) not in existing]
            if not fresh:
                return RenewalBatch()
            now = timezone.now()
            for subscription in fresh:
                period = _next_period(subscription)
                subscription.current_period_start, subscription.current_period_end = period.start, period.end
                subscription.updated_at = now
            rows_update(fresh, ["current_period_start", "current_period_end", "updated_at"])
            invoices = invoices_create(
                [
                    subscription_period_draft(s, s.current_period_start, s.current_period_end)
                    for s in fresh
                ],
                at=at,
                lookups=TaxLookups(owner_ids={s.owner_id for s in fresh}),
            )
            attempts = PaymentAttempt.objects.bulk_create(
                PaymentAttempt(
                    invoice=invoice,
                    owner=invoice.owner,
                    payment_method=cards[invoice.owner_id],
                    amount_minor=invoice.total_minor,
                    currency=invoice.currency,
                )
                for invoice in invoices
                if invoice.total_minor > 0
            )
            free = [(i, cards.get(i.owner_id)) for i in invoices if i.total_minor <= 0]
            return RenewalBatch(attempts=attempts, one_by_one=free)
    except Exception:
        log.exception("renewal_batch_failed", subscriptions=len(plain))
        return RenewalBatch()


def _charge_batch(*, batch: RenewalBatch, report: SweepReport, at: datetime) -> None:
    """Charge a committed batch: one PaymentIntent per attempt (its own key), the plain
    successes recorded together (`renewal_answers_record`), the rest one by one."""
    answers = []
    with gateway.budget_reserved(len(batch.attempts)):  # one round trip to the budget per batch
        for attempt in batch.attempts:
            try:
                answers.append((attempt, payment_attempt_call_stripe(attempt=attempt)))
            except Exception as exc:  # one charge never stops the sweep; the reconciler replays the key
                log.exception("renewal_charge_failed", subscription=str(attempt.invoice.subscription_id))
                report.errors.append(f"{attempt.invoice.subscription_id}: {type(exc).__name__}")
    for attempt in renewal_answers_record(answers, at=at):
        if attempt.status == AttemptStatus.SUCCEEDED:
            report.renewed += 1
        elif attempt.status == AttemptStatus.DECLINED:
            report.declined += 1
        else:
            report.pending += 1
    for invoice, method in batch.one_by_one:
        _charge(invoice=invoice, method=method, report=report, at=at)


def stranded_renewal_invoices_charge(
    *, at: datetime, owner_ids: Iterable[int] | None = None, report: SweepReport | None = None
) -> SweepReport:
    """Charge renewal invoices whose sweep died after committing them, before any charge."""
    report = report if report is not None else SweepReport()
    for invoice in _stranded_renewal_invoices(at=at, owner_ids=owner_ids):
        _charge(invoice=invoice, report=report, at=at)
    return report


def _stranded_renewal_invoices(*, at: datetime, owner_ids: Iterable[int] | None = None) -> list[Invoice]:
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


def _renew_one(
    *, subscription_id: UUID | str, at: datetime, has_card: bool | None, report: SweepReport
) -> Invoice | RenewalSkipped | None:
    """Renew one claimed row (None: it failed and was rolled back to its savepoint)."""
    try:
        invoice = subscription_renew(subscription_id=subscription_id, at=at, has_card=has_card)
    except BillingError as exc:
        report.errors.append(f"{subscription_id}: {exc.code}")
        return None
    except Exception as exc:  # one subscription never stops the sweep
        log.exception("renewal_failed", subscription=str(subscription_id))
        report.errors.append(f"{subscription_id}: {type(exc).__name__}")
        return None
    if invoice is RenewalSkipped.ENDED:
        report.canceled += 1
    elif invoice is RenewalSkipped.NOT_DUE:
        report.skipped += 1
    return invoice


def _charge(*, invoice: Invoice, report: SweepReport, at: datetime, method: Any = DEFAULT_CARD) -> None:
    subscription_id = invoice.subscription_id
    try:
        outcome = subscription_invoice_charge_off_session(invoice=invoice, at=at, method=method)
    except BillingError as exc:
        report.errors.append(f"{subscription_id}: {exc.code}")
        log.warning("renewal_charge_failed", subscription=str(subscription_id), code=str(exc.code))
        return
    except Exception as exc:  # one subscription never stops the sweep
        log.exception("renewal_charge_failed", subscription=str(subscription_id))
        report.errors.append(f"{subscription_id}: {type(exc).__name__}")
        return
    if outcome == "succeeded":
        report.renewed += 1
    elif outcome == "declined":
        report.declined += 1
    else:
        report.pending += 1


def _next_period(subscription: Subscription) -> Period:
    """The period after the current one, on the subscription's anchor (month ends handled)."""
    return period_at(
        subscription.billing_anchor, Interval(subscription.offer.interval), subscription.current_period_end
    )


class RenewalSkipped(Enum):
    ENDED = "ended"  # canceled at period end instead of renewed
    NOT_DUE = "not_due"  # another worker holds it, it is not due any more, or renewed already


def subscription_renew(
    *, subscription_id: UUID | str, at: datetime, has_card: bool | None = None
) -> Invoice | RenewalSkipped:
    """Advance one due subscription to its next period and open that period's invoice.

    Returns the invoice to charge, or why there is none. A pending downgrade into a plan the car
    has meanwhile got live is dropped (the current plan renews): a car has each plan once.
    `has_card`: whether the owner has a default card, when the caller read it already (a batch).
    """
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("offer", "price", "pending_price__offer", "owner", "vehicle")
            .filter(pk=subscription_id, status__in=RENEWABLE, current_period_end__lte=at)
            .first()
        )
        if subscription is None:
            return RenewalSkipped.NOT_DUE
        period_start = subscription.current_period_end
        if has_card is None:
            has_card = PaymentMethod.objects.filter(owner_id=subscription.owner_id, is_default=True).exists()
        no_card = not has_card
        if subscription.cancel_at_period_end or (
            subscription.status == SubscriptionStatus.TRIALING and no_card
        ):
            # Set to cancel, or a trial ending with no card on file: the subscription ends here.
            subscription_transition(
                subscription=subscription, to=SubscriptionStatus.CANCELED, ended_at=period_start
            )
            entitlements_end(subscription=subscription, at=period_start)
            outbound_events.subscription_canceled(subscription)  # outbox
            return RenewalSkipped.ENDED
        if subscription.pending_price is not None:  # selected with the row
            target = subscription.pending_price.offer
            clash = Subscription.objects.filter(
                vehicle_id=subscription.vehicle_id, offer=target, status__in=LIVE_SUBSCRIPTION_STATUSES
            ).exclude(pk=subscription.pk)
            if clash.exists():
                log.warning("pending_change_dropped", subscription=str(subscription.pk), offer=target.code)
            else:
                subscription.offer, subscription.price = target, subscription.pending_price
            subscription.pending_offer = subscription.pending_price = None
        period = _next_period(subscription)
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
