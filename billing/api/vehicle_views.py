"""Vehicle endpoints under /api/v1/vehicle/: what may this car use now, and a signed offline
token. Authenticated with the car's own credential (`Authorization: Vehicle <key_id>.<secret>`)."""

from __future__ import annotations

import hashlib
import json

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api.serializers import EntitlementTokenSerializer, VehicleEntitlementsSerializer
from billing.selectors import features_snapshot_cached
from billing.services.offline_tokens import FeatureGrant, offline_token_current
from core.ratelimit import EntitlementTokenThrottle
from vehicles.api.authentication import VehicleCredentialAuthentication
from vehicles.api.permissions import IsVehicle, current_vehicle

ETAG = OpenApiParameter(
    "ETag",
    str,
    OpenApiParameter.HEADER,
    response=[200, 304],
    description="Identifies this list of features: send it back as If-None-Match.",
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="The ETag of the last answer: 304 Not Modified when nothing changed.",
)


class JSONOnly(BaseContentNegotiation):
    """Cars speak JSON: no Accept-header parsing on the hottest routes."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class VehicleAPIView(APIView):
    authentication_classes = [VehicleCredentialAuthentication]
    permission_classes = [IsVehicle]
    renderer_classes = [JSONRenderer]  # cars read JSON; no browsable API on the hottest routes
    parser_classes: list = []  # GET only
    content_negotiation_class = JSONOnly


def _snapshot(request, at):
    """The calling vehicle's features now and their next boundary, from the hot copy keyed by
    its state stamp (set on the credential by the authentication)."""
    vehicle = current_vehicle(request)
    return features_snapshot_cached(vehicle_id=vehicle.pk, version=request.auth.state_version, at=at)


def _isoformat(value):
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class VehicleEntitlementsView(VehicleAPIView):
    @extend_schema(
        summary="The features this vehicle may use now (poll with If-None-Match)",
        parameters=[IF_NONE_MATCH, ETAG],
        responses={200: VehicleEntitlementsSerializer, 304: OpenApiResponse(description="Not modified")},
        examples=[
            OpenApiExample(
                "entitlements",
                value={
                    "vin": "WVWZZZ1JZXW000001",
                    "at": "2026-11-25T10:00:00Z",
                    "features": [
                        {"code": "heated_seats", "valid_until": None, "sources": ["purchase"]},
                        {
                            "code": "premium_connectivity",
                            "valid_until": "2029-03-01T00:00:00Z",
                            "sources": ["included"],
                        },
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        vehicle, now = current_vehicle(request), timezone.now()
        etag, features_json = _rendered(vehicle, _snapshot(request, now))
        if etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
            return Response(status=304, headers={"ETag": etag})
        # The shape of VehicleEntitlementsSerializer, written directly: this is the hottest route.
        body = f'{{"vin": {json.dumps(vehicle.vin)}, "at": "{_isoformat(now)}", "features": {features_json}}}'
        response = HttpResponse(body, content_type="application/json")
        response["ETag"], response["Cache-Control"] = etag, "private, no-cache"
        return response


_rendered_cache: dict = {}


def _rendered(vehicle, snapshot) -> tuple[str, str]:
    """The ETag and the JSON of a features snapshot, computed once per (hot) snapshot object."""
    hit = _rendered_cache.get(vehicle.pk)
    if hit is not None and hit[0] is snapshot:
        return hit[1], hit[2]
    features = [
        {"code": f.code, "valid_until": _isoformat(f.valid_until), "sources": list(f.sources)}
        for f in snapshot[0]
    ]
    features_json = json.dumps(features)
    etag = '"' + hashlib.sha256(f"{vehicle.vin}{features_json}".encode()).hexdigest()[:32] + '"'
    if len(_rendered_cache) > 100_000:
        _rendered_cache.clear()
    _rendered_cache[vehicle.pk] = (snapshot, etag, features_json)
    return etag, features_json


class VehicleEntitlementTokenView(VehicleAPIView):
    throttle_classes = [EntitlementTokenThrottle]

    @extend_schema(
        summary="A signed offline entitlement token (compact JWS, Ed25519) for this vehicle",
        description="Claims: iss, aud (the VIN), sub (vehicle id), features [{code, until}], iat, nbf, exp, "
        "jti. Verify with the keys at /api/v1/.well-known/jwks.json; the car works offline until exp.",
        responses={200: EntitlementTokenSerializer},
    )
    def get(self, request):
        vehicle = current_vehicle(request)
        now = timezone.now()
        features, next_change = _snapshot(request, now)
        issued = offline_token_current(
            vehicle_id=str(vehicle.pk),
            vin=vehicle.vin,
            features=[FeatureGrant(code=f.code, valid_until=f.valid_until) for f in features],
            state_version=request.auth.state_version,
            next_change=next_change,
            now=now,
        )
        return Response(EntitlementTokenSerializer(issued).data, headers={"Cache-Control": "no-store"})
