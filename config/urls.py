from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from billing.api.urls import vehicle_urlpatterns
from billing.api.webhook_views import stripe_webhook
from core.api import api_not_found
from core.health import healthz
from core.views import ping
from reports.admin import report_urls
from reports.metrics import metrics

# The vehicle routes come first: every car of every fleet polls them, and Django tries
# patterns in order.
urlpatterns = [
    path("api/v1/", include(vehicle_urlpatterns)),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("admin/", include(report_urls())),  # the revenue dashboard, behind the admin login
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("ping", ping, name="ping"),
    path("metrics", metrics, name="metrics"),  # Prometheus: staff or bearer token
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and Redoc from our static files (drf-spectacular-sidecar): they work offline
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include("config.api_urls")),
    # Last: any other path under /api/ (unknown, or an id the route's pattern refuses) is a JSON 404
    re_path(r"^api/", api_not_found, name="api-not-found"),
]
