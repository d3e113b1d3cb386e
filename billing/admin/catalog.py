"""The catalog: features, offers and their versioned prices (editable by operators)."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from billing.admin.display import money_column
from billing.models import Feature, Offer, Price


class PriceForm(forms.ModelForm):
    class Meta:
        model = Price
        fields = ("offer", "market", "currency", "amount_minor", "version", "valid_from")

    def clean(self):
        cleaned = super().clean()
        market, currency = cleaned.get("market"), cleaned.get("currency")
        if market and currency and currency.upper() != market.currency:
            self.add_error("currency", f"Market {market.code} sells in {market.currency}.")
        elif currency:
            cleaned["currency"] = currency.upper()
        return cleaned


class PriceHistoryInline(admin.TabularInline):
    """Existing prices of an offer: immutable, shown formatted."""

    model = Price
    extra = 0
    can_delete = False
    fields = readonly_fields = ("market", "version", "amount", "valid_from", "created_at")
    ordering = ("market__code", "-version")
    verbose_name_plural = "prices (history, immutable)"
    show_change_link = True
    amount = money_column("amount_minor", description="Amount")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("market")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class NewPriceInline(admin.TabularInline):
    """Add a price or a new version: amounts in minor units (cents; yen have none)."""

    model = Price
    form = PriceForm
    extra = 0
    can_delete = False
    fields = ("market", "currency", "amount_minor", "version", "valid_from")
    verbose_name = "new price"
    verbose_name_plural = "new prices"

    def get_queryset(self, request):
        return super().get_queryset(request).none()

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Feature)
class FeatureAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "category", "min_software_version", "hardware", "market_codes")
    list_filter = ("category", "markets", "required_capabilities")
    search_fields = ("code", "name", "description")
    filter_horizontal = ("required_capabilities", "markets")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("required_capabilities", "markets")

    @admin.display(description="Needs hardware")
    def hardware(self, obj: Feature) -> str:
        return ", ".join(c.code for c in obj.required_capabilities.all()) or "—"

    @admin.display(description="Markets")
    def market_codes(self, obj: Feature) -> str:
        return ", ".join(m.code for m in obj.markets.all()) or "all"


@admin.register(Offer)
class OfferAdmin(admin.ModelAdmin):
    list_display = (
        "code",
        "name",
        "kind",
        "interval",
        "trial_days",
        "tier",
        "included_months_with_new_car",
        "transfer_policy",
        "dispute_policy",
        "is_active",
        "feature_codes",
    )
    list_filter = ("kind", "interval", "is_active", "transfer_policy", "dispute_policy", "features__category")
    search_fields = ("code", "name", "features__code")
    filter_horizontal = ("features",)
    inlines = (PriceHistoryInline, NewPriceInline)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("features")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # sold offers must stay; retire one with "is active"

    @admin.display(description="Features")
    def feature_codes(self, obj: Offer) -> str:
        return ", ".join(f.code for f in obj.features.all())


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """A price never changes once sold at: a new price is a new row with a higher version."""

    form = PriceForm
    list_display = ("offer", "market", "version", "amount", "valid_from", "created_at")
    list_filter = ("market", "currency", "offer__kind", "offer__interval")
    search_fields = ("offer__code", "offer__name", "market__code")
    list_select_related = ("offer", "market")
    autocomplete_fields = ("offer", "market")
    ordering = ("offer__code", "market__code", "-version")
    amount = money_column("amount_minor", description="Amount")
    immutable_fields = ("offer", "market", "currency", "amount_minor", "version")

    def get_readonly_fields(self, request, obj=None):
        return (*self.immutable_fields, "amount", "created_at") if obj else ()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a price is history: a new version replaces it
