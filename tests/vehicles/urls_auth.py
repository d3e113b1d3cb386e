"""Test-only urlconf: the auth endpoints under /api/v1/ plus tiny views that show who is acting."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication

from vehicles.api import auth_views
from vehicles.api.authentication import VehicleCredentialAuthentication
from vehicles.api.permissions import IsOwner, IsVehicle, current_owner, current_vehicle

_VIN = inline_serializer("TestVin", {"vin": serializers.CharField()})
_OWNER = inline_serializer("TestOwnerId", {"owner_id": serializers.IntegerField()})


@extend_schema(responses=_VIN, request=None)
class VehicleWhoAmI(APIView):
    authentication_classes = [VehicleCredentialAuthentication]
    permission_classes = [IsVehicle]

    def get(self, request: Request) -> Response:
        return Response({"vin": current_vehicle(request).vin})

    def post(self, request: Request) -> Response:
        """Ignores any vehicle named in the body: the acting vehicle is the credential's."""
        return Response({"vin": current_vehicle(request).vin})


@extend_schema(responses=_OWNER)
class OwnerWhoAmI(APIView):
    permission_classes = [IsOwner]

    def get(self, request: Request) -> Response:
        return Response({"owner_id": current_owner(request).pk})


@extend_schema(responses=_VIN)
class EitherWhoAmI(APIView):
    """Accepts both schemes; each permission still admits only its own kind of caller."""

    authentication_classes = [JWTAuthentication, VehicleCredentialAuthentication]
    permission_classes = [IsOwner | IsVehicle]

    def get(self, request: Request) -> Response:
        if request.query_params.get("as") == "owner":
            return Response({"owner_id": current_owner(request).pk})
        return Response({"vin": current_vehicle(request).vin})


urlpatterns = [
    path("api/v1/", include(auth_views.urlpatterns)),
    path("test/vehicle/whoami/", VehicleWhoAmI.as_view(), name="test-vehicle-whoami"),
    path("test/owner/whoami/", OwnerWhoAmI.as_view(), name="test-owner-whoami"),
    path("test/either/whoami/", EitherWhoAmI.as_view(), name="test-either-whoami"),
]
