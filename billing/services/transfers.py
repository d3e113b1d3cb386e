"""Resale: the VIN keeps its rights, the owner changes.

The current owner starts a transfer and hands the one-time code to the buyer, who claims the car.
At the claim: the seller's subscriptions on the car end with a prorated refund of the unused time,
purchases whose offer says `ends_on_transfer` end, everything else (one-time unlocks, included
offers, grants) stays with the vehicle. Invoices and payment methods belong to owners, so the
buyer never sees the seller's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction

from billing.models import (
    AttemptStatus,
    Invoice,
    Offer,
    PaymentAttempt,
    Purchase,
    PurchaseStatus,
    Subscription,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services import outbound_events
from billing.services.entitlements import entitlements_end
from billing.services.payments import payment_attempts_abandon_for
from billing.services.refunds import refund_execute_safely, refund_prepare, refundable_minor
from billing.services.subscriptions import subscription_end_now
from core.errors import BusinessRuleViolation, ErrorCode
from core.rounding import chargeable_step, prorate_between
from vehicles.models import Owner, Ownership, Vehicle, VehicleTransfer
from vehicles.selectors import vehicle_of_owner
from vehicles.services.transfers import vehicle_transfer_transition

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I look-alikes
CODE_LENGTH = 10
MAX_FAILED_CLAIMS = 5
TRANSFER_TTL = timedelta(days=7)


@dataclass(frozen=True)
class StartedTransfer:
    transfer: VehicleTransfer
    code: str  # shown once to the seller; only its keyed hash is stored


def _code_hash(*, vin: str, code: str) -> str:
    message = f"{vin}:{code.strip().upper().replace('-', '')}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def transfer_start(*, owner: Owner, vehicle_id: UUID | str, at: datetime) -> StartedTransfer:
    vehicle = vehicle_of_owner(owner=owner, vehicle_id=vehicle_id)
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    with transaction.atomic():
        for earlier in VehicleTransfer.objects.select_for_update().filter(
            vehicle=vehicle, status=VehicleTransfer.Status.PENDING
        ):
            vehicle_transfer_transition(transfer=earlier, to=VehicleTransfer.Status.CANCELED)
        transfer = VehicleTransfer.objects.create(
            vehicle=vehicle,
            from_owner=owner,
            code_hash=_code_hash(vin=vehicle.vin, code=code),
            expires_at=at + TRANSFER_TTL,
        )
    return StartedTransfer(transfer=transfer, code=code)


def _invalid_code() -> BusinessRuleViolation:
    return BusinessRuleViolation(
        "This VIN and code do not match an open transfer. Ask the seller for a new code.",
        code=ErrorCode.TRANSFER_CODE_INVALID,
    )


def transfer_claim(*, new_owner: Owner, vin: str, code: str, at: datetime) -> Vehicle:
    """Claim a car with its one-time code. Wrong codes count; after 5 the transfer expires."""
    vin = vin.strip().upper()
    with transaction.atomic():
        transfer = (
            VehicleTransfer.objects.select_for_update()
            .select_related("vehicle")
            .filter(vehicle__vin=vin, status=VehicleTransfer.Status.PENDING)
            .first()
        )
        if transfer is None or transfer.expires_at <= at:
            raise _invalid_code()
        if not hmac.compare_digest(transfer.code_hash, _code_hash(vin=vin, code=code)):
            transfer.failed_attempts += 1
            transfer.save(update_fields=["failed_attempts"])
            if transfer.failed_attempts >= MAX_FAILED_CLAIMS:
                vehicle_transfer_transition(transfer=transfer, to=VehicleTransfer.Status.EXPIRED)
            wrong = True
        else:
            wrong = False
    if wrong:  # the counter above is committed before the error is raised
        raise _invalid_code()
    if transfer.from_owner_id == new_owner.pk:
        raise BusinessRuleViolation("You already own this vehicle.", code=ErrorCode.INVALID_STATE)
    vehicle = transfer.vehicle
    # The seller's payments still waiting for 3-D Secure on this car are canceled at Stripe first
    # (or recorded, if they succeeded meanwhile), so a late authentication cannot charge. Ones
    # whose outcome is unknown settle later; fulfilment then refunds them (the car changed hands).
    payment_attempts_abandon_for(
        invoices=Invoice.objects.filter(vehicle=vehicle, owner_id=transfer.from_owner_id),
        block_on_unknown=False,
    )
    with transaction.atomic():
        Vehicle.objects.select_for_update().get(pk=vehicle.pk)  # serializes with checkouts of this car
        ended = (
            Ownership.objects.select_for_update()
            .filter(vehicle=vehicle, ends_at__isnull=True)
            .update(ends_at=at)
        )
        if ended != 1:
            raise BusinessRuleViolation("The vehicle's ownership changed meanwhile.", code=ErrorCode.CONFLICT)
        Ownership.objects.create(vehicle=vehicle, owner=new_owner, starts_at=at)
        transfer = VehicleTransfer.objects.select_for_update().get(pk=transfer.pk)
        if transfer.status != VehicleTransfer.Status.PENDING:
            raise _invalid_code()
        vehicle_transfer_transition(
            transfer=transfer, to=VehicleTransfer.Status.COMPLETED, to_owner=new_owner, completed_at=at
        )
        refund_ids = _release_seller_rights(vehicle=vehicle, seller_id=transfer.from_owner_id, at=at)
        outbound_events.vehicle_transferred(vehicle=vehicle, new_owner_id=new_owner.pk, at=at)  # outbox
        # After commit nothing may raise: a refund that cannot be sent now is finished by the reconciler.
        def execute_refunds() -> None:
            for refund_id in refund_ids:
                refund_execute_safely(refund_id=refund_id)

        transaction.on_commit(execute_refunds)
    return vehicle


def _release_seller_rights(*, vehicle: Vehicle, seller_id: int, at: datetime) -> list:
    refund_ids = []
    for subscription in Subscription.objects.filter(
        vehicle=vehicle, owner_id=seller_id, status__in=LIVE_SUBSCRIPTION_STATUSES
    ):
        # The current period may be paid by several payments (the period, then an upgrade):
        # the unused time is refunded from them, newest first.
        payments = PaymentAttempt.objects.filter(
            invoice__subscription=subscription,
            invoice__period_start__lte=at,
            invoice__period_end__gt=at,
            status=AttemptStatus.SUCCEEDED,
        ).order_by("-created_at")
        unused = prorate_between(
            subscription.price.amount_minor,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            at=at,
            step=chargeable_step(subscription.price.currency),
        )
        for payment in payments:
            credit = min(unused, refundable_minor(payment_attempt=payment))
            if credit > 0:
                refund_ids.append(
                    refund_prepare(payment_attempt=payment, amount_minor=credit, reason="vehicle sold").pk
                )
                unused -= credit
        subscription_end_now(subscription=subscription, at=at)
    for purchase in Purchase.objects.filter(
        vehicle=vehicle,
        status=PurchaseStatus.PAID,
        offer__transfer_policy=Offer.TransferPolicy.ENDS_ON_TRANSFER,
    ):
        entitlements_end(purchase=purchase, at=at)
    return refund_ids
