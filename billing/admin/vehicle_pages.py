"""The billing side of the vehicle and owner pages: one page answers "what does this car have,
and what did its owner pay". Billing registers these on the vehicles' admin classes itself
(vehicles never imports billing): inlines, read-only summaries and the billing actions.

Every inline and summary reads with a fixed number of queries, whatever the car's history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Count, Q, Sum
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing.admin.display import admin_link, money_column, short_id
from billing.admin.vehicle_actions import grant_included_offers, start_vehicle_transfer
from billing.models import (
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    PaymentAttempt,
    PaymentMethod,
    Purchase,
    Refund,
    RefundStatus,
    Subscription,
)
from billing.selectors import features_active_at
from core.money import format_money
from vehicles.admin import OwnerAdmin, VehicleAdmin
from vehicles.models import Owner, Vehicle

if TYPE_CHECKING:
    from billing.admin.payments import PaymentWithRefunded


class ReadOnlyTabular(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class VehicleSubscriptionInline(ReadOnlyTabular):
    model = Subscription
    fk_name = "vehicle"
    fields = readonly_fields = (
        "offer",
        "owner",
        "status",
        "price_amount",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "trial_end",
    )
    price_amount = money_column("price.amount_minor", "price.currency", description="Price")
    ordering = ("-created_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("offer", "owner", "price", "vehicle")


class VehiclePurchaseInline(ReadOnlyTabular):
    model = Purchase
    fk_name = "vehicle"
    fields = readonly_fields = ("offer", "owner", "status", "price_amount", "created_at", "paid_at")
    price_amount = money_column("price.amount_minor", "price.currency", description="Price")
    ordering = ("-created_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("offer", "owner", "price", "vehicle")


class VehicleInvoiceInline(ReadOnlyTabular):
    model = Invoice
    fk_name = "vehicle"
    fields = readonly_fields = ("number", "kind", "owner", "status", "total", "created_at", "paid_at")
    total = money_column("total_minor", description="Total")
    ordering = ("-created_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner", "vehicle")


class OwnerPaymentMethodInline(ReadOnlyTabular):
    model = PaymentMethod
    fields = readonly_fields = ("brand", "last4", "exp_month", "exp_year", "is_default", "created_at")
    verbose_name_plural = "cards"
    show_change_link = False


class OwnerOpenInvoiceInline(ReadOnlyTabular):
    model = Invoice
    fk_name = "owner"
    fields = readonly_fields = ("number", "kind", "vehicle", "total", "created_at", "finalized_at")
    total = money_column("total_minor", description="Total")
    verbose_name_plural = "open invoices"

    def get_queryset(self, request):
        return (
            super().get_queryset(request).filter(status=InvoiceStatus.OPEN).select_related("vehicle", "owner")
        )


def _table(headers: tuple[str, ...], rows: list[tuple]) -> str:
    if not rows:
        return "—"
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _refunded(attempt: PaymentWithRefunded) -> str:
    if not attempt.refunded_minor:
        return "—"
    share = "in full" if attempt.refunded_minor >= attempt.amount_minor else "partly"
    return f"{format_money(attempt.refunded_minor, attempt.currency)} ({share})"


@admin.display(description="May use now")
def features_now(obj: Vehicle) -> str:
    """What the car may use at this instant, from which source, until when (one query)."""
    if obj.pk is None:
        return "—"
    now = timezone.now()
    features = features_active_at(vehicle_id=obj.pk, at=now)
    rows = [
        (
            f.code,
            ", ".join(f.sources),
            "perpetual" if f.valid_until is None else f"{f.valid_until:%Y-%m-%d %H:%M} UTC",
        )
        for f in features
    ]
    return _table(("Feature", "Source", "Until"), rows)


@admin.display(description="Payments")
def vehicle_payments(obj: Vehicle) -> str:
    """Payment attempts of the car's invoices, with what was refunded of each (one query)."""
    if obj.pk is None:
        return "—"
    attempts = (
        PaymentAttempt.objects.filter(invoice__vehicle=obj)
        .select_related("invoice")
        .annotate(
            refunded_minor=Sum("refunds__amount_minor", filter=Q(refunds__status=RefundStatus.SUCCEEDED))
        )
        .order_by("-created_at")
    )
    rows = [
        (
            admin_link(PaymentAttempt, a.pk, short_id(a.pk)),
            str(a.invoice),
            format_money(a.amount_minor, a.currency),
            a.get_status_display(),
            _refunded(a),
            f"{a.created_at:%Y-%m-%d %H:%M}",
        )
        for a in attempts
    ]
    return _table(("Payment", "Invoice", "Amount", "Status", "Refunded", "Created"), rows)


@admin.display(description="Refunds")
def vehicle_refunds(obj: Vehicle) -> str:
    if obj.pk is None:
        return "—"
    refunds = (
        Refund.objects.filter(payment_attempt__invoice__vehicle=obj)
        .select_related("payment_attempt__invoice")
        .order_by("-created_at")
    )
    rows = [
        (
            admin_link(Refund, r.pk, short_id(r.pk)),
            str(r.payment_attempt.invoice),
            format_money(r.amount_minor, r.currency),
            r.get_status_display(),
            r.reason,
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
        for r in refunds
    ]
    return _table(("Refund", "Invoice", "Amount", "Status", "Reason", "Created"), rows)


@admin.display(description="Current owner")
def current_owner_link(obj: Vehicle) -> str:
    ownership = (
        obj.ownerships.filter(ends_at__isnull=True).select_related("owner").first() if obj.pk else None
    )
    if ownership is None:
        return "—"
    return format_html(
        "{} &lt;{}&gt; since {}",
        admin_link(Owner, ownership.owner_id, ownership.owner.display_name),
        ownership.owner.email,
        f"{ownership.starts_at:%Y-%m-%d}",
    )


@admin.display(description="Lifetime paid and refunded")
def owner_money(obj: Owner) -> str:
    """Per currency: succeeded payments, succeeded refunds, and what stays (two queries)."""
    if obj.pk is None:
        return "—"
    paid = dict(
        PaymentAttempt.objects.filter(owner=obj, status=AttemptStatus.SUCCEEDED)
        .values("currency")
        .annotate(total=Sum("amount_minor"))
        .order_by()
        .values_list("currency", "total")
    )
    refunded: dict[str, Any] = {
        row["currency"]: row
        for row in Refund.objects.filter(payment_attempt__owner=obj, status=RefundStatus.SUCCEEDED)
        .values("currency")
        .annotate(total=Sum("amount_minor"), n=Count("id"))
        .order_by()
    }
    rows = []
    for currency in sorted(set(paid) | set(refunded)):
        p, r = paid.get(currency, 0), refunded.get(currency, {}).get("total", 0)
        rows.append(
            (
                currency,
                format_money(p, currency),
                format_money(r, currency),
                format_money(p - r, currency),
            )
        )
    return _table(("Currency", "Paid", "Refunded", "Net"), rows)


def register() -> None:
    """Add billing's parts to the vehicle and owner pages (called once, from billing.admin)."""
    VehicleAdmin.actions = (*VehicleAdmin.actions, start_vehicle_transfer, grant_included_offers)
    VehicleAdmin.inlines = (
        *VehicleAdmin.inlines,
        VehicleSubscriptionInline,
        VehiclePurchaseInline,
        VehicleInvoiceInline,
    )
    VehicleAdmin.billing_readonly = (current_owner_link, features_now, vehicle_payments, vehicle_refunds)
    OwnerAdmin.inlines = (*OwnerAdmin.inlines, OwnerPaymentMethodInline, OwnerOpenInvoiceInline)
    OwnerAdmin.billing_readonly = (owner_money,)


register()
