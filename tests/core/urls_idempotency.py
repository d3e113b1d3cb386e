"""Test-only urlconf: fake money-moving views behind `@idempotent`.

Each successful charge creates one `vehicles.Capability` row with a `charge-` code, so "the side
effect happened once" is counted in the database. Marker rows make the next call fail:
`fail-next-crash` (unexpected exception before any write) and `fail-next-503` (provider down).
"""

from __future__ import annotations

import time
import uuid

from django.db import transaction
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from core.api import error_body
from core.errors import ErrorCode, ValidationError
from core.idempotency import IDEMPOTENCY_KEY_PARAMETER, IDEMPOTENCY_KEY_PARAMETER_OPTIONAL, idempotent
from vehicles.models import Capability

CHARGE_PREFIX = "charge-"


def _charge(request: Request, *, delay_seconds: float = 0.0) -> Response:
    amount = request.data.get("amount_minor")
    if not isinstance(amount, int) or amount <= 0:
        raise ValidationError("amount_minor must be a positive integer.", code=ErrorCode.INVALID_AMOUNT)
    if Capability.objects.filter(code="fail-next-crash").delete()[0]:
        raise RuntimeError("simulated crash before the charge")
    if Capability.objects.filter(code="fail-next-503").delete()[0]:
        return Response(
            error_body(ErrorCode.PAYMENT_PROVIDER_UNAVAILABLE, "Provider down, retry later."), status=503
        )
    with transaction.atomic():
        time.sleep(delay_seconds)
        charge = Capability.objects.create(
            code=f"{CHARGE_PREFIX}{uuid.uuid4().hex}", name=f"{amount} {request.data.get('currency')}"
        )
    return Response(
        {"charge": charge.code, "amount_minor": amount, "currency": request.data.get("currency")},
        status=201,
    )


class ChargeView(APIView):
    delay_seconds = 0.0

    @extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER], request=None, responses={201: None})
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        return _charge(request, delay_seconds=self.delay_seconds)


class OptionalKeyChargeView(APIView):
    @extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER_OPTIONAL], request=None, responses={201: None})
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        return _charge(request)


class ChargeViewSet(viewsets.ViewSet):
    @extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER], request=None, responses={201: None})
    @idempotent
    def create(self, request: Request) -> Response:
        return _charge(request)

    @extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER], request=None, responses={201: None})
    @action(detail=False, methods=["post"])
    @idempotent
    def topup(self, request: Request) -> Response:
        return _charge(request)


@extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER], request=None, responses={201: None})
@api_view(["POST"])
@idempotent
def charge_function_view(request: Request) -> Response:
    return _charge(request)


router = SimpleRouter()
router.register("charges", ChargeViewSet, basename="charges")

urlpatterns = [
    path("charge", ChargeView.as_view(), name="charge"),
    path("slow-charge", ChargeView.as_view(delay_seconds=0.3), name="slow-charge"),
    path("optional-charge", OptionalKeyChargeView.as_view(), name="optional-charge"),
    path("function-charge", charge_function_view, name="function-charge"),
    *router.urls,
]
