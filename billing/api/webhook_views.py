"""`POST /webhooks/stripe/`: Stripe's deliveries. Verify over the raw body, store, answer 2xx fast."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.gateways.stripe import WebhookSignatureInvalid
from billing.services.webhooks import stripe_webhook_receive, webhook_secrets

MAX_BODY_BYTES = 512 * 1024  # Stripe events are a few kB; anything larger is not one


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if not webhook_secrets():
        return JsonResponse(
            {"code": "webhooks_not_configured", "message": "Set STRIPE_WEBHOOK_SECRET.", "details": {}},
            status=503,
        )
    if int(request.headers.get("Content-Length") or 0) > MAX_BODY_BYTES:
        return JsonResponse(
            {"code": "request_too_large", "message": "Not a Stripe event.", "details": {}}, status=413
        )
    try:
        row, created = stripe_webhook_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature")
        )
    except WebhookSignatureInvalid as exc:
        return JsonResponse({"code": "signature_invalid", "message": exc.message, "details": {}}, status=400)
    return JsonResponse({"received": True, "duplicate": not created, "id": row.stripe_event_id}, status=200)
