"""Invoices and their lines. One invoice per subscription period (a database constraint)."""

from __future__ import annotations

import uuid

from django.db import models

from billing.models.catalog import Offer
from billing.models.subscriptions import Purchase, Subscription
from core.db import currency_field, non_negative_constraint, valid_currency_constraint
from vehicles.models import Owner, Vehicle


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"
    VOID = "void", "Void"


INVOICE_TRANSITIONS: dict[str, frozenset[str]] = {
    InvoiceStatus.DRAFT: frozenset({"open", "void"}),
    InvoiceStatus.OPEN: frozenset({"paid", "uncollectible", "void"}),
    InvoiceStatus.UNCOLLECTIBLE: frozenset({"paid", "void"}),
    InvoiceStatus.PAID: frozenset(),
    InvoiceStatus.VOID: frozenset(),
}


class InvoiceNumberSequence(models.Model):
    """Gapless invoice numbers: the counter row is locked while a number is taken."""

    prefix = models.CharField(max_length=16, unique=True)
    last_value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.prefix} (last {self.last_value})"


class InvoiceKind(models.TextChoices):
    PURCHASE = "purchase", "One-time purchase"
    SUBSCRIPTION_PERIOD = "subscription_period", "Subscription period"
    PLAN_CHANGE = "plan_change", "Plan change (prorated)"


class Invoice(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=24, choices=InvoiceKind.choices)
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    owner = models.ForeignKey(Owner, on_delete=models.PROTECT, related_name="invoices")
    vehicle = models.ForeignKey(
        Vehicle, null=True, blank=True, on_delete=models.PROTECT, related_name="invoices"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.PROTECT, related_name="invoices"
    )
    purchase = models.OneToOneField(
        Purchase, null=True, blank=True, on_delete=models.PROTECT, related_name="invoice"
    )
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    change_to_price = models.ForeignKey(
        "billing.Price",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="For a plan-change invoice: the price the subscription moves to once paid.",
    )
    currency = currency_field()
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    subtotal_minor = models.BigIntegerField(default=0)
    tax_minor = models.BigIntegerField(default=0)
    total_minor = models.BigIntegerField(default=0)
    # VAT (billing/services/tax.py): how the lines were priced and the buyer's VAT id at issue
    prices_include_tax = models.BooleanField(default=True, help_text="Line amounts are gross (VAT included).")
    buyer_vat_id = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"],
                condition=models.Q(kind="subscription_period"),
                name="one_invoice_per_subscription_period",
            ),
            models.UniqueConstraint(
                fields=["subscription"],
                condition=models.Q(kind="plan_change", status="open"),
                name="one_open_plan_change_per_subscription",
            ),
            non_negative_constraint("total_minor", "invoice_total_non_negative"),
            non_negative_constraint("tax_minor", "invoice_tax_non_negative"),
            valid_currency_constraint("currency", "invoice_currency_valid"),
        ]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return self.number or f"draft {str(self.id)[:8]}"


class InvoiceLine(models.Model):
    """A line; a negative amount is a credit (e.g. proration of unused time)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    description = models.CharField(max_length=255)
    offer = models.ForeignKey(Offer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    amount_minor = models.BigIntegerField()
    # VAT of the line: its rate, EN 16931 category and its share of its rate's net amount
    tax_rate = models.DecimalField(max_digits=7, decimal_places=5, null=True, blank=True)
    vat_category = models.CharField(max_length=2, blank=True)
    net_minor = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.description
