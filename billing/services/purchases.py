"""One-time unlocks: buy (charge, then grant perpetually) and withdraw (refund, then end)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from billing.models import (
    AttemptStatus,
    Entitlement,
    Invoice,
    InvoiceKind,
    Offer,
    Purchase,
    PurchaseStatus,
)
from billing.services.catalog import offer_for_vehicle
from billing.services.checkout import CheckoutOutcome, invoice_charge
from billing.services.coverage import vehicle_reserve
from billing.services.customers import payment_method_for_charge
from billing.services.entitlements import entitlements_end
from billing.services.invoices import LineSpec, invoice_create
from billing.services.payments import payment_attempts_abandon_for
from billing.services.refunds import refund_in_full_or_raise
from billing.services.transitions import purchase_transition
from core.errors import BusinessRuleViolation, Conflict, ErrorCode, NotFound
from vehicles.models import Owner, Vehicle


def _features_owned_perpetually(*, vehicle: Vehicle, offer: Offer, at: datetime) -> bool:
    codes = {f.code for f in offer.features.all()}
    owned = set(
        Entitlement.objects.filter(vehicle=vehicle, starts_at__lte=at, ends_at__isnull=True)
        .filter(feature__code__in=codes)
        .values_list("feature__code", flat=True)
    )
    return owned == codes


def purchase_create(
    *, owner: Owner, vehicle: Vehicle, offer_code: str, payment_method_id: int | None, at: datetime
) -> CheckoutOutcome:
    """Buy a one-time unlock for a vehicle the owner owns (the caller resolved it by owner)."""
    offer, price = offer_for_vehicle(vehicle=vehicle, offer_code=offer_code, at=at)
    payment_attempts_abandon_for(
        invoices=Invoice.objects.filter(
            purchase__vehicle=vehicle, purchase__offer=offer, purchase__status=PurchaseStatus.PENDING
        )
    )
    if offer.kind != Offer.Kind.ONE_TIME:
        raise BusinessRuleViolation(
            f"'{offer_code}' is a subscription: start it with POST .../subscriptions/.",
            code=ErrorCode.OFFER_UNAVAILABLE,
        )
    if price.amount_minor == 0:  # checked before anything is created: nothing to charge
        raise BusinessRuleViolation("Free offers are granted, not bought.", code=ErrorCode.OFFER_UNAVAILABLE)
    payment_method = payment_method_for_charge(owner=owner, payment_method_id=payment_method_id)
    try:
        with transaction.atomic():
            vehicle_reserve(vehicle=vehicle, owner=owner)  # checked under the vehicle lock
            if _features_owned_perpetually(vehicle=vehicle, offer=offer, at=at):
                raise BusinessRuleViolation(
                    "This vehicle already has these features for good.", code=ErrorCode.ALREADY_ENTITLED
                )
            purchase = Purchase.objects.create(owner=owner, vehicle=vehicle, offer=offer, price=price)
            invoice = invoice_create(
                owner=owner,
                vehicle=vehicle,
                kind=InvoiceKind.PURCHASE,
                currency=price.currency,
                lines=[LineSpec(description=offer.name, amount_minor=price.amount_minor, offer_id=offer.pk)],
                at=at,
                purchase=purchase,
            )
    except IntegrityError as exc:
        raise Conflict(
            "A purchase of this offer for this vehicle is already pending or paid.",
            code=ErrorCode.ALREADY_ENTITLED,
        ) from exc
    status, attempt = invoice_charge(invoice=invoice, payment_method=payment_method, at=at)
    purchase.refresh_from_db()
    return CheckoutOutcome(status=status, purchase=purchase, invoice=invoice, attempt=attempt)


def withdrawal_deadline(*, owner: Owner, vehicle: Vehicle, since: datetime) -> datetime | None:
    """Until when a consumer may withdraw (None: no withdrawal right, e.g. fleets, US)."""
    days = vehicle.market.withdrawal_period_days
    if not owner.is_consumer or days == 0:
        return None
    return since + timedelta(days=days)


def purchase_withdraw(*, owner: Owner, purchase_id: UUID | str, at: datetime) -> Purchase:
    """Within the withdrawal period: full refund, and the feature ends now."""
    try:
        purchase = (
            Purchase.objects.select_related("vehicle__market", "invoice")
            .filter(owner=owner, pk=purchase_id)
            .first()
        )
    except DjangoValidationError:  # not a UUID: no such purchase either
        purchase = None
    if purchase is None:
        raise NotFound("No such purchase.")
    if purchase.status != PurchaseStatus.PAID:
        raise BusinessRuleViolation(f"A {purchase.status} purchase cannot be withdrawn.")
    assert purchase.paid_at is not None  # a paid purchase
    deadline = withdrawal_deadline(owner=owner, vehicle=purchase.vehicle, since=purchase.paid_at)
    if deadline is None or at >= deadline:
        raise BusinessRuleViolation(
            "The withdrawal period for this purchase is over.", code=ErrorCode.WITHDRAWAL_PERIOD_OVER
        )
    attempt = purchase.invoice.attempts.get(status=AttemptStatus.SUCCEEDED)
    refund_in_full_or_raise(payment_attempt=attempt, reason="withdrawal")
    with transaction.atomic():
        purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
        purchase_transition(purchase=purchase, to=PurchaseStatus.REFUNDED)
        entitlements_end(purchase=purchase, at=at)
    return purchase
