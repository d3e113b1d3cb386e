"""Entitlements: read-only rows with their source; the "add" page is the comp grant form,
which calls `entitlement_grant_admin` (the admin holds no business rule itself)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.widgets import AdminSplitDateTime, AutocompleteSelect
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.admin.display import admin_link, short_id
from billing.models import Entitlement, EntitlementSource, Feature, Offer, Purchase, Subscription
from billing.services.entitlements import entitlement_grant_admin
from core.errors import BillingError
from vehicles.models import Vehicle


class EntitlementGrantForm(forms.Form):
    vehicle = forms.ModelChoiceField(queryset=Vehicle.objects.all())
    feature = forms.ModelChoiceField(queryset=Feature.objects.order_by("code"))
    starts_at = forms.SplitDateTimeField(
        widget=AdminSplitDateTime, initial=timezone.now, label="Starts at (UTC)"
    )
    ends_at = forms.SplitDateTimeField(
        widget=AdminSplitDateTime, required=False, label="Ends at (UTC)", help_text="Empty: perpetual."
    )
    reason = forms.CharField(max_length=255, help_text="Why the feature is comped; kept for audit.")

    def __init__(self, *args, admin_site: admin.AdminSite, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        vehicle = self.fields["vehicle"]
        assert isinstance(vehicle, forms.ModelChoiceField)  # declared above
        widget = AutocompleteSelect(Entitlement._meta.get_field("vehicle"), admin_site)
        vehicle.widget = widget
        widget.choices = vehicle.choices


class ActiveNowFilter(admin.SimpleListFilter):
    title = "active now"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return (("yes", "Active now"), ("no", "Not active now"))

    def queryset(self, request, queryset):
        now = timezone.now()
        active = Q(starts_at__lte=now) & (Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        if self.value() == "yes":
            return queryset.filter(active)
        if self.value() == "no":
            return queryset.exclude(active)
        return queryset


@admin.register(Entitlement)
class EntitlementAdmin(admin.ModelAdmin):
    list_display = (
        "vehicle_vin",
        "feature",
        "source",
        "source_detail",
        "starts_at",
        "ends_at",
        "is_active_now",
    )
    list_filter = ("source", ActiveNowFilter, "feature__category", "feature", "vehicle__market")
    search_fields = (
        "vehicle__vin",
        "feature__code",
        "reason",
        "granted_by__username",
        "subscription__id",
        "purchase__id",
    )
    list_select_related = (
        "vehicle",
        "feature",
        "offer",
        "granted_by",
        "purchase__offer",
        "subscription__offer",
    )
    date_hierarchy = "starts_at"
    readonly_fields = ("source_detail",)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related(*self.list_select_related)

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Entitlement) -> str:
        return obj.vehicle.vin

    @admin.display(description="Active now", boolean=True)
    def is_active_now(self, obj: Entitlement) -> bool:
        now = timezone.now()
        return obj.starts_at <= now and (obj.ends_at is None or now < obj.ends_at)

    @admin.display(description="Source detail")
    def source_detail(self, obj: Entitlement) -> str:
        """Who paid or why: a link to the purchase/subscription/offer, or the grant's reason."""
        if obj.source == EntitlementSource.PURCHASE and obj.purchase is not None:
            text = f"Purchase {short_id(obj.purchase_id)} of {obj.purchase.offer.code}"
            return admin_link(Purchase, obj.purchase_id, text)
        if obj.source == EntitlementSource.SUBSCRIPTION and obj.subscription is not None:
            text = f"Subscription {short_id(obj.subscription_id)} to {obj.subscription.offer.code}"
            return admin_link(Subscription, obj.subscription_id, text)
        if obj.source == EntitlementSource.INCLUDED and obj.offer is not None:
            return format_html("Included: {}", admin_link(Offer, obj.offer_id, obj.offer.code))
        if obj.source == EntitlementSource.GRANT:
            return format_html("Granted by {}: {}", obj.granted_by or "?", obj.reason)
        return "—"

    def add_view(self, request, form_url="", extra_context=None):
        """The comp grant form in place of a model form."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else None
        form = EntitlementGrantForm(data, admin_site=self.admin_site)
        if data is not None and form.is_valid():
            try:
                entitlement = entitlement_grant_admin(granted_by=request.user, **form.cleaned_data)
            except BillingError as error:
                form.add_error(None, error.message)
            else:
                self.log_addition(request, entitlement, [{"added": {}}])
                self.message_user(request, f"Granted {entitlement}.", messages.SUCCESS)
                if "_addanother" in request.POST:
                    return HttpResponseRedirect(request.path)
                return HttpResponseRedirect(
                    reverse("admin:billing_entitlement_change", args=[entitlement.pk])
                )
        adminform = helpers.AdminForm(form, [(None, {"fields": list(form.fields)})], {})
        context = {
            **self.admin_site.each_context(request),
            "title": "Grant a feature to a vehicle",
            "subtitle": None,
            "adminform": adminform,
            "object_id": None,
            "original": None,
            "is_popup": False,
            "to_field": None,
            "media": self.media + adminform.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "show_save_and_continue": False,
            **(extra_context or {}),
        }
        return self.render_change_form(request, context, add=True, form_url=form_url)
