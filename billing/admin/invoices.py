"""Invoices with their lines and payment attempts: read-only (finalized by the services)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from billing.admin.display import admin_link, money_column, short_id
from billing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    InvoiceTaxLine,
    PaymentAttempt,
)
from billing.services.documents import credit_note_pdf, invoice_pdf
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
    fields = readonly_fields = (
        "description",
        "offer",
        "period_start",
        "period_end",
        "amount",
        "vat_category",
        "tax_rate",
        "net",
    )
    show_change_link = False
    amount = money_column("amount_minor", "invoice.currency", description="Amount")
    net = money_column("net_minor", "invoice.currency", description="Net")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("invoice", "offer")


class InvoiceTaxLineInline(ReadOnlyInline):
    """The VAT breakdown: one row per rate, computed once on the sum of its lines."""

    model = InvoiceTaxLine
    fields = readonly_fields = ("vat_category", "rate", "net", "tax", "gross", "reverse_charge", "tax_rate")
    show_change_link = False
    verbose_name_plural = "VAT breakdown"
    net = money_column("net_minor", "invoice.currency", description="Net")
    tax = money_column("tax_minor", "invoice.currency", description="VAT")
    gross = money_column("gross_minor", "invoice.currency", description="Gross")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("invoice", "tax_rate__market")


class InvoiceCreditNoteInline(ReadOnlyInline):
    model = CreditNote
    fields = readonly_fields = ("number", "reason", "total", "tax", "issued_at", "pdf")
    total = money_column("total_minor", description="Credited")
    tax = money_column("tax_minor", description="VAT")

    @admin.display(description="PDF")
    def pdf(self, obj: CreditNote) -> str:
        return _pdf_link("billing_creditnote_pdf", obj.pk)


def _pdf_link(url_name: str, pk) -> str:
    return format_html('<a href="{}">PDF</a>', reverse(f"admin:{url_name}", args=[pk]))


def _pdf_response(content: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{filename}.pdf"'
    return response


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
    inlines = (InvoiceLineInline, InvoiceTaxLineInline, InvoiceCreditNoteInline, InvoiceAttemptInline)
    readonly_fields = ("pdf", "subtotal", "tax", "total")
    total = money_column("total_minor", description="Total")
    tax = money_column("tax_minor", description="Tax")
    subtotal = money_column("subtotal_minor", description="Subtotal")

    @admin.display(description="Number", ordering="number")
    def number_or_draft(self, obj: Invoice) -> str:
        return obj.number or f"(draft {short_id(obj.id)})"

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Invoice) -> str:
        return obj.vehicle.vin if obj.vehicle is not None else "—"

    @admin.display(description="Document")
    def pdf(self, obj: Invoice) -> str:
        """The PDF the owner gets (a Factur-X e-invoice for fleets)."""
        return _pdf_link("billing_invoice_pdf", obj.pk)

    def get_urls(self):
        pdf = path("<uuid:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="billing_invoice_pdf")
        return [pdf, *super().get_urls()]

    def pdf_view(self, request, pk):
        invoice = get_object_or_404(Invoice.objects.select_related("owner", "vehicle"), pk=pk)
        if not self.has_view_permission(request, invoice):
            return HttpResponse(status=403)
        return _pdf_response(invoice_pdf(invoice), invoice.number or str(invoice.pk))


class CreditNoteLineInline(ReadOnlyInline):
    model = CreditNoteLine
    fields = readonly_fields = ("description", "vat_category", "rate", "net", "tax", "gross")
    show_change_link = False
    net = money_column("net_minor", "credit_note.currency", description="Net")
    tax = money_column("tax_minor", "credit_note.currency", description="VAT")
    gross = money_column("gross_minor", "credit_note.currency", description="Gross")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("credit_note")


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    """One per refund that returned money, in its own gapless series (CN<year>-NNNNNN)."""

    list_display = ("number", "owner", "invoice_number", "total", "tax", "reason", "issued_at")
    list_filter = ("currency", "owner__kind")
    search_fields = ("number", "invoice__number", "owner__display_name", "owner__email", "reason")
    list_select_related = ("owner", "invoice")
    date_hierarchy = "issued_at"
    inlines = (CreditNoteLineInline,)
    readonly_fields = ("pdf", "invoice_link", "subtotal", "tax", "total")
    exclude = ("invoice",)
    total = money_column("total_minor", description="Credited")
    tax = money_column("tax_minor", description="VAT")
    subtotal = money_column("subtotal_minor", description="Net")

    @admin.display(description="Invoice", ordering="invoice__number")
    def invoice_number(self, obj: CreditNote) -> str:
        return obj.invoice.number or "—"

    @admin.display(description="Invoice")
    def invoice_link(self, obj: CreditNote) -> str:
        return admin_link(Invoice, obj.invoice_id, obj.invoice.number or short_id(obj.invoice_id))

    @admin.display(description="Document")
    def pdf(self, obj: CreditNote) -> str:
        return _pdf_link("billing_creditnote_pdf", obj.pk)

    def get_urls(self):
        pdf = path("<uuid:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="billing_creditnote_pdf")
        return [pdf, *super().get_urls()]

    def pdf_view(self, request, pk):
        note = get_object_or_404(CreditNote.objects.select_related("owner", "invoice__vehicle"), pk=pk)
        if not self.has_view_permission(request, note):
            return HttpResponse(status=403)
        return _pdf_response(credit_note_pdf(note), note.number)


@admin.register(InvoiceNumberSequence)
class InvoiceNumberSequenceAdmin(ReadOnlyAdmin):
    """Read-only: editing a counter would break gapless numbering."""

    list_display = ("prefix", "last_value")
    search_fields = ("prefix",)
