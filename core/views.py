"""Trivial endpoints."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def ping(request: HttpRequest) -> JsonResponse:
    """No database, no auth: the baseline of the entitlement benchmark."""
    return JsonResponse({"ok": True})
