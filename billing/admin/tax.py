"""VAT rates per market and category, and customers' tax profiles: data an operator maintains."""

from __future__ import annotations

from django.contrib import admin

from billing.models import CustomerTaxProfile, TaxRate


@admin.register(TaxRate)
class TaxRateAdmin(admin.ModelAdmin):
    """A rate change is a new row from its date (end the old one with `valid_to`): invoices keep
    the rate they were issued with."""

    list_display = ("market", "category", "kind", "rate", "valid_from", "valid_to")
    list_filter = ("market", "category", "kind")
    list_select_related = ("market",)
    date_hierarchy = "valid_from"


@admin.register(CustomerTaxProfile)
class CustomerTaxProfileAdmin(admin.ModelAdmin):
    list_display = ("owner", "vat_id", "prices_include_tax", "city")
    list_filter = ("prices_include_tax", "owner__kind", "owner__billing_country")
    search_fields = ("owner__display_name", "owner__email", "vat_id")
    list_select_related = ("owner",)
    autocomplete_fields = ("owner",)
