"""Owner endpoints (mobile app, car screen on the owner's behalf) under /api/v1/me/.

Thin: parse, authorize (every queryset is scoped to the calling owner, so another owner's object
is a 404), call one service, render.

One Idempotency-Key rule: every POST that can move money or mint a one-time secret (purchase,
subscribe, change, cancel, withdraw, setup-intent, confirm, transfer start) requires the header
(400 `idempotency_key_required` without it) and replays its stored answer on a retry; reads and
pure state toggles (resume, default card, change preview, claim, add a card) take none.
"""

from __future__ import annotations

import hashlib

import django_filters
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from billing.api import serializers as s
from billing.models import Invoice, PaymentAttempt, PaymentMethod, Purchase, RefundStatus, Subscription
from billing.selectors import offers_for_vehicle
from billing.services import customers, invoice_payments, purchases, subscriptions, transfers
from billing.services.checkout import CheckoutOutcome
from billing.services.clocks import clock_now
from billing.services.payments import payment_attempt_refresh
from core.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from core.ratelimit import CheckoutThrottle
from vehicles.api.permissions import IsOwner, current_owner
from vehicles.models import Vehicle
from vehicles.selectors import vehicle_of_owner, vehicles_of_owner

ERROR = OpenApiResponse(description='`{"code": "...", "message": "...", "details": {...}}`')
# What every route under the Idempotency-Key rule may answer besides its own outcomes
KEYED_RESPONSES = {
    400: OpenApiResponse(description="idempotency_key_required, idempotency_key_invalid, validation_error"),
    409: OpenApiResponse(description="idempotency_key_in_use: the first request with this key still runs"),
    422: OpenApiResponse(description="idempotency_key_reused: this key was used for another request"),
}
CHECKOUT_RESPONSES = {
    400: KEYED_RESPONSES[400],
    201: s.CheckoutSerializer,
    202: OpenApiResponse(s.CheckoutSerializer, description="requires_action or processing"),
    402: OpenApiResponse(description="payment_declined: nothing granted"),
    404: ERROR,
    409: OpenApiResponse(description="idempotency_key_in_use / already pending"),
    422: OpenApiResponse(
        description="feature_incompatible, already_entitled, already_subscribed, trial_already_used, "
        "no_payment_method, idempotency_key_reused"
    ),
}
DECLINED_EXAMPLE = OpenApiExample(
    "declined",
    status_codes=["402"],
    value={
        "code": "payment_declined",
        "message": "The card was declined; nothing was charged.",
        "details": {"decline_code": "card_declined", "payment": "…"},
    },
)
INCOMPATIBLE_EXAMPLE = OpenApiExample(
    "incompatible",
    status_codes=["422"],
    value={
        "code": "feature_incompatible",
        "message": "This vehicle cannot use 'adas_highway_assist_monthly'.",
        "details": {"reasons": ["adas_highway_assist: missing hardware: adas_sensor_suite_l2"]},
    },
)


class _VehicleFilterSet(django_filters.FilterSet):
    # By id, not a choice among every vehicle: another owner's car and an unknown id alike give an
    # empty page (a choice field answered 400 for one and 200 for the other)
    vehicle = django_filters.UUIDFilter(field_name="vehicle_id")


def owner_filterset(model) -> type[django_filters.FilterSet]:
    """`?status=` and `?vehicle=` on an owner list."""
    meta = type("Meta", (), {"model": model, "fields": ["status", "vehicle"]})
    return type(f"{model.__name__}FilterSet", (_VehicleFilterSet,), {"Meta": meta})


def checkout_response(outcome: CheckoutOutcome) -> Response:
    code = status.HTTP_201_CREATED if outcome.status in ("succeeded", "trialing", "scheduled") else 202
    return Response(s.CheckoutSerializer(outcome).data, status=code)


class OwnerViewSet(viewsets.GenericViewSet):
    """Every queryset is built from the calling owner: another owner's object is a 404."""

    permission_classes = [IsOwner]

    @property
    def owner(self):
        return current_owner(self.request)

    @property
    def now(self):
        """The instant decisions for this owner are taken at: the real time, or their test clock's."""
        return clock_now(owner_id=self.owner.pk)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return self.queryset
        return self.owner_queryset(self.owner)

    def owner_queryset(self, owner):
        raise NotImplementedError


@extend_schema_view(
    list=extend_schema(summary="My vehicles (current ownership only)"),
    retrieve=extend_schema(summary="One of my vehicles", responses={200: s.VehicleSerializer, 404: ERROR}),
)
class MyVehicleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerViewSet):
    serializer_class = s.VehicleSerializer
    lookup_value_regex = "[0-9a-f-]{36}"

    queryset = Vehicle.objects.none()

    def owner_queryset(self, owner):
        return vehicles_of_owner(owner=owner).order_by("vin")

    def _vehicle(self):
        return vehicle_of_owner(owner=self.owner, vehicle_id=self.kwargs["pk"])

    @extend_schema(
        summary="Offers this vehicle can use, priced in its market",
        responses={200: s.OfferSerializer(many=True), 404: ERROR},
    )
    @action(detail=True, methods=["get"], pagination_class=None)  # every offer at once, a bare array
    def offers(self, request, pk=None):
        items = offers_for_vehicle(vehicle=self._vehicle(), at=self.now)
        return Response(s.OfferSerializer(items, many=True).data)

    @extend_schema(
        summary="Buy a one-time unlock",
        request=s.PurchaseCreateInput,
        responses=CHECKOUT_RESPONSES,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        examples=[DECLINED_EXAMPLE, INCOMPATIBLE_EXAMPLE],
    )
    @action(detail=True, methods=["post"], throttle_classes=[CheckoutThrottle])
    @idempotent
    def purchases(self, request, pk=None):
        data = _valid(s.PurchaseCreateInput, request)
        outcome = purchases.purchase_create(
            owner=self.owner,
            vehicle=self._vehicle(),
            offer_code=data["offer"],
            payment_method_id=data.get("payment_method"),
            at=self.now,
        )
        return checkout_response(outcome)

    @extend_schema(
        summary="Start a subscription (with a trial where the plan has one)",
        request=s.SubscriptionCreateInput,
        responses=CHECKOUT_RESPONSES,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        examples=[DECLINED_EXAMPLE, INCOMPATIBLE_EXAMPLE],
    )
    @action(detail=True, methods=["post"], throttle_classes=[CheckoutThrottle])
    @idempotent
    def subscriptions(self, request, pk=None):
        data = _valid(s.SubscriptionCreateInput, request)
        outcome = subscriptions.subscription_start(
            owner=self.owner,
            vehicle=self._vehicle(),
            offer_code=data["offer"],
            payment_method_id=data.get("payment_method"),
            use_trial=data.get("trial"),
            at=self.now,
        )
        return checkout_response(outcome)

    @extend_schema(
        summary="Start selling this vehicle: returns a one-time code for the buyer",
        request=None,
        responses={**KEYED_RESPONSES, 201: s.TransferStartedSerializer, 404: ERROR},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def transfer(self, request, pk=None):
        started = transfers.transfer_start(owner=self.owner, vehicle_id=self._vehicle().pk, at=self.now)
        return Response(s.TransferStartedSerializer(started).data, status=status.HTTP_201_CREATED)


class TransferClaimViewSet(OwnerViewSet):
    serializer_class = s.TransferClaimInput

    @extend_schema(
        summary="Claim a bought vehicle with the seller's one-time code",
        request=s.TransferClaimInput,
        responses={200: s.VehicleSerializer, 422: OpenApiResponse(description="transfer_code_invalid")},
    )
    @action(detail=False, methods=["post"])
    def claim(self, request):
        data = _valid(s.TransferClaimInput, request)
        vehicle = transfers.transfer_claim(
            new_owner=self.owner, vin=data["vin"], code=data["code"], at=self.now
        )
        return Response(s.VehicleSerializer(vehicle_of_owner(owner=self.owner, vehicle_id=vehicle.pk)).data)


@extend_schema_view(
    list=extend_schema(summary="My subscriptions"), retrieve=extend_schema(summary="One subscription")
)
class MySubscriptionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerViewSet):
    serializer_class = s.SubscriptionSerializer
    filterset_class = owner_filterset(Subscription)

    queryset = Subscription.objects.none()

    def owner_queryset(self, owner):
        return Subscription.objects.filter(owner=owner).select_related("offer", "price", "pending_offer")

    @extend_schema(
        summary="Cancel: at period end, or now with a full refund within the withdrawal period",
        request=None,
        responses={**KEYED_RESPONSES, 200: s.SubscriptionSerializer, 404: ERROR, 422: ERROR},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def cancel(self, request, pk=None):
        subscription = subscriptions.subscription_cancel(
            owner=self.owner, subscription_id=pk, at=self.now
        )
        return Response(s.SubscriptionSerializer(subscription).data)

    @extend_schema(
        summary="Resume a subscription set to cancel, before its period ends",
        request=None,
        responses={200: s.SubscriptionSerializer, 404: ERROR, 422: ERROR},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        subscription = subscriptions.subscription_resume(
            owner=self.owner, subscription_id=pk, at=self.now
        )
        return Response(s.SubscriptionSerializer(subscription).data)

    @extend_schema(
        summary="Preview a plan change: upgrade now prorated to the second, downgrade at period end",
        request=s.PlanChangeInput,
        responses={200: s.PlanChangePreviewSerializer, 404: ERROR, 422: ERROR},
    )
    @action(detail=True, methods=["post"], url_path="change-preview")
    def change_preview(self, request, pk=None):
        data = _valid(s.PlanChangeInput, request)
        preview = subscriptions.subscription_change_preview(
            owner=self.owner, subscription_id=pk, offer_code=data["offer"], at=self.now
        )
        return Response(s.PlanChangePreviewSerializer(preview).data)

    @extend_schema(
        summary="Apply a plan change",
        request=s.PlanChangeInput,
        responses=CHECKOUT_RESPONSES,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"], throttle_classes=[CheckoutThrottle])
    @idempotent
    def change(self, request, pk=None):
        data = _valid(s.PlanChangeInput, request)
        outcome = subscriptions.subscription_change_apply(
            owner=self.owner, subscription_id=pk, offer_code=data["offer"], at=self.now
        )
        return checkout_response(outcome)


@extend_schema_view(
    list=extend_schema(summary="My one-time purchases"), retrieve=extend_schema(summary="One purchase")
)
class MyPurchaseViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerViewSet):
    serializer_class = s.PurchaseSerializer
    filterset_class = owner_filterset(Purchase)

    queryset = Purchase.objects.none()

    def owner_queryset(self, owner):
        return Purchase.objects.filter(owner=owner).select_related("offer", "price")

    @extend_schema(
        summary="Withdraw within the market's withdrawal period: full refund, the feature ends",
        request=None,
        responses={
            **KEYED_RESPONSES,
            200: s.PurchaseSerializer,
            404: ERROR,
            422: OpenApiResponse(description="withdrawal_period_over, idempotency_key_reused"),
        },
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def withdraw(self, request, pk=None):
        purchase = purchases.purchase_withdraw(owner=self.owner, purchase_id=pk, at=self.now)
        return Response(s.PurchaseSerializer(purchase).data)


@extend_schema_view(list=extend_schema(summary="My invoices"), retrieve=extend_schema(summary="One invoice"))
class MyInvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerViewSet):
    serializer_class = s.InvoiceSerializer
    filterset_class = owner_filterset(Invoice)

    queryset = Invoice.objects.none()

    def owner_queryset(self, owner):
        return Invoice.objects.filter(owner=owner).prefetch_related("lines__invoice", "attempts__refunds")

    @extend_schema(
        summary="Pay an open subscription invoice (past due or unpaid) with a card of mine: ends dunning",
        request=s.InvoicePayInput,
        responses={
            **{code: response for code, response in CHECKOUT_RESPONSES.items() if code != 201},
            200: s.CheckoutSerializer,
        },
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"], throttle_classes=[CheckoutThrottle])
    @idempotent
    def pay(self, request, pk=None):
        data = _valid(s.InvoicePayInput, request)
        outcome = invoice_payments.invoice_pay(
            owner=self.owner, invoice_id=pk, payment_method_id=data.get("payment_method"), at=self.now
        )
        code = status.HTTP_200_OK if outcome.status == "succeeded" else status.HTTP_202_ACCEPTED
        return Response(s.CheckoutSerializer(outcome).data, status=code)


@extend_schema_view(list=extend_schema(summary="My payments"), retrieve=extend_schema(summary="One payment"))
class MyPaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerViewSet):
    serializer_class = s.PaymentSerializer
    filterset_fields = ["status"]

    queryset = PaymentAttempt.objects.none()

    def owner_queryset(self, owner):
        return payments_with_refunded(PaymentAttempt.objects.filter(owner=owner))

    @extend_schema(
        summary="After 3-D Secure (or to check a processing payment): ask Stripe and settle",
        request=None,
        responses={**KEYED_RESPONSES, 200: s.PaymentSerializer, 404: ERROR},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def confirm(self, request, pk=None):
        attempt = self.get_object()
        return Response(s.PaymentSerializer(payment_attempt_refresh(attempt_id=attempt.pk)).data)


@extend_schema_view(list=extend_schema(summary="My saved payment methods"))
class MyPaymentMethodViewSet(mixins.ListModelMixin, OwnerViewSet):
    serializer_class = s.PaymentMethodSerializer

    queryset = PaymentMethod.objects.none()

    def owner_queryset(self, owner):
        return PaymentMethod.objects.filter(owner=owner)

    @extend_schema(
        summary="Save a payment method confirmed through a SetupIntent",
        request=s.PaymentMethodAddInput,
        responses={201: s.PaymentMethodSerializer, 400: ERROR},
    )
    def create(self, request):
        data = _valid(s.PaymentMethodAddInput, request)
        method = customers.payment_method_add(
            owner=self.owner,
            stripe_payment_method_id=data["payment_method"],
            make_default=data["make_default"],
        )
        return Response(s.PaymentMethodSerializer(method).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Create a Stripe SetupIntent to save a card; confirm its client_secret in the app",
        request=None,
        responses={**KEYED_RESPONSES, 201: s.SetupIntentSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=False, methods=["post"], url_path="setup-intent")
    @idempotent
    def setup_intent(self, request):
        key = request.headers["Idempotency-Key"]
        if len(key) > 64:  # Stripe's keys end at 255 characters; ours may use all 255 of them
            key = hashlib.sha256(key.encode()).hexdigest()
        result = customers.setup_intent_start(owner=self.owner, request_key=key)
        return Response(s.SetupIntentSerializer(result).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Make this my default payment method",
        request=None,
        responses={200: s.PaymentMethodSerializer, 404: ERROR},
    )
    @action(detail=True, methods=["post"])
    def default(self, request, pk=None):
        method = self.get_object()
        method = customers.payment_method_set_default(owner=self.owner, payment_method=method)
        return Response(s.PaymentMethodSerializer(method).data)


def payments_with_refunded(queryset):
    """Each attempt with the sum of its succeeded refunds, in the same query (no N+1)."""
    succeeded = Q(refunds__status=RefundStatus.SUCCEEDED)
    return queryset.annotate(
        **{s.REFUNDED_ANNOTATION: Coalesce(Sum("refunds__amount_minor", filter=succeeded), 0)}
    )


def _valid(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
