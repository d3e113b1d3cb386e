"""Invoices with their lines and payment attempts: read-only (finalized by the services)."""

from __future__ import annotations

from django.contrib import admin

from billing.admin.display import money_column, short_id
from billing.models import Invoice, InvoiceLine, InvoiceNumberSequence, PaymentAttempt
from core.admin import ReadOnlyAdmin


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class InvoiceLineInline(ReadOnlyInline):
    model = InvoiceLine
    fields = readonly_fields = ("description", "offer", "period_start", "period_end", "amount")
    show_change_link = False
    amount = money_column("amount_minor", "invoice.currency", description="Amount")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("invoice", "offer")


class InvoiceAttemptInline(ReadOnlyInline):
    model = PaymentAttempt
    fields = readonly_fields = ("status", "amount", "stripe_payment_intent_id", "error_code", "created_at")
    verbose_name_plural = "payment attempts"
    amount = money_column("amount_minor", description="Amount")


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = (
        "number_or_draft",
        "owner",
        "vehicle_vin",
        "status",
        "total",
        "tax",
        "period_start",
        "period_end",
        "finalized_at",
        "paid_at",
    )
    list_filter = ("status", "currency", "owner__kind")
    search_fields = (
        "number",
        "id",
        "owner__display_name",
        "owner__email",
        "vehicle__vin",
        "attempts__stripe_payment_intent_id",
    )
    list_select_related = ("owner", "vehicle")
    date_hierarchy = "created_at"
    inlines = (InvoiceLineInline, InvoiceAttemptInline)
    readonly_fields = ("subtotal", "tax", "total")
    total = money_column("total_minor", description="Total")
    tax = money_column("tax_minor", description="Tax")
    subtotal = money_column("subtotal_minor", description="Subtotal")

    @admin.display(description="Number", ordering="number")
    def number_or_draft(self, obj: Invoice) -> str:
        return obj.number or f"(draft {short_id(obj.id)})"

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Invoice) -> str:
        return obj.vehicle.vin if obj.vehicle_id else "—"


@admin.register(InvoiceNumberSequence)
class InvoiceNumberSequenceAdmin(ReadOnlyAdmin):
    """Read-only: editing a counter would break gapless numbering."""

    list_display = ("prefix", "last_value")
    search_fields = ("prefix",)
