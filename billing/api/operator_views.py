"""Operator endpoints (staff users) under /api/v1/operator/: test clocks outside production."""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import TestClock
from billing.services.clocks import advance_target, test_clock_advance
from core.errors import ErrorCode, NotFound, ValidationError
from core.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent


class TestClockAdvanceInput(serializers.Serializer):
    by = serializers.CharField(required=False, max_length=16, help_text="e.g. 30d, 12h, 90min, 2w, 1mo")
    to = serializers.CharField(required=False, max_length=40, help_text="ISO 8601 with a timezone")


class TestClockAdvanceOutput(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    steps = serializers.IntegerField()
    renewed = serializers.IntegerField()
    canceled = serializers.IntegerField()
    declined = serializers.IntegerField()
    retried = serializers.IntegerField()
    recovered = serializers.IntegerField()
    unpaid_canceled = serializers.IntegerField()
    reminded = serializers.IntegerField()
    # a declared field: the serializer metaclass takes it off the class, `Serializer.errors` stays
    errors = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]


class IsStaffElseNotFound(BasePermission):
    """Staff only; to anyone else the operator routes do not exist (404, like another owner's object)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False  # 401 not_authenticated, as everywhere
        if not request.user.is_staff:
            raise NotFound("Not found.")
        return True


class TestClockAdvanceView(APIView):
    """Advance a test clock: every renewal, retry and cancellation in between runs, in order.
    It moves money (renewals charge), so it takes an Idempotency-Key like every such POST."""

    permission_classes = [IsStaffElseNotFound]

    @extend_schema(
        summary="Advance a test clock (staff only, never in production)",
        request=TestClockAdvanceInput,
        responses={
            200: TestClockAdvanceOutput,
            400: OpenApiResponse(description="validation_error, idempotency_key_required"),
            404: OpenApiResponse(description="not_found: no such clock, or not staff"),
            409: OpenApiResponse(description="idempotency_key_in_use"),
            422: OpenApiResponse(description="idempotency_key_reused; invalid_state (moving back)"),
        },
        tags=["operator"],
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent
    def post(self, request, pk: str):
        if settings.PRODUCTION:
            raise NotFound("No test clocks in production.")
        clock = TestClock.objects.filter(pk=pk).first() if str(pk).isdigit() else None
        if clock is None:
            raise NotFound("No such test clock.")
        data = TestClockAdvanceInput(data=request.data)
        if not data.is_valid():
            raise ValidationError("Give `by` (e.g. 30d) or `to` (ISO 8601).", details=data.errors)
        to = None
        if data.validated_data.get("to"):
            to = parse_datetime(data.validated_data["to"].replace("Z", "+00:00"))
            if to is None:
                raise ValidationError("`to` is not an ISO 8601 date-time.", code=ErrorCode.VALIDATION_ERROR)
        target = advance_target(clock=clock, by=data.validated_data.get("by"), to=to)
        report = test_clock_advance(clock=clock, to=target)
        return Response(TestClockAdvanceOutput(asdict(report)).data, status=status.HTTP_200_OK)
