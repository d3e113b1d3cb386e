"""Stripe customers and payment methods of an owner."""

from __future__ import annotations

from django.db import transaction

from billing.gateways import stripe as gateway
from billing.models import PaymentMethod
from core.errors import ErrorCode, NotFound, ValidationError
from vehicles.models import Owner


def owner_ensure_stripe_customer(*, owner: Owner) -> str:
    """The owner's Stripe customer id, created once (row lock + key derived from the owner)."""
    if owner.stripe_customer_id:
        return owner.stripe_customer_id
    with transaction.atomic():
        locked = Owner.objects.select_for_update().get(pk=owner.pk)
        if not locked.stripe_customer_id:
            locked.stripe_customer_id = gateway.customer_create(
                email=locked.email,
                name=locked.display_name,
                metadata={"owner_id": str(locked.pk)},
                idempotency_key=f"customer-owner-{locked.pk}",
            )
            locked.save(update_fields=["stripe_customer_id"])
    owner.stripe_customer_id = locked.stripe_customer_id
    return owner.stripe_customer_id


def setup_intent_start(*, owner: Owner, request_key: str) -> gateway.SetupIntentResult:
    """A SetupIntent the app confirms with Stripe's SDK to save a card for off-session use."""
    customer_id = owner_ensure_stripe_customer(owner=owner)
    return gateway.setup_intent_create(
        customer_id=customer_id, idempotency_key=f"setup-{owner.pk}-{request_key}"
    )


def payment_method_add(*, owner: Owner, stripe_payment_method_id: str, make_default: bool) -> PaymentMethod:
    if not stripe_payment_method_id.startswith("pm_"):
        raise ValidationError("payment_method must be a Stripe PaymentMethod id (pm_...).")
    existing = PaymentMethod.objects.filter(stripe_payment_method_id=stripe_payment_method_id).first()
    if existing and existing.owner_id != owner.pk:
        raise NotFound("No such payment method.")
    if existing is None:
        customer_id = owner_ensure_stripe_customer(owner=owner)
        info = gateway.payment_method_attach(
            customer_id=customer_id, payment_method_id=stripe_payment_method_id
        )
        existing, _ = PaymentMethod.objects.get_or_create(
            stripe_payment_method_id=info.id,
            defaults={
                "owner": owner,
                "brand": info.brand,
                "last4": info.last4,
                "exp_month": info.exp_month,
                "exp_year": info.exp_year,
            },
        )
    if make_default or not PaymentMethod.objects.filter(owner=owner, is_default=True).exists():
        payment_method_set_default(owner=owner, payment_method=existing)
    return existing


def payment_method_set_default(*, owner: Owner, payment_method: PaymentMethod) -> PaymentMethod:
    if payment_method.owner_id != owner.pk:
        raise NotFound("No such payment method.")
    with transaction.atomic():
        PaymentMethod.objects.select_for_update().filter(owner=owner).exclude(pk=payment_method.pk).update(
            is_default=False
        )
        payment_method.is_default = True
        payment_method.save(update_fields=["is_default"])
    gateway.customer_set_default_payment_method(
        customer_id=owner_ensure_stripe_customer(owner=owner),
        payment_method_id=payment_method.stripe_payment_method_id,
    )
    return payment_method


def payment_method_for_charge(*, owner: Owner, payment_method_id: int | None) -> PaymentMethod:
    """The chosen payment method of this owner, or their default."""
    methods = PaymentMethod.objects.filter(owner=owner)
    method = (
        methods.filter(pk=payment_method_id).first()
        if payment_method_id
        else methods.filter(is_default=True).first()
    )
    if method is None:
        raise ValidationError(
            "Add a payment method first (POST /api/v1/me/payment-methods/).",
            code=ErrorCode.NO_PAYMENT_METHOD,
            status_code=422,
        )
    return method
