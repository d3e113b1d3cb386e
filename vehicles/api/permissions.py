"""Who may call: an owner (a Django user with an `Owner`) or a vehicle (a `VehiclePrincipal`).

Views use `current_owner(request)` / `current_vehicle(request)` rather than reading ids from the
request: the acting owner or vehicle always comes from the credential.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from vehicles.api.authentication import VehiclePrincipal
from vehicles.models import Owner, Vehicle


def _owner_of(user: Any) -> Owner | None:
    if not isinstance(user, AbstractBaseUser) or not user.is_active:
        return None
    return getattr(user, "owner", None)  # RelatedObjectDoesNotExist is an AttributeError


def _unauthenticated_or_denied(request: Request) -> exceptions.APIException:
    if request.user is None or not getattr(request.user, "is_authenticated", False):
        return exceptions.NotAuthenticated()
    return exceptions.PermissionDenied()


class IsOwner(BasePermission):
    """The caller is logged in as an owner (mobile app)."""

    message = "This endpoint is for owners."

    def has_permission(self, request: Request, view: Any) -> bool:
        return _owner_of(request.user) is not None


class IsVehicle(BasePermission):
    """The caller is a vehicle authenticated with its own credential."""

    message = "This endpoint is for vehicles."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, VehiclePrincipal)


def current_owner(request: Request) -> Owner:
    """The owner making the request; 401/403 when the caller is not an owner."""
    owner = _owner_of(request.user)
    if owner is None:
        raise _unauthenticated_or_denied(request)
    return owner


def current_vehicle(request: Request) -> Vehicle:
    """The vehicle making the request; 401/403 when the caller is not a vehicle."""
    if not isinstance(request.user, VehiclePrincipal):
        raise _unauthenticated_or_denied(request)
    return request.user.vehicle
