"""How a vehicle authenticates: `Authorization: Vehicle <key_id>.<secret>` (its own credential).

Owners authenticate with simplejwt's `JWTAuthentication` (the default); vehicle endpoints set
`authentication_classes = [VehicleCredentialAuthentication]` and `permission_classes = [IsVehicle]`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from vehicles.models import Vehicle, VehicleCredential
from vehicles.services.credentials import VehicleCredentialInvalid, vehicle_credential_verify

AUTH_SCHEME = "Vehicle"
_MALFORMED = "Malformed vehicle credential: expected 'Authorization: Vehicle <key_id>.<secret>'."


class VehiclePrincipal:
    """`request.user` of a request authenticated as a vehicle (not a Django user)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, vehicle: Vehicle) -> None:
        self.vehicle = vehicle

    @property
    def pk(self) -> Any:
        return self.vehicle.pk

    id = pk

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VehiclePrincipal) and other.vehicle.pk == self.vehicle.pk

    def __hash__(self) -> int:
        return hash(("vehicle", self.vehicle.pk))

    def __str__(self) -> str:
        return f"vehicle {self.vehicle.vin}"


class VehicleCredentialAuthentication(BaseAuthentication):
    """Authenticates a vehicle by its per-vehicle credential; `request.auth` is the credential.

    Headers of another scheme (e.g. `Bearer`) are left to other authenticators; a `Vehicle` header
    that is malformed or does not verify is a 401 `not_authenticated`, with no database write.
    """

    def authenticate(self, request: Request) -> tuple[VehiclePrincipal, VehicleCredential] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != AUTH_SCHEME.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(_MALFORMED)
        try:
            value = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(_MALFORMED) from None
        key_id, dot, secret = value.partition(".")
        if not (key_id and dot and secret):
            raise exceptions.AuthenticationFailed(_MALFORMED)
        try:
            credential = vehicle_credential_verify(key_id=key_id, secret=secret)
        except VehicleCredentialInvalid as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=str(exc.code)) from None
        return VehiclePrincipal(credential.vehicle), credential

    def authenticate_header(self, request: Request) -> str:
        return AUTH_SCHEME


class VehicleCredentialScheme(OpenApiAuthenticationExtension):
    """OpenAPI security scheme of `VehicleCredentialAuthentication` (registered on import)."""

    target_class = "vehicles.api.authentication.VehicleCredentialAuthentication"
    name = "vehicleCredential"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "Per-vehicle credential: `Vehicle <key_id>.<secret>`. Issued by an operator; "
                "rotating or revoking it affects only that vehicle."
            ),
        }
