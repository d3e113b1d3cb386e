from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from billing.api.urls import vehicle_urlpatterns
from billing.api.webhook_views import stripe_webhook
from core.health import healthz
from core.views import ping
from reports.admin import report_urls

# The vehicle routes come first: every car of every fleet polls them, and Django tries
# patterns in order.
urlpatterns = [
    path("api/v1/", include(vehicle_urlpatterns)),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("admin/", include(report_urls())),  # the revenue dashboard, behind the admin login
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("ping", ping, name="ping"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/v1/", include("config.api_urls")),
]
