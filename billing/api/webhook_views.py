"""`POST /webhooks/stripe/`: Stripe's deliveries. Verify over the raw body, store, answer 2xx fast.

`webhook_answer` decides every answer; the URL route's view below and the WSGI fast lane
(`billing/api/webhook_wsgi.py`, which production requests take) only render it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.gateways.stripe import WebhookSignatureInvalid
from billing.services.webhooks import stripe_webhook_receive, webhook_secrets

MAX_BODY_BYTES = 512 * 1024  # Stripe events are a few kB; anything larger is not one


def webhook_answer(
    *, content_length: int, read_body: Callable[[], bytes], signature_header: str | None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one delivery; the body is read only when it may be an event."""
    if not webhook_secrets():
        message = "Set STRIPE_WEBHOOK_SECRET."
        return 503, {"code": "webhooks_not_configured", "message": message, "details": {}}
    if content_length > MAX_BODY_BYTES:
        return 413, {"code": "request_too_large", "message": "Not a Stripe event.", "details": {}}
    try:
        row, created = stripe_webhook_receive(payload=read_body(), signature_header=signature_header)
    except WebhookSignatureInvalid as exc:
        return 400, {"code": "signature_invalid", "message": exc.message, "details": {}}
    return 200, {"received": True, "duplicate": not created, "id": row.stripe_event_id}


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    status, body = webhook_answer(
        content_length=int(request.headers.get("Content-Length") or 0),
        read_body=lambda: request.body,
        signature_header=request.headers.get("Stripe-Signature"),
    )
    return JsonResponse(body, status=status)
