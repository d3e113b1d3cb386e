"""Operator side of vehicle credentials: a read-only list (never the hash) and the two actions
the Vehicle admin offers. Thin: each action calls one service per selected vehicle."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from vehicles.models import Vehicle, VehicleCredential
from vehicles.services.credentials import vehicle_credential_issue, vehicle_credential_revoke


@admin.register(VehicleCredential)
class VehicleCredentialAdmin(admin.ModelAdmin):
    """Read-only: credentials are issued, rotated and revoked from the Vehicle admin actions."""

    list_display = ("key_id", "vehicle_vin", "created_at", "revoked_at", "last_used_at", "is_active")
    fields = readonly_fields = ("key_id", "vehicle", "created_at", "revoked_at", "last_used_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("key_id", "vehicle__vin")
    list_select_related = ("vehicle",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: VehicleCredential | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: VehicleCredential | None = None) -> bool:
        return False

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: VehicleCredential) -> str:
        return obj.vehicle.vin

    @admin.display(description="Active", boolean=True)
    def is_active(self, obj: VehicleCredential) -> bool:
        return obj.revoked_at is None


@admin.action(
    description="Issue (rotate) the vehicle credential — revokes the current one", permissions=("change",)
)
def issue_vehicle_credential(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Vehicle]
) -> None:
    for vehicle in queryset:
        issued = vehicle_credential_issue(vehicle=vehicle)
        messages.warning(
            request,
            f"{vehicle.vin}: Authorization: {issued.authorization} — copy it now, it is not shown again.",
        )


@admin.action(description="Revoke the vehicle credential", permissions=("change",))
def revoke_vehicle_credentials(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Vehicle]
) -> None:
    revoked = sum(vehicle_credential_revoke(vehicle=vehicle) for vehicle in queryset)
    messages.success(request, f"Revoked {revoked} credential(s) of {len(queryset)} vehicle(s).")
