"""Invoice and credit-note documents for the owner app: PDFs (Factur-X e-invoices for fleets) and
the list of credit notes. Owner-scoped: another owner's document is a 404 like a missing one."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.views import APIView

from billing.api.serializers import MoneyField
from billing.models import CreditNote
from billing.selectors import credit_note_of_owner, credit_notes_of_owner, invoice_of_owner
from billing.services.documents import credit_note_pdf, invoice_pdf
from vehicles.api.permissions import IsOwner, current_owner

ERROR = OpenApiResponse(description='`{"code": "...", "message": "...", "details": {...}}`')
PDF_RESPONSES = {
    (200, "application/pdf"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The PDF; for a fleet a Factur-X (EN 16931) e-invoice"
    ),
    404: ERROR,
}


class PdfRenderer(BaseRenderer):
    """Lets a client ask for `Accept: application/pdf`; errors are still rendered as JSON."""

    media_type = "application/pdf"
    format = "pdf"
    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class _PdfView(APIView):
    permission_classes = [IsOwner]
    renderer_classes = [JSONRenderer, PdfRenderer]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), "application/json"
        return response

    @staticmethod
    def pdf_response(content: bytes, filename: str) -> HttpResponse:
        response = HttpResponse(content, content_type="application/pdf")
        response["Content-Disposition"] = f'inline; filename="{filename}.pdf"'
        response["Cache-Control"] = "private, no-store"
        return response


class InvoicePdfView(_PdfView):
    @extend_schema(
        summary="The PDF of one of my invoices (fleets: a Factur-X e-invoice with its EN 16931 XML)",
        operation_id="me_invoices_pdf",
        responses=PDF_RESPONSES,
    )
    def get(self, request, pk):
        invoice = invoice_of_owner(owner=current_owner(request), invoice_id=pk)
        return self.pdf_response(invoice_pdf(invoice), invoice.number or str(invoice.pk))


class CreditNotePdfView(_PdfView):
    @extend_schema(
        summary="The PDF of one of my credit notes (fleets: a Factur-X e-invoice)",
        operation_id="me_credit_notes_pdf",
        responses=PDF_RESPONSES,
    )
    def get(self, request, pk):
        note = credit_note_of_owner(owner=current_owner(request), credit_note_id=pk)
        return self.pdf_response(credit_note_pdf(note), note.number)


class CreditNoteSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    number = serializers.CharField()
    invoice = serializers.UUIDField(source="invoice_id")
    invoice_number = serializers.CharField(source="invoice.number")
    reason = serializers.CharField()
    subtotal = MoneyField("subtotal_minor", help_text="Net credited")
    tax = MoneyField("tax_minor", help_text="VAT credited")
    total = MoneyField("total_minor", help_text="Gross credited: the amount refunded")
    issued_at = serializers.DateTimeField()
    pdf = serializers.SerializerMethodField()

    def get_pdf(self, note: CreditNote) -> str:
        return f"/api/v1/me/credit-notes/{note.pk}/pdf/"


class MyCreditNotesView(ListAPIView):
    """Every refund that returned money has its credit note, referencing the invoice."""

    permission_classes = [IsOwner]
    serializer_class = CreditNoteSerializer
    queryset = CreditNote.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return self.queryset
        return credit_notes_of_owner(owner=current_owner(self.request))

    @extend_schema(
        summary="My credit notes (one per refund), newest first", operation_id="me_credit_notes_list"
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
