"""VAT in data: rates per market and feature category with validity dates, the tax profile of a
customer (VAT id, address, net or gross prices) and the per-rate VAT breakdown of each invoice."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from stdnum.eu import vat as eu_vat

from billing.models.catalog import Feature
from core.db import half_open_constraint
from vehicles.models import Market, Owner

DEFAULT_CATEGORY = "default"
TAX_RATE_CATEGORIES = [
    (DEFAULT_CATEGORY, "Default (every category without its own rate)"),
    *Feature.Category.choices,
]


class VatCategory(models.TextChoices):
    """EN 16931 VAT category codes (UNTDID 5305) we issue."""

    STANDARD = "S", "Standard or reduced rate"
    ZERO = "Z", "Zero rated"
    REVERSE_CHARGE = "AE", "Reverse charge"
    OUTSIDE_SCOPE = "O", "Not subject to VAT"


class TaxRate(models.Model):
    """The VAT rate of a market for a feature category (or every category: "default"), valid in
    `[valid_from, valid_to)`. At a given time the row with the latest `valid_from` applies."""

    class Kind(models.TextChoices):
        STANDARD = "standard", "Standard"
        REDUCED = "reduced", "Reduced"
        ZERO = "zero", "Zero rated"
        OUTSIDE_SCOPE = "outside_scope", "Not subject to VAT"

    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="tax_rates")
    category = models.CharField(max_length=32, choices=TAX_RATE_CATEGORIES, default=DEFAULT_CATEGORY)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.STANDARD)
    rate = models.DecimalField(max_digits=7, decimal_places=5, help_text="A fraction: 0.19 for 19 %.")
    valid_from = models.DateTimeField()
    valid_to = models.DateTimeField(
        null=True, blank=True, help_text="Exclusive; empty: until further notice."
    )

    class Meta:
        ordering = ["market", "category", "-valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["market", "category", "valid_from"], name="tax_rate_unique_start"
            ),
            models.CheckConstraint(
                condition=models.Q(rate__gte=0, rate__lt=1), name="tax_rate_is_a_fraction"
            ),
            models.CheckConstraint(
                condition=~models.Q(kind__in=["zero", "outside_scope"]) | models.Q(rate=0),
                name="tax_rate_zero_kinds_are_zero",
            ),
            half_open_constraint("valid_from", "valid_to", "tax_rate_validity_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.market.code} {self.category} {self.rate * 100:g} % from {self.valid_from:%Y-%m-%d}"

    @property
    def vat_category(self) -> str:
        if self.kind == self.Kind.OUTSIDE_SCOPE:
            return VatCategory.OUTSIDE_SCOPE
        return VatCategory.ZERO if self.rate == 0 else VatCategory.STANDARD


def validate_vat_id(value: str) -> None:
    """An EU VAT identification number with its country prefix and a valid check digit."""
    if value and not eu_vat.is_valid(value):
        raise DjangoValidationError(f"{value} is not a valid EU VAT id (e.g. DE136695976).")


class CustomerTaxProfile(models.Model):
    """What invoicing needs to know of a business customer beyond `Owner`: its VAT id (a fleet in
    another country than ours with a VAT id is invoiced under reverse charge), its postal address
    (printed and put in the e-invoice) and whether its prices are net (VAT added on top)."""

    owner = models.OneToOneField(Owner, on_delete=models.CASCADE, related_name="tax_profile")
    vat_id = models.CharField(max_length=20, blank=True, validators=[validate_vat_id])
    prices_include_tax = models.BooleanField(
        default=True,
        help_text="Catalog prices are gross (VAT included), as for consumers. Untick for a business "
        "billed net prices: VAT is then added on top.",
    )
    address_line = models.CharField(max_length=200, blank=True)
    postcode = models.CharField(max_length=16, blank=True)
    city = models.CharField(max_length=100, blank=True)

    class Meta:
        verbose_name = "customer tax profile"

    def __str__(self) -> str:
        return f"{self.owner} {self.vat_id}".strip()


class InvoiceTaxLine(models.Model):
    """One VAT rate of an invoice: net, VAT and gross of the lines of that rate, computed once."""

    invoice = models.ForeignKey("billing.Invoice", on_delete=models.CASCADE, related_name="tax_lines")
    vat_category = models.CharField(max_length=2, choices=VatCategory.choices)
    rate = models.DecimalField(max_digits=7, decimal_places=5)
    tax_rate = models.ForeignKey(
        TaxRate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The rate row applied.",
    )
    net_minor = models.BigIntegerField()
    tax_minor = models.BigIntegerField()
    gross_minor = models.BigIntegerField()
    reverse_charge = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "vat_category", "rate"], name="one_tax_line_per_rate"),
            models.CheckConstraint(
                condition=models.Q(gross_minor=models.F("net_minor") + models.F("tax_minor")),
                name="tax_line_reconciles",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.vat_category} {self.rate * 100:g} %"
