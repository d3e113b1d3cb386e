from django.urls import include, path
from rest_framework.routers import SimpleRouter

from billing.api import document_views, operator_views, owner_views, vehicle_views
from billing.api.jwks import urlpatterns as jwks_urlpatterns

router = SimpleRouter()
router.register("me/vehicles", owner_views.MyVehicleViewSet, basename="my-vehicle")
router.register("me/transfers", owner_views.TransferClaimViewSet, basename="my-transfer")
router.register("me/subscriptions", owner_views.MySubscriptionViewSet, basename="my-subscription")
router.register("me/purchases", owner_views.MyPurchaseViewSet, basename="my-purchase")
router.register("me/invoices", owner_views.MyInvoiceViewSet, basename="my-invoice")
router.register("me/payments", owner_views.MyPaymentViewSet, basename="my-payment")
router.register("me/payment-methods", owner_views.MyPaymentMethodViewSet, basename="my-payment-method")

# Mounted at /api/v1/ ahead of everything else by config/urls.py (the hottest routes).
vehicle_urlpatterns = [
    path(
        "vehicle/entitlements/", vehicle_views.VehicleEntitlementsView.as_view(), name="vehicle-entitlements"
    ),
    path(
        "vehicle/entitlements/token/",
        vehicle_views.VehicleEntitlementTokenView.as_view(),
        name="vehicle-entitlement-token",
    ),
]

urlpatterns = [
    # invoice and credit-note documents (billing/api/document_views.py)
    path("me/invoices/<uuid:pk>/pdf/", document_views.InvoicePdfView.as_view(), name="my-invoice-pdf"),
    path("me/credit-notes/", document_views.MyCreditNotesView.as_view(), name="my-credit-note-list"),
    path(
        "me/credit-notes/<uuid:pk>/pdf/",
        document_views.CreditNotePdfView.as_view(),
        name="my-credit-note-pdf",
    ),
    path("", include(router.urls)),
    path(
        "operator/test-clocks/<str:pk>/advance/",
        operator_views.TestClockAdvanceView.as_view(),
        name="operator-test-clock-advance",
    ),
    *jwks_urlpatterns,
]
