"""Admin actions on vehicles that call billing services: resale, included offers."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from billing.services.included_offers import vehicle_included_offers_grant
from billing.services.transfers import transfer_start
from core.errors import BillingError
from vehicles.selectors import current_owner_of


@admin.action(description="Start a transfer to a new owner (shows the one-time code once)")
def start_vehicle_transfer(modeladmin, request, queryset) -> None:
    for vehicle in queryset:
        owner = current_owner_of(vehicle=vehicle)
        if owner is None:
            modeladmin.message_user(request, f"{vehicle.vin}: has no current owner.", messages.ERROR)
            continue
        try:
            started = transfer_start(owner=owner, vehicle_id=vehicle.pk, at=timezone.now())
        except BillingError as exc:
            modeladmin.message_user(request, f"{vehicle.vin}: {exc.message}", messages.ERROR)
            continue
        until = f"{started.transfer.expires_at:%Y-%m-%d %H:%M} UTC"
        modeladmin.message_user(
            request,
            f"{vehicle.vin}: transfer code {started.code} (valid until {until}) — copy it now, it is not "
            "shown again. The buyer claims the car with VIN and code.",
            messages.WARNING,
        )


@admin.action(description="Grant the offers included with a new car (from its delivery date)")
def grant_included_offers(modeladmin, request, queryset) -> None:
    for vehicle in queryset.prefetch_related("capabilities"):
        if vehicle.delivered_at is None:
            modeladmin.message_user(request, f"{vehicle.vin}: set its delivery date first.", messages.ERROR)
            continue
        granted = vehicle_included_offers_grant(vehicle=vehicle)
        codes = ", ".join(sorted({e.feature.code for e in granted})) or "nothing compatible"
        modeladmin.message_user(request, f"{vehicle.vin}: included {codes}.")
