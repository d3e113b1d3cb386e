"""Read-only queries of the vehicles app. Every owner-facing query is scoped to the owner,
so another owner's vehicle is simply not found (a 404, never a 403)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet

from core.errors import NotFound
from vehicles.models import Owner, Vehicle


def vehicles_of_owner(*, owner: Owner) -> QuerySet[Vehicle]:
    """Vehicles the owner owns now (current ownership only)."""
    return (
        Vehicle.objects.filter(ownerships__owner=owner, ownerships__ends_at__isnull=True)
        .select_related("market")
        .prefetch_related("capabilities")
    )


def vehicle_of_owner(*, owner: Owner, vehicle_id) -> Vehicle:
    try:
        return vehicles_of_owner(owner=owner).get(pk=vehicle_id)
    except (Vehicle.DoesNotExist, ValueError, TypeError, DjangoValidationError) as exc:  # bad UUID
        raise NotFound("No such vehicle among yours.") from exc


def current_owner_of(*, vehicle: Vehicle) -> Owner | None:
    ownership = vehicle.ownerships.filter(ends_at__isnull=True).select_related("owner").first()
    return ownership.owner if ownership else None
