"""Subscriptions: start (with a trial or a first payment), cancel, resume, change plan.

Renewals, dunning and trial conversion run in the scheduled billing jobs; a downgrade chosen
here is stored as `pending_offer`/`pending_price` and applied by the renewal at period end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from billing.models import (
    AttemptStatus,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Offer,
    PaymentAttempt,
    Price,
    Subscription,
    SubscriptionStatus,
    TrialUsage,
)
from billing.services import outbound_events
from billing.services.catalog import offer_for_vehicle
from billing.services.checkout import CheckoutOutcome, invoice_charge
from billing.services.coverage import coverage_check, plan_clash_check, vehicle_reserve
from billing.services.customers import payment_method_for_charge
from billing.services.entitlements import entitlements_end, entitlements_grant_for_subscription_period
from billing.services.invoices import LineSpec, invoice_create, subscription_period_invoice_create
from billing.services.payments import payment_attempts_abandon_for, requires_action_cancel_after
from billing.services.purchases import withdrawal_deadline
from billing.services.refunds import refund_in_full_or_raise
from billing.services.transitions import invoice_transition, subscription_transition
from core.errors import BusinessRuleViolation, Conflict, ErrorCode, NotFound
from core.periods import Interval, add_interval
from core.rounding import chargeable_step, upgrade_proration
from vehicles.models import Owner, Vehicle

AWAITING_ATTEMPT_STATUSES = (AttemptStatus.PENDING, AttemptStatus.UNKNOWN, AttemptStatus.REQUIRES_ACTION)


def subscription_of_owner(
    *, owner: Owner, subscription_id: UUID | str, for_update: bool = False
) -> Subscription:
    queryset = Subscription.objects.select_related("vehicle__market", "offer", "price")
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    try:
        return queryset.get(owner=owner, pk=subscription_id)
    except (Subscription.DoesNotExist, ValueError, DjangoValidationError) as exc:  # bad UUID: not found
        raise NotFound("No such subscription.") from exc


def _trial_eligible(*, vehicle: Vehicle, offer: Offer) -> bool:
    return (
        offer.trial_days > 0
        and not TrialUsage.objects.filter(vehicle=vehicle, feature__in=offer.features.all()).exists()
    )


def subscription_start(
    *,
    owner: Owner,
    vehicle: Vehicle,
    offer_code: str,
    payment_method_id: int | None,
    use_trial: bool | None,
    at: datetime,
) -> CheckoutOutcome:
    """Start a plan. `use_trial`: None = trial when eligible; True = trial or refuse; False = pay now.

    Everything fulfilment needs is checked with the vehicle locked, in the transaction that
    creates the subscription and its invoice, before Stripe is called."""
    offer, price = offer_for_vehicle(vehicle=vehicle, offer_code=offer_code, at=at)
    if offer.kind != Offer.Kind.SUBSCRIPTION:
        raise BusinessRuleViolation(
            f"'{offer_code}' is a one-time unlock: buy it with POST .../purchases/.",
            code=ErrorCode.OFFER_UNAVAILABLE,
        )
    payment_attempts_abandon_for(
        invoices=Invoice.objects.filter(
            subscription__vehicle=vehicle,
            subscription__offer=offer,
            subscription__status=SubscriptionStatus.INCOMPLETE,
        )
    )
    _end_abandoned_incomplete(vehicle=vehicle, offer=offer, at=at)
    payment_method = payment_method_for_charge(owner=owner, payment_method_id=payment_method_id)
    eligible = _trial_eligible(vehicle=vehicle, offer=offer)
    if use_trial and not eligible:
        raise BusinessRuleViolation(
            "This vehicle already had a trial of these features (one trial per vehicle and feature)."
            if offer.trial_days
            else "This plan has no trial.",
            code=ErrorCode.TRIAL_ALREADY_USED if offer.trial_days else ErrorCode.OFFER_UNAVAILABLE,
        )
    try:
        with transaction.atomic():
            locked_vehicle = vehicle_reserve(vehicle=vehicle, owner=owner)
            plan_clash_check(vehicle=locked_vehicle, offer=offer)
            coverage_check(vehicle=locked_vehicle, offer=offer, at=at)
            if eligible and use_trial is not False:
                return _start_trial(owner=owner, vehicle=vehicle, offer=offer, price=price, at=at)
            period_end = add_interval(at, interval=Interval(offer.interval), count=1)
            subscription = Subscription.objects.create(
                owner=owner,
                vehicle=vehicle,
                offer=offer,
                price=price,
                status=SubscriptionStatus.INCOMPLETE,
                billing_anchor=at,
                current_period_start=at,
                current_period_end=period_end,
            )
            invoice = subscription_period_invoice_create(
                subscription=subscription, period_start=at, period_end=period_end, at=at
            )
            outbound_events.subscription_created(subscription)  # outbox
    except IntegrityError as exc:
        raise BusinessRuleViolation(
            "This vehicle already has this plan (or had its trial).", code=ErrorCode.ALREADY_SUBSCRIBED
        ) from exc
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method, at=at)
    subscription.refresh_from_db()
    return CheckoutOutcome(status=status, subscription=subscription, invoice=invoice, attempt=attempt)


def _end_abandoned_incomplete(*, vehicle: Vehicle, offer: Offer, at: datetime) -> None:
    """An incomplete subscription whose first payment was abandoned (its 3-D Secure canceled
    above) no longer holds the plan: end it so a new start is possible."""
    for subscription in Subscription.objects.filter(
        vehicle=vehicle, offer=offer, status=SubscriptionStatus.INCOMPLETE
    ).exclude(invoices__attempts__status__in=[*AWAITING_ATTEMPT_STATUSES, AttemptStatus.SUCCEEDED]):
        subscription_end_now(subscription=subscription, at=at)


def _start_trial(
    *, owner: Owner, vehicle: Vehicle, offer: Offer, price: Price, at: datetime
) -> CheckoutOutcome:
    trial_end = at + timedelta(days=offer.trial_days)
    with transaction.atomic():  # a savepoint of the caller's transaction, which holds the vehicle
        subscription = Subscription.objects.create(
            owner=owner,
            vehicle=vehicle,
            offer=offer,
            price=price,
            status=SubscriptionStatus.TRIALING,
            billing_anchor=trial_end,
            current_period_start=at,
            current_period_end=trial_end,
            trial_end=trial_end,
        )
        TrialUsage.objects.bulk_create(
            TrialUsage(vehicle=vehicle, feature=feature, subscription=subscription, started_at=at)
            for feature in offer.features.all()
        )
        outbound_events.subscription_created(subscription)  # outbox
        entitlements_grant_for_subscription_period(
            subscription=subscription, period_start=at, period_end=trial_end
        )
    return CheckoutOutcome(status="trialing", subscription=subscription)


def subscription_cancel(*, owner: Owner, subscription_id: UUID | str, at: datetime) -> Subscription:
    """Cancel at period end; within the market's withdrawal period a consumer gets a full
    refund and the features end now. An incomplete subscription (first payment waiting for
    3-D Secure) ends now: its PaymentIntent is canceled at Stripe first, so a late
    authentication cannot charge."""
    subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id)
    if not subscription.is_live:
        raise BusinessRuleViolation(f"A {subscription.status} subscription cannot be canceled.")
    deadline = withdrawal_deadline(owner=owner, vehicle=subscription.vehicle, since=subscription.created_at)
    if subscription.status == SubscriptionStatus.INCOMPLETE or (deadline is not None and at < deadline):
        return _end_now_with_refund(subscription=subscription, at=at, reason="withdrawal")
    with transaction.atomic():
        subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id, for_update=True)
        subscription.cancel_at_period_end, subscription.canceled_at = True, at
        subscription.save(update_fields=["cancel_at_period_end", "canceled_at", "updated_at"])
        outbound_events.subscription_updated(subscription, change="cancel_at_period_end")  # outbox
    return subscription


def _end_now_with_refund(*, subscription: Subscription, at: datetime, reason: str) -> Subscription:
    """End now: first settle payments still waiting for the customer (canceled at Stripe, or
    recorded if they succeeded meanwhile), then refund every succeeded payment in full.
    A payment whose outcome is still unknown refuses (409): it must settle first."""
    payment_attempts_abandon_for(invoices=subscription.invoices.all())
    for attempt in PaymentAttempt.objects.filter(
        invoice__subscription=subscription, status=AttemptStatus.SUCCEEDED
    ):
        refund_in_full_or_raise(payment_attempt=attempt, reason=reason)
    return subscription_end_now(subscription=subscription, at=at)


def subscription_end_now(*, subscription: Subscription, at: datetime) -> Subscription:
    """End a subscription and its features at `at`. Calls no payment provider: payments still
    waiting (3-D Secure, unknown) stay live and are settled by the reconciler, whose fulfilment
    refunds them because the subscription has ended; only invoices with no live payment are voided."""
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if subscription.status == SubscriptionStatus.CANCELED:
            return subscription
        subscription_transition(
            subscription=subscription,
            to=SubscriptionStatus.CANCELED,
            canceled_at=subscription.canceled_at or at,
            ended_at=at,
        )
        for invoice in (
            subscription.invoices.select_for_update()
            .filter(status=InvoiceStatus.OPEN)
            .exclude(attempts__status__in=AWAITING_ATTEMPT_STATUSES)
        ):
            invoice_transition(invoice=invoice, to=InvoiceStatus.VOID, at=at)
        entitlements_end(subscription=subscription, at=at)
        outbound_events.subscription_canceled(subscription)  # outbox
    return subscription


def subscription_resume(*, owner: Owner, subscription_id: UUID | str, at: datetime) -> Subscription:
    with transaction.atomic():
        subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id, for_update=True)
        if not (
            subscription.is_live
            and subscription.cancel_at_period_end
            and at < subscription.current_period_end
        ):
            raise BusinessRuleViolation(
                "Only a subscription set to cancel at period end can be resumed, before that end."
            )
        subscription.cancel_at_period_end, subscription.canceled_at = False, None
        subscription.save(update_fields=["cancel_at_period_end", "canceled_at", "updated_at"])
        outbound_events.subscription_updated(subscription, change="resumed")  # outbox
    return subscription


@dataclass(frozen=True)
class PlanChangePreview:
    kind: str  # "upgrade" (now, prorated) | "downgrade" (at period end)
    effective_at: datetime
    currency: str
    lines: list[LineSpec]
    new_price: Price

    @property
    def amount_due_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def subscription_change_preview(
    *, owner: Owner, subscription_id: UUID | str, offer_code: str, at: datetime
) -> PlanChangePreview:
    """Upgrade (higher price): now, old plan credited and new plan charged for the remaining time,
    to the second. Downgrade: at the end of the current period, nothing charged now."""
    subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id)
    preview = _plan_change(subscription=subscription, offer_code=offer_code, at=at)
    plan_clash_check(vehicle=subscription.vehicle, offer=preview.new_price.offer, excluding=subscription)
    coverage_check(vehicle=subscription.vehicle, offer=preview.new_price.offer, at=at, excluding=subscription)
    return preview


def _plan_change(*, subscription: Subscription, offer_code: str, at: datetime) -> PlanChangePreview:
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise BusinessRuleViolation(
            "Plans can be changed on an active subscription (not during a trial or while unpaid)."
        )
    if at >= subscription.current_period_end:  # due for renewal: the sweep starts the next period first
        raise Conflict(
            "This subscription's period has just ended and is being renewed; try again in a minute.",
            code=ErrorCode.CONFLICT,
        )
    offer, new_price = offer_for_vehicle(vehicle=subscription.vehicle, offer_code=offer_code, at=at)
    if offer.pk == subscription.offer_id:
        raise BusinessRuleViolation("That is already the current plan.", code=ErrorCode.ALREADY_SUBSCRIBED)
    if offer.kind != Offer.Kind.SUBSCRIPTION or offer.interval != subscription.offer.interval:
        raise BusinessRuleViolation(
            "A plan can only change to another plan with the same billing interval.",
            code=ErrorCode.OFFER_UNAVAILABLE,
        )
    old = subscription.price
    if new_price.amount_minor <= old.amount_minor:
        return PlanChangePreview("downgrade", subscription.current_period_end, old.currency, [], new_price)
    start, end = subscription.current_period_start, subscription.current_period_end
    remaining, whole = int((end - at).total_seconds()), int((end - start).total_seconds())
    credit, debit = upgrade_proration(
        old.amount_minor,
        new_price.amount_minor,
        part_seconds=min(whole, max(0, remaining)),
        whole_seconds=whole,
        step=chargeable_step(old.currency),
    )
    lines = [
        LineSpec(f"Unused time on {subscription.offer.name}", credit, subscription.offer_id, at, end),
        LineSpec(f"Remaining time on {offer.name}", debit, offer.pk, at, end),
    ]
    return PlanChangePreview("upgrade", at, old.currency, lines, new_price)


def subscription_change_apply(
    *, owner: Owner, subscription_id: UUID | str, offer_code: str, at: datetime
) -> CheckoutOutcome:
    """Change plan. Checked and reserved with the vehicle and the subscription locked before
    Stripe is called: still active, the target plan not live on the car, its features not
    already covered, no other plan change awaiting its payment (a database constraint backs
    this: one open plan-change invoice per subscription). An upgrade left at 3-D Secure for
    longer than `requires_action_cancel_after()` is canceled at Stripe before a new one."""
    subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id)
    payment_attempts_abandon_for(
        invoices=subscription.invoices.filter(
            kind=InvoiceKind.PLAN_CHANGE,
            status=InvoiceStatus.OPEN,
            attempts__status=AttemptStatus.REQUIRES_ACTION,
            attempts__created_at__lte=at - requires_action_cancel_after(),
        ),
        block_on_unknown=False,
    )
    payment_method = None
    try:
        with transaction.atomic():
            vehicle_reserve(vehicle=subscription.vehicle, owner=owner)
            subscription = subscription_of_owner(
                owner=owner, subscription_id=subscription_id, for_update=True
            )
            preview = _plan_change(subscription=subscription, offer_code=offer_code, at=at)
            target = preview.new_price.offer
            plan_clash_check(vehicle=subscription.vehicle, offer=target, excluding=subscription)
            coverage_check(vehicle=subscription.vehicle, offer=target, at=at, excluding=subscription)
            if preview.kind == "downgrade":
                subscription.pending_offer_id, subscription.pending_price = target.pk, preview.new_price
                subscription.save(update_fields=["pending_offer", "pending_price", "updated_at"])
                outbound_events.subscription_updated(subscription, change="downgrade_scheduled")  # outbox
                return CheckoutOutcome(status="scheduled", subscription=subscription)
            if subscription.invoices.filter(kind=InvoiceKind.PLAN_CHANGE, status=InvoiceStatus.OPEN).exists():
                raise _awaiting_plan_change()
            payment_method = payment_method_for_charge(owner=owner, payment_method_id=None)
            invoice = invoice_create(
                owner=owner,
                vehicle=subscription.vehicle,
                kind=InvoiceKind.PLAN_CHANGE,
                currency=preview.currency,
                lines=preview.lines,
                at=at,
                subscription=subscription,
                period_start=at,
                period_end=subscription.current_period_end,
                change_to_price=preview.new_price,
            )
    except IntegrityError as exc:  # a concurrent change won the one-open-plan-change constraint
        raise _awaiting_plan_change() from exc
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method, at=at)
    subscription.refresh_from_db()
    return CheckoutOutcome(status=status, subscription=subscription, invoice=invoice, attempt=attempt)


def _awaiting_plan_change() -> Conflict:
    return Conflict(
        "A plan change of this subscription is still awaiting its payment (3-D Secure or "
        "processing): confirm or wait for it first.",
        code=ErrorCode.CONFLICT,
    )
