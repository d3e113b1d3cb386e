"""Test urlconf: the JWKS view mounted as the lead will (under /api/v1/), plus the schema."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("api/v1/", include("billing.api.jwks")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
]
