"""Payment methods, payment attempts and refunds: the committed record of every Stripe call.
Read-only: only the payment services and the reconciler change them."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import structlog
from django import forms
from django.contrib import admin, messages
from django.db.models import Q, Sum
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.admin.display import money_column, short_id
from billing.models import AttemptStatus, PaymentAttempt, PaymentMethod, Refund, RefundStatus
from billing.services.payment_refunds import payment_refund
from billing.services.payments import payment_attempt_retry_now
from billing.services.refunds import refund_in_full_or_raise, refund_retry_now, refundable_minor
from core.admin import ReadOnlyAdmin
from core.errors import BillingError
from core.money import format_money, parse_money

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Refunded(TypedDict):
        refunded_minor: int | None  # Sum of the succeeded refunds (None: none)

    PaymentWithRefunded = WithAnnotations[PaymentAttempt, _Refunded]

log = structlog.get_logger(__name__)


class ReconcileStateFilter(admin.SimpleListFilter):
    """Rows the reconciler could not settle: backed off after an error, or dead-lettered."""

    title = "reconciler"
    parameter_name = "reconciler"

    def lookups(self, request, model_admin):
        return (
            ("dead_letter", "Dead letter (needs an operator)"),
            ("backing_off", "Backing off after errors"),
        )

    def queryset(self, request, queryset):
        if self.value() == "dead_letter":
            return queryset.filter(dead_lettered_at__isnull=False)
        if self.value() == "backing_off":
            return queryset.filter(dead_lettered_at__isnull=True, reconcile_failures__gt=0)
        return queryset


@admin.register(PaymentMethod)
class PaymentMethodAdmin(ReadOnlyAdmin):
    list_display = (
        "owner",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "is_default",
        "stripe_payment_method_id",
    )
    list_filter = ("brand", "is_default")
    search_fields = ("stripe_payment_method_id", "last4", "owner__display_name", "owner__email")
    list_select_related = ("owner",)


class RefundForm(forms.Form):
    amount = forms.CharField(
        max_length=32, help_text="In the payment's currency, e.g. 4.99 (JPY: 500, BHD: 1.250)"
    )
    reason = forms.CharField(
        max_length=200, initial="goodwill", help_text="Shown to the owner with the refund."
    )
    revoke_rights = forms.BooleanField(
        required=False,
        help_text="End what the payment bought now (a refunded unlock is revoked, a refunded period ends). "
        "Leave unticked for a goodwill refund that keeps the features.",
    )


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(ReadOnlyAdmin):
    # The client secret lets a client confirm the PaymentIntent: not shown to operators.
    exclude = ("client_secret",)
    list_display = (
        "short_id",
        "invoice",
        "owner",
        "amount",
        "refunded",
        "state",
        "stripe_payment_intent_id",
        "error_code",
        "reconcile_failures",
        "dead_lettered_at",
        "created_at",
        "updated_at",
    )
    list_filter = (ReconcileStateFilter, "status", "currency", "error_code")
    search_fields = (
        "id",
        "stripe_payment_intent_id",
        "invoice__number",
        "owner__display_name",
        "owner__email",
    )
    list_select_related = ("invoice", "owner")
    date_hierarchy = "created_at"
    readonly_fields = ("amount", "refunded", "state", "idempotency_key", "refund_link")
    amount = money_column("amount_minor", description="Amount")
    actions = ("refund_in_full", "reconcile_now")

    def get_urls(self):
        refund = self.admin_site.admin_view(self.refund_view)
        return [
            path("<path:object_id>/refund/", refund, name="billing_paymentattempt_refund"),
            *super().get_urls(),
        ]

    def refund_view(self, request, object_id):
        """Full or partial refund with the entitlement policy chosen by the operator."""
        attempt = get_object_or_404(PaymentAttempt, pk=object_id)
        form = RefundForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                amount = parse_money(form.cleaned_data["amount"], attempt.currency)
                refund = payment_refund(
                    payment_attempt_id=attempt.pk,
                    amount_minor=amount.amount_minor,
                    reason=form.cleaned_data["reason"],
                    revoke_rights=form.cleaned_data["revoke_rights"],
                    at=timezone.now(),
                )
            except BillingError as exc:
                form.add_error("amount", exc.message)
            else:
                log.info(
                    "admin_refund", attempt=str(attempt.pk), refund=str(refund.pk), operator=str(request.user)
                )
                self.message_user(
                    request,
                    f"Refund of {format_money(refund.amount_minor, refund.currency)}: {refund.status}.",
                )
                return redirect("admin:billing_paymentattempt_change", attempt.pk)
        refundable = refundable_minor(payment_attempt=attempt)
        context = {
            **self.admin_site.each_context(request),
            "attempt": attempt,
            "form": form,
            "paid": format_money(attempt.amount_minor, attempt.currency),
            "refunded": format_money(attempt.amount_minor - refundable, attempt.currency),
            "refundable": format_money(refundable, attempt.currency),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/billing/paymentattempt/refund.html", context)

    @admin.display(description="Refund")
    def refund_link(self, obj: PaymentAttempt) -> str:
        if obj.status != AttemptStatus.SUCCEEDED:
            return "—"
        url = reverse("admin:billing_paymentattempt_refund", args=[obj.pk])
        return format_html('<a class="button" href="{}">Refund (full or partial)…</a>', url)

    def get_queryset(self, request):
        succeeded = Q(refunds__status=RefundStatus.SUCCEEDED)
        return (
            super()
            .get_queryset(request)
            .annotate(refunded_minor=Sum("refunds__amount_minor", filter=succeeded))
        )

    @admin.display(description="Refunded", ordering="refunded_minor")
    def refunded(self, obj: PaymentWithRefunded) -> str:
        if not obj.refunded_minor:
            return "—"
        share = "in full" if obj.refunded_minor >= obj.amount_minor else "partly"
        return f"{format_money(obj.refunded_minor, obj.currency)} ({share})"

    @admin.display(description="State", ordering="status")
    def state(self, obj: PaymentAttempt) -> str:
        """The status, and once refunds succeeded, whether the payment is refunded in full or partly."""
        refunded = getattr(obj, "refunded_minor", None) or 0
        if obj.status == AttemptStatus.SUCCEEDED and refunded:
            return "Refunded" if refunded >= obj.amount_minor else "Partly refunded"
        return obj.get_status_display()

    @admin.action(description="Retry now: ask Stripe where these payments stand (clears the dead letter)")
    def reconcile_now(self, request, queryset) -> None:
        for attempt in queryset:
            try:
                settled = payment_attempt_retry_now(attempt_id=attempt.pk)
            except Exception as exc:  # noqa: BLE001 - shown to the operator, recorded on the row
                self.message_user(request, f"{short_id(attempt.id)}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{short_id(attempt.id)}: {settled.status}.")

    @admin.action(description="Refund in full what is left (goodwill: the features stay)")
    def refund_in_full(self, request, queryset) -> None:
        for attempt in queryset.filter(status=AttemptStatus.SUCCEEDED):
            try:
                refund = refund_in_full_or_raise(
                    payment_attempt=attempt,
                    reason="goodwill",  # the owner sees the reason, not who
                )
                log.info("goodwill_refund", attempt=str(attempt.pk), operator=str(request.user))
            except BillingError as exc:
                self.message_user(request, f"{attempt.invoice}: {exc.message}", messages.ERROR)
                continue
            if refund is None:
                self.message_user(request, f"{attempt.invoice}: already fully refunded.", messages.WARNING)
            else:
                amount = format_money(refund.amount_minor, refund.currency)
                self.message_user(request, f"{attempt.invoice}: refund of {amount} {refund.status}.")

    @admin.display(description="ID", ordering="id")
    def short_id(self, obj: PaymentAttempt) -> str:
        return short_id(obj.id)

    @admin.display(description="Stripe idempotency key")
    def idempotency_key(self, obj: PaymentAttempt) -> str:
        return obj.idempotency_key


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = (
        "short_id",
        "payment_intent",
        "invoice_number",
        "amount",
        "status",
        "reason",
        "stripe_refund_id",
        "reconcile_failures",
        "dead_lettered_at",
        "created_at",
    )
    list_filter = (ReconcileStateFilter, "status", "currency")
    actions = ("reconcile_now",)

    @admin.action(
        description="Retry now: send these refunds to Stripe again (same key; clears the dead letter)"
    )
    def reconcile_now(self, request, queryset) -> None:
        for refund in queryset:
            try:
                settled = refund_retry_now(refund_id=refund.pk)
            except Exception as exc:  # noqa: BLE001 - shown to the operator, recorded on the row
                self.message_user(request, f"{short_id(refund.id)}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{short_id(refund.id)}: {settled.status}.")

    search_fields = (
        "id",
        "stripe_refund_id",
        "reason",
        "payment_attempt__stripe_payment_intent_id",
        "payment_attempt__invoice__number",
    )
    list_select_related = ("payment_attempt__invoice",)
    date_hierarchy = "created_at"
    readonly_fields = ("amount",)
    amount = money_column("amount_minor", description="Amount")

    @admin.display(description="ID", ordering="id")
    def short_id(self, obj: Refund) -> str:
        return short_id(obj.id)

    @admin.display(description="PaymentIntent", ordering="payment_attempt__stripe_payment_intent_id")
    def payment_intent(self, obj: Refund) -> str:
        return obj.payment_attempt.stripe_payment_intent_id or "—"

    @admin.display(description="Invoice", ordering="payment_attempt__invoice__number")
    def invoice_number(self, obj: Refund) -> str:
        return str(obj.payment_attempt.invoice)
