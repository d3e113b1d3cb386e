"""Operator views of markets, owners, vehicles and their ownership history.

Ownership changes go through the transfer flow; the inlines only show the history.
Credential actions live in `vehicles.admin_credentials` (the credential services' admin).
Billing adds its inlines, summaries and actions to the vehicle and owner pages itself
(`billing/admin/vehicle_pages.py`): this module never imports billing. Identities (VIN, the
owner's login and Stripe customer) are read-only once saved; nothing here can be deleted from
the admin, since a vehicle or owner carries rights and money.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib import admin
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from vehicles.admin_credentials import issue_vehicle_credential, revoke_vehicle_credentials
from vehicles.models import Capability, Market, Owner, Ownership, Vehicle, VehicleTransfer


class NoDeleteAdmin(admin.ModelAdmin):
    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Market)
class MarketAdmin(NoDeleteAdmin):
    list_display = ("code", "name", "country", "currency", "withdrawal_period_days")
    list_filter = ("currency",)
    search_fields = ("code", "name", "country")


@admin.register(Capability)
class CapabilityAdmin(admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


class OwnershipHistoryInline(admin.TabularInline):
    """Read-only history, newest first; `ends_at` empty marks the current owner."""

    model = Ownership
    extra = 0
    can_delete = False
    ordering = ("-starts_at",)
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("vehicle", "owner")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class VehicleOwnershipInline(OwnershipHistoryInline):
    fields = readonly_fields = ("owner", "starts_at", "ends_at")
    verbose_name_plural = "ownership history"


class OwnerOwnershipInline(OwnershipHistoryInline):
    fields = readonly_fields = ("vehicle", "starts_at", "ends_at")
    verbose_name_plural = "vehicles (ownership history)"


@admin.register(Owner)
class OwnerAdmin(NoDeleteAdmin):
    list_display = (
        "display_name",
        "kind",
        "email",
        "billing_country",
        "currency",
        "is_consumer",
        "stripe_customer_id",
        "created_at",
    )
    list_filter = ("kind", "is_consumer", "currency", "billing_country")
    search_fields = ("display_name", "email", "stripe_customer_id", "user__username")
    autocomplete_fields = ("user",)
    readonly_fields = ("stripe_customer_id", "created_at")
    inlines: ClassVar[tuple[type[admin.options.InlineModelAdmin], ...]] = (OwnerOwnershipInline,)
    billing_readonly: tuple = ()  # set by billing.admin.vehicle_pages

    def get_readonly_fields(self, request, obj=None):
        identities = ("user",) if obj else ()
        return (*self.readonly_fields, *identities, *self.billing_readonly)


@admin.register(Vehicle)
class VehicleAdmin(NoDeleteAdmin):
    list_display = (
        "vin",
        "brand",
        "model",
        "model_year",
        "market",
        "software_version",
        "current_owner",
        "delivered_at",
    )
    list_filter = ("market", "brand", "model_year", "capabilities")
    search_fields = ("vin", "brand", "model", "ownerships__owner__display_name", "ownerships__owner__email")
    list_select_related = ("market",)
    filter_horizontal = ("capabilities",)
    readonly_fields = ("id", "created_at")
    inlines: ClassVar[tuple[type[admin.options.InlineModelAdmin], ...]] = (VehicleOwnershipInline,)
    actions: tuple[Any, ...] = (issue_vehicle_credential, revoke_vehicle_credentials)  # billing adds its own
    billing_readonly: tuple = ()  # set by billing.admin.vehicle_pages

    def get_readonly_fields(self, request, obj=None):
        identities = ("vin",) if obj else ()
        return (*identities, *self.readonly_fields, *self.billing_readonly)

    def get_queryset(self, request):
        current = Ownership.objects.filter(vehicle=OuterRef("pk"), ends_at__isnull=True)
        return (
            super()
            .get_queryset(request)
            .select_related("market")
            .annotate(current_owner_name=Subquery(current.values("owner__display_name")[:1]))
        )

    @admin.display(description="Current owner", ordering="current_owner_name")
    def current_owner(self, obj: Vehicle) -> str:
        return getattr(obj, "current_owner_name", None) or "—"  # annotated by get_queryset


class CurrentOwnershipFilter(admin.SimpleListFilter):
    title = "current"
    parameter_name = "current"

    def lookups(self, request, model_admin):
        return (("yes", "Current owner"), ("no", "Past owner"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(ends_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(ends_at__isnull=False)
        return queryset


@admin.register(Ownership)
class OwnershipAdmin(admin.ModelAdmin):
    """An operator may record the first owner of a delivered car; later changes go through the
    transfer flow (it applies the offers' transfer policies), so existing rows are read-only."""

    list_display = ("vehicle_vin", "owner", "starts_at", "ends_at")
    list_filter = (CurrentOwnershipFilter, "owner__kind", "vehicle__market")
    search_fields = ("vehicle__vin", "owner__display_name", "owner__email")
    list_select_related = ("vehicle", "owner")
    autocomplete_fields = ("vehicle", "owner")
    date_hierarchy = "starts_at"

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Ownership) -> str:
        return obj.vehicle.vin


@admin.register(VehicleTransfer)
class VehicleTransferAdmin(admin.ModelAdmin):
    """Read-only: transfers are started, claimed and canceled through the transfer services."""

    list_display = (
        "vehicle_vin",
        "from_owner",
        "to_owner",
        "status",
        "created_at",
        "expires_at",
        "is_expired",
    )
    list_filter = ("status", "vehicle__market")
    search_fields = (
        "id",
        "vehicle__vin",
        "from_owner__display_name",
        "from_owner__email",
        "to_owner__display_name",
        "to_owner__email",
    )
    list_select_related = ("vehicle", "from_owner", "to_owner")
    exclude = ("code_hash",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: VehicleTransfer) -> str:
        return obj.vehicle.vin

    @admin.display(description="Past expiry", boolean=True)
    def is_expired(self, obj: VehicleTransfer) -> bool:
        return obj.status == VehicleTransfer.Status.PENDING and obj.expires_at <= timezone.now()
