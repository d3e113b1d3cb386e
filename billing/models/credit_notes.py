"""Credit notes: one per refund that returned money, in their own gapless series (CN2026-000001),
referencing the invoice they correct, with one line per VAT rate credited."""

from __future__ import annotations

import uuid

from django.db import models

from billing.models.invoices import Invoice
from billing.models.payments import Refund
from billing.models.tax import VatCategory
from core.db import currency_field, non_negative_constraint, valid_currency_constraint
from vehicles.models import Owner


class CreditNote(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    number = models.CharField(max_length=32, unique=True)
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    refund = models.OneToOneField(Refund, on_delete=models.PROTECT, related_name="credit_note")
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="credit_notes")
    currency = currency_field()
    reason = models.CharField(max_length=255, blank=True)
    subtotal_minor = models.BigIntegerField()
    tax_minor = models.BigIntegerField()
    total_minor = models.BigIntegerField()
    issued_at = models.DateTimeField()

    class Meta:
        ordering = ["-issued_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(total_minor__gt=0), name="credit_note_total_positive"),
            non_negative_constraint("tax_minor", "credit_note_tax_non_negative"),
            models.CheckConstraint(
                condition=models.Q(total_minor=models.F("subtotal_minor") + models.F("tax_minor")),
                name="credit_note_reconciles",
            ),
            valid_currency_constraint("currency", "credit_note_currency_valid"),
        ]
        indexes = [models.Index(fields=["owner", "-issued_at"])]

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(models.Model):
    """The part of one VAT rate of the invoice that the credit note credits (positive amounts)."""

    credit_note = models.ForeignKey(CreditNote, on_delete=models.CASCADE, related_name="lines")
    description = models.CharField(max_length=255)
    vat_category = models.CharField(max_length=2, choices=VatCategory.choices)
    rate = models.DecimalField(max_digits=7, decimal_places=5)
    net_minor = models.BigIntegerField()
    tax_minor = models.BigIntegerField()
    gross_minor = models.BigIntegerField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(gross_minor=models.F("net_minor") + models.F("tax_minor")),
                name="credit_note_line_reconciles",
            ),
        ]

    def __str__(self) -> str:
        return self.description
