"""The WSGI fast lane of Stripe's deliveries: `POST /webhooks/stripe/` without the middleware stack.

Stripe sends bursts of signed events with no cookie, session, user or CSRF token; a delivery is
answered from its raw body by `webhook_answer` (billing/api/webhook_views.py), the same function
the URL route's view renders, so both give the same status and JSON body. Through Django's 12
middleware and the URL resolver a delivery cost about twice its own work, and in the audit
context every insert carried an extra `set_config` statement (the inbox keeps no audit history).

What the lane keeps of Django's handler, each done by Django's own code:
- the `request_started` / `request_finished` signals, so unusable or expired database connections
  are closed (CONN_MAX_AGE) exactly as for any request, the latter when the server closes the answer;
- host validation (ALLOWED_HOSTS) and the HTTPS redirect: a request that fails either, a request
  without a usable Content-Length, and every other method and path go to Django's handler, which
  answers them as it always did (405 for another method, from the view after all middleware);
- the security headers of `SecurityMiddleware` and `XFrameOptionsMiddleware` (taken from the
  middleware themselves once per process), `X-Request-ID` bound to the log lines (core/logging.py);
- 4xx/5xx logged by `django.request`, an exception answered by `response_for_exception` (a 500).
Prometheus: `billing_webhook_delivery_seconds{status}` instead of django_prometheus's metrics.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.log import log_response

from billing.api.webhook_views import webhook_answer
from core.logging import REQUEST_ID_HEADER, request_id_bind
from core.metrics import WEBHOOK_DELIVERIES

PATH = "/webhooks/stripe/"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Answer(list[bytes]):
    """The body; the server calls `close()` once it is sent, which ends the request as Django's
    responses do (`request_finished`)."""

    def close(self) -> None:
        signals.request_finished.send(sender=StripeWebhookLane)


class StripeWebhookLane:
    """A WSGI application: the fast lane for `POST /webhooks/stripe/`, `django_app` for the rest."""

    def __init__(self, django_app: WSGIApp) -> None:
        self.django_app = django_app

        def no_view(_request: object) -> HttpResponse:
            raise AssertionError("the lane only uses the middleware's request and response hooks")

        self.security = SecurityMiddleware(no_view)
        clickjacking = XFrameOptionsMiddleware(no_view)

        def headers_added(secure: bool) -> list[tuple[str, str]]:
            scheme = "https" if secure else "http"
            request = WSGIRequest(
                {"REQUEST_METHOD": "POST", "wsgi.url_scheme": scheme, "wsgi.input": io.BytesIO()}
            )
            response = self.security.process_response(request, HttpResponse())
            response = clickjacking.process_response(request, response)
            return [(name, value) for name, value in response.items() if name != "Content-Type"]

        self.headers = {secure: headers_added(secure) for secure in (False, True)}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.django_app(environ, start_response)
        request = WSGIRequest(environ)
        try:
            request.get_host()  # ALLOWED_HOSTS
            content_length = int(environ["CONTENT_LENGTH"])
        except (DisallowedHost, KeyError, ValueError):
            return self.django_app(environ, start_response)
        if content_length < 0 or self.security.process_request(request) is not None:  # HTTPS redirect
            return self.django_app(environ, start_response)
        return self.deliver(request, content_length, start_response)

    def deliver(self, request: WSGIRequest, content_length: int, start_response: StartResponse) -> _Answer:
        started = time.perf_counter()
        signals.request_started.send(sender=StripeWebhookLane, environ=request.environ)
        request_id = request_id_bind(request.META.get("HTTP_X_REQUEST_ID", ""))
        headers = [(REQUEST_ID_HEADER, request_id), *self.headers[request.is_secure()]]
        try:
            status, payload = webhook_answer(
                content_length=content_length,
                read_body=lambda: request.body,
                signature_header=request.META.get("HTTP_STRIPE_SIGNATURE"),
            )
        except Exception as exc:  # noqa: BLE001 - answered and logged as Django answers any view's
            response: HttpResponseBase = response_for_exception(request, exc)
        else:
            if status == 200:
                body = json.dumps(payload).encode()  # what JsonResponse writes for these plain values
                start_response(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
                )
                WEBHOOK_DELIVERIES.labels(status="200").observe(time.perf_counter() - started)
                return _Answer([body])
            response = JsonResponse(payload, status=status)
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        body = response.content  # type: ignore[attr-defined]  # JsonResponse or the 500 page: not streamed
        present = {name.lower() for name, _ in response.items()}
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [
                *response.items(),
                *([] if "content-length" in present else [("Content-Length", str(len(body)))]),
                *((name, value) for name, value in headers if name.lower() not in present),
            ],
        )
        WEBHOOK_DELIVERIES.labels(status=str(response.status_code)).observe(time.perf_counter() - started)
        return _Answer([body])
