"""Everything under /api/v1/."""

from django.urls import include, path

from vehicles.api.auth_views import urlpatterns as auth_urlpatterns

urlpatterns = [
    *auth_urlpatterns,
    path("", include("billing.api.urls")),
]
