"""Subscriptions: start (with a trial or a first payment), cancel, resume, change plan.

Renewals, dunning and trial conversion run in the scheduled billing jobs; a downgrade chosen
here is stored as `pending_offer`/`pending_price` and applied by the renewal at period end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from billing.models import (
    AttemptStatus,
    Entitlement,
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
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services.catalog import offer_for_vehicle
from billing.services.checkout import CheckoutOutcome, invoice_charge
from billing.services.customers import payment_method_for_charge
from billing.services.entitlements import entitlements_end, entitlements_grant_for_subscription_period
from billing.services.invoices import LineSpec, invoice_create, subscription_period_invoice_create
from billing.services.payments import payment_attempts_abandon_for
from billing.services.purchases import withdrawal_deadline
from billing.services.refunds import refund_in_full_or_raise
from core.errors import BusinessRuleViolation, Conflict, ErrorCode, NotFound
from core.periods import Interval, add_interval
from core.rounding import upgrade_proration
from vehicles.models import Owner, Vehicle


def subscription_of_owner(*, owner: Owner, subscription_id, for_update: bool = False) -> Subscription:
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
    """Start a plan. `use_trial`: None = trial when eligible; True = trial or refuse; False = pay now."""
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
    if Subscription.objects.filter(
        vehicle=vehicle, offer=offer, status__in=LIVE_SUBSCRIPTION_STATUSES
    ).exists():
        raise BusinessRuleViolation("This vehicle already has this plan.", code=ErrorCode.ALREADY_SUBSCRIBED)
    codes = {f.code for f in offer.features.all()}
    covered = set(
        Entitlement.objects.filter(vehicle=vehicle, starts_at__lte=at, ends_at__isnull=True).values_list(
            "feature__code", flat=True
        )
    )
    if codes <= covered:
        raise BusinessRuleViolation(
            "This vehicle already has these features for good.", code=ErrorCode.ALREADY_ENTITLED
        )
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
        if eligible and use_trial is not False:
            return _start_trial(owner=owner, vehicle=vehicle, offer=offer, price=price, at=at)
        with transaction.atomic():
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
    except IntegrityError as exc:
        raise BusinessRuleViolation(
            "This vehicle already has this plan (or had its trial).", code=ErrorCode.ALREADY_SUBSCRIBED
        ) from exc
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method)
    subscription.refresh_from_db()
    return CheckoutOutcome(status=status, subscription=subscription, invoice=invoice, attempt=attempt)


def _start_trial(
    *, owner: Owner, vehicle: Vehicle, offer: Offer, price: Price, at: datetime
) -> CheckoutOutcome:
    trial_end = at + timedelta(days=offer.trial_days)
    with transaction.atomic():
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
        entitlements_grant_for_subscription_period(
            subscription=subscription, period_start=at, period_end=trial_end
        )
    return CheckoutOutcome(status="trialing", subscription=subscription)


def subscription_cancel(*, owner: Owner, subscription_id, at: datetime) -> Subscription:
    """Cancel at period end; within the market's withdrawal period a consumer gets a full
    refund and the features end now."""
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
    return subscription


def _end_now_with_refund(*, subscription: Subscription, at: datetime, reason: str) -> Subscription:
    """End now; refund every succeeded payment of the subscription in full."""
    for attempt in PaymentAttempt.objects.filter(
        invoice__subscription=subscription, status=AttemptStatus.SUCCEEDED
    ):
        refund_in_full_or_raise(payment_attempt=attempt, reason=reason)
    return subscription_end_now(subscription=subscription, at=at)


def subscription_end_now(*, subscription: Subscription, at: datetime) -> Subscription:
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if subscription.status == SubscriptionStatus.CANCELED:
            return subscription
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = subscription.canceled_at or at
        subscription.ended_at = at
        subscription.save(update_fields=["status", "canceled_at", "ended_at", "updated_at"])
        PaymentAttempt.objects.filter(
            invoice__subscription=subscription, status=AttemptStatus.REQUIRES_ACTION
        ).update(status=AttemptStatus.CANCELED)
        subscription.invoices.filter(status="open").exclude(
            attempts__status__in=["unknown", "pending"]
        ).update(status="void")
        entitlements_end(subscription=subscription, at=at)
    return subscription


def subscription_resume(*, owner: Owner, subscription_id, at: datetime) -> Subscription:
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
    *, owner: Owner, subscription_id, offer_code: str, at: datetime
) -> PlanChangePreview:
    """Upgrade (higher price): now, old plan credited and new plan charged for the remaining time,
    to the second. Downgrade: at the end of the current period, nothing charged now."""
    subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id)
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise BusinessRuleViolation(
            "Plans can be changed on an active subscription (not during a trial or while unpaid)."
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
        old.amount_minor, new_price.amount_minor, part_seconds=max(0, remaining), whole_seconds=whole
    )
    lines = [
        LineSpec(f"Unused time on {subscription.offer.name}", credit, subscription.offer_id, at, end),
        LineSpec(f"Remaining time on {offer.name}", debit, offer.pk, at, end),
    ]
    return PlanChangePreview("upgrade", at, old.currency, lines, new_price)


def subscription_change_apply(
    *, owner: Owner, subscription_id, offer_code: str, at: datetime
) -> CheckoutOutcome:
    preview = subscription_change_preview(
        owner=owner, subscription_id=subscription_id, offer_code=offer_code, at=at
    )
    subscription = subscription_of_owner(owner=owner, subscription_id=subscription_id)
    if preview.kind == "downgrade":
        with transaction.atomic():
            subscription = subscription_of_owner(
                owner=owner, subscription_id=subscription_id, for_update=True
            )
            subscription.pending_offer_id, subscription.pending_price = (
                preview.new_price.offer_id,
                preview.new_price,
            )
            subscription.save(update_fields=["pending_offer", "pending_price", "updated_at"])
        return CheckoutOutcome(status="scheduled", subscription=subscription)
    payment_method = payment_method_for_charge(owner=owner, payment_method_id=None)
    awaiting = subscription.invoices.filter(
        kind=InvoiceKind.PLAN_CHANGE,
        status=InvoiceStatus.OPEN,
        created_at__gt=at - timedelta(days=1),  # an abandoned 3-D Secure blocks for a day at most
        attempts__status__in=[AttemptStatus.PENDING, AttemptStatus.REQUIRES_ACTION, AttemptStatus.UNKNOWN],
    )
    if awaiting.exists():
        raise Conflict(
            "A plan change of this subscription is still awaiting its payment (3-D Secure or "
            "processing): confirm or wait for it first.",
            code=ErrorCode.CONFLICT,
        )
    with transaction.atomic():
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
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method)
    subscription.refresh_from_db()
    return CheckoutOutcome(status=status, subscription=subscription, invoice=invoice, attempt=attempt)
