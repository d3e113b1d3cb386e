"""Serializers of the owner and vehicle API. Explicit fields only (never `__all__`): what an app
may send is the input serializers' fields, nothing else is read (no mass assignment)."""

from __future__ import annotations

from django.db.models import Sum
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import (
    AttemptStatus,
    Invoice,
    InvoiceLine,
    Offer,
    PaymentAttempt,
    PaymentMethod,
    Purchase,
    Refund,
    RefundStatus,
    Subscription,
)
from core.money import format_money


class MoneySerializer(serializers.Serializer):
    amount_minor = serializers.IntegerField(help_text="Integer amount in the currency's minor unit.")
    currency = serializers.CharField(help_text="ISO 4217 code")
    formatted = serializers.CharField(help_text="For display, e.g. 'EUR 9.99', 'JPY 1,200'")


def money(amount_minor: int, currency: str) -> dict:
    return {
        "amount_minor": amount_minor,
        "currency": currency,
        "formatted": format_money(amount_minor, currency),
    }


class _MoneyField(serializers.Field):
    """Money read from two (dotted) attributes of the object: its minor units and its currency."""

    def __init__(self, amount: str, currency: str = "currency", **kwargs):
        self.amount_attr, self.currency_attr = amount, currency
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, obj) -> dict:
        return money(_dotted(obj, self.amount_attr), _dotted(obj, self.currency_attr))


def _dotted(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


MoneyField = extend_schema_field(MoneySerializer)(_MoneyField)


# --- vehicles -------------------------------------------------------------------------------
class VehicleSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    vin = serializers.CharField()
    brand = serializers.CharField()
    model = serializers.CharField()
    model_year = serializers.IntegerField()
    market = serializers.CharField(source="market.code")
    currency = serializers.CharField(source="market.currency")
    software_version = serializers.CharField()
    capabilities = serializers.SerializerMethodField()
    battery_capacity_wh = serializers.IntegerField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)

    def get_capabilities(self, vehicle) -> list[str]:
        return sorted(c.code for c in vehicle.capabilities.all())


# --- offers ---------------------------------------------------------------------------------
class OfferSerializer(serializers.Serializer):
    code = serializers.CharField(source="offer.code")
    name = serializers.CharField(source="offer.name")
    kind = serializers.CharField(source="offer.kind")
    interval = serializers.CharField(source="offer.interval", allow_blank=True)
    trial_days = serializers.IntegerField(source="offer.trial_days")
    features = serializers.SerializerMethodField()
    price = MoneyField("price.amount_minor", "price.currency")
    price_version = serializers.IntegerField(source="price.version")
    owned = serializers.BooleanField(help_text="Every feature is already this vehicle's for good.")
    subscribed = serializers.BooleanField(help_text="A live subscription to this offer exists.")
    included_until = serializers.DateTimeField(allow_null=True, help_text="Included with the car until.")
    trial_available = serializers.BooleanField()

    def get_features(self, item) -> list[str]:
        return [f.code for f in item.offer.features.all()]


# --- purchases, subscriptions ----------------------------------------------------------------
class PurchaseSerializer(serializers.ModelSerializer):
    offer = serializers.CharField(source="offer.code")
    vehicle = serializers.UUIDField(source="vehicle_id")
    price = MoneyField("price.amount_minor", "price.currency")

    class Meta:
        model = Purchase
        fields = ["id", "vehicle", "offer", "status", "price", "created_at", "paid_at"]


class SubscriptionSerializer(serializers.ModelSerializer):
    offer = serializers.CharField(source="offer.code")
    vehicle = serializers.UUIDField(source="vehicle_id")
    price = MoneyField("price.amount_minor", "price.currency")
    pending_offer: serializers.SlugRelatedField[Offer] = serializers.SlugRelatedField(
        slug_field="code", read_only=True, allow_null=True, help_text="A downgrade applied at period end."
    )

    class Meta:
        model = Subscription
        fields = [
            "id",
            "vehicle",
            "offer",
            "status",
            "price",
            "current_period_start",
            "current_period_end",
            "trial_end",
            "cancel_at_period_end",
            "pending_offer",
            "canceled_at",
            "ended_at",
            "created_at",
        ]


# --- invoices, payments ----------------------------------------------------------------------
class InvoiceLineSerializer(serializers.ModelSerializer):
    amount = MoneyField("amount_minor", "invoice.currency")

    class Meta:
        model = InvoiceLine
        fields = ["description", "amount", "period_start", "period_end"]


# --- refunds: what was given back, counted from succeeded refunds only ---------------------
# The view querysets prefetch or annotate these, so a list costs the same queries whatever its size;
# a single object (a checkout answer) is computed with one query.
REFUNDED_ANNOTATION = "refunded_succeeded_minor"


def refunded_minor_of_attempt(attempt: PaymentAttempt) -> int:
    """Minor units refunded by succeeded refunds (pending/unknown ones do not count yet)."""
    annotated = getattr(attempt, REFUNDED_ANNOTATION, None)
    if annotated is not None:
        return annotated
    if getattr(attempt, "_state", None) is None or attempt._state.adding:
        return 0
    succeeded = attempt.refunds.filter(status=RefundStatus.SUCCEEDED)
    return succeeded.aggregate(total=Sum("amount_minor"))["total"] or 0


def _invoice_refunds(invoice: Invoice) -> list[Refund]:
    """The refunds of every attempt of the invoice (prefetched by the invoice views)."""
    refunds = [refund for attempt in invoice.attempts.all() for refund in attempt.refunds.all()]
    return sorted(refunds, key=lambda refund: refund.created_at)


class RefundSerializer(serializers.ModelSerializer):
    amount = MoneyField("amount_minor")
    payment = serializers.UUIDField(source="payment_attempt_id")
    reason = serializers.CharField(help_text="Why: withdrawal, vehicle sold, undeliverable, goodwill...")

    class Meta:
        model = Refund
        fields = ["id", "payment", "amount", "status", "reason", "created_at"]


class InvoiceSerializer(serializers.ModelSerializer):
    total = MoneyField("total_minor")
    tax = MoneyField("tax_minor")
    vehicle = serializers.UUIDField(source="vehicle_id", allow_null=True)
    lines = InvoiceLineSerializer(many=True)
    refunded = serializers.SerializerMethodField(
        help_text="Given back so far: the sum of the succeeded refunds of this invoice's payments."
    )
    refunds = serializers.SerializerMethodField(
        help_text="Every refund of this invoice's payments, with its status and reason (pending and "
        "unknown ones are under way and not counted in `refunded` yet)."
    )

    @extend_schema_field(MoneySerializer)
    def get_refunded(self, invoice) -> dict:
        total = sum(r.amount_minor for r in _invoice_refunds(invoice) if r.status == RefundStatus.SUCCEEDED)
        return money(total, invoice.currency)

    @extend_schema_field(RefundSerializer(many=True))
    def get_refunds(self, invoice) -> list[dict]:
        # many=True: a ReturnList (the stubs type `.data` as a ReturnDict)
        return RefundSerializer(_invoice_refunds(invoice), many=True).data  # type: ignore[return-value]

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "kind",
            "status",
            "vehicle",
            "period_start",
            "period_end",
            "total",
            "tax",
            "lines",
            "refunded",
            "refunds",
            "created_at",
            "paid_at",
        ]


PAYMENT_STATUSES = [*AttemptStatus.values, "partially_refunded", "refunded"]


class PaymentSerializer(serializers.ModelSerializer):
    amount = MoneyField("amount_minor")
    refunded = serializers.SerializerMethodField(
        help_text="Given back so far by succeeded refunds (pending or unknown refunds not yet)."
    )
    status = serializers.SerializerMethodField(
        help_text="The attempt's status; a succeeded payment that refunds cover in part or in full "
        "reads partially_refunded or refunded."
    )
    invoice = serializers.UUIDField(source="invoice_id")
    client_secret = serializers.SerializerMethodField(
        help_text="Only while the payment requires action (3-D Secure): confirm it with Stripe's SDK."
    )
    decline_code = serializers.CharField(source="error_code")

    class Meta:
        model = PaymentAttempt
        fields = [
            "id",
            "invoice",
            "status",
            "amount",
            "refunded",
            "decline_code",
            "client_secret",
            "created_at",
            "updated_at",
        ]

    def get_client_secret(self, attempt) -> str | None:
        return (attempt.client_secret or None) if attempt.status == "requires_action" else None

    @extend_schema_field(MoneySerializer)
    def get_refunded(self, attempt) -> dict:
        return money(refunded_minor_of_attempt(attempt), attempt.currency)

    @extend_schema_field(serializers.ChoiceField(choices=PAYMENT_STATUSES))
    def get_status(self, attempt) -> str:
        refunded = refunded_minor_of_attempt(attempt) if attempt.status == AttemptStatus.SUCCEEDED else 0
        if refunded <= 0:
            return attempt.status
        return "refunded" if refunded >= attempt.amount_minor else "partially_refunded"


class PaymentMethodSerializer(serializers.ModelSerializer):
    class Meta:
        model = PaymentMethod
        fields = ["id", "brand", "last4", "exp_month", "exp_year", "is_default", "created_at"]


class CheckoutSerializer(serializers.Serializer):
    """The answer to a purchase, a subscription start or a plan change."""

    status = serializers.ChoiceField(
        choices=["succeeded", "trialing", "requires_action", "processing", "scheduled"],
        help_text="requires_action: confirm `payment.client_secret` with Stripe's SDK, then POST "
        "/me/payments/{id}/confirm/. processing: the outcome is being confirmed; poll the payment.",
    )
    purchase = PurchaseSerializer(allow_null=True, required=False)
    subscription = SubscriptionSerializer(allow_null=True, required=False)
    invoice = InvoiceSerializer(allow_null=True, required=False)
    payment = PaymentSerializer(source="attempt", allow_null=True, required=False)


# --- inputs ---------------------------------------------------------------------------------
class InvoicePayInput(serializers.Serializer):
    payment_method = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="One of my payment methods; default: my default card",
    )


class PurchaseCreateInput(serializers.Serializer):
    offer = serializers.SlugField(help_text="Offer code from the vehicle's offers")
    payment_method = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,  # 0 was falsy downstream and silently charged the default card
        max_value=2**63 - 1,
        help_text="Id of one of your payment methods; default if omitted",
    )


class SubscriptionCreateInput(PurchaseCreateInput):
    trial = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Omit: trial when eligible. true: trial or refuse (trial_already_used). false: pay now.",
    )


class PlanChangeInput(serializers.Serializer):
    offer = serializers.SlugField()


class PlanChangePreviewSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["upgrade", "downgrade"])
    effective_at = serializers.DateTimeField()
    amount_due = serializers.SerializerMethodField()
    lines = serializers.SerializerMethodField()

    @extend_schema_field(MoneySerializer)
    def get_amount_due(self, preview) -> dict:
        return money(preview.amount_due_minor, preview.currency)

    @extend_schema_field(InvoiceLineSerializer(many=True))
    def get_lines(self, preview) -> list[dict]:
        return [
            {
                "description": line.description,
                "amount": money(line.amount_minor, preview.currency),
                "period_start": line.period_start,
                "period_end": line.period_end,
            }
            for line in preview.lines
        ]


class PaymentMethodAddInput(serializers.Serializer):
    payment_method = serializers.RegexField(
        r"^pm_[A-Za-z0-9_]+$",
        max_length=64,
        error_messages={"invalid": "Must be a Stripe PaymentMethod id (pm_...)."},
        help_text="Stripe PaymentMethod id, pm_...",
    )
    make_default = serializers.BooleanField(default=False)


class SetupIntentSerializer(serializers.Serializer):
    id = serializers.CharField()
    client_secret = serializers.CharField()
    status = serializers.CharField()


class TransferStartedSerializer(serializers.Serializer):
    transfer = serializers.UUIDField(source="transfer.id")
    code = serializers.CharField(help_text="Give it to the buyer; shown only once.")
    expires_at = serializers.DateTimeField(source="transfer.expires_at")


class TransferClaimInput(serializers.Serializer):
    vin = serializers.CharField(max_length=17, min_length=17)
    code = serializers.CharField(max_length=32)


# --- vehicle side ---------------------------------------------------------------------------
class ActiveFeatureSerializer(serializers.Serializer):
    code = serializers.CharField()
    valid_until = serializers.DateTimeField(allow_null=True, help_text="null: perpetual")
    sources = serializers.ListField(child=serializers.CharField())


class VehicleEntitlementsSerializer(serializers.Serializer):
    vin = serializers.CharField()
    at = serializers.DateTimeField()
    features = ActiveFeatureSerializer(many=True)


class EntitlementTokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        help_text="Compact JWS (Ed25519); verify with /api/v1/.well-known/jwks.json"
    )
    kid = serializers.CharField()
    expires_at = serializers.DateTimeField()
